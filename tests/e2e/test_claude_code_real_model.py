"""One Claude Code session through the gateway against the real mlx_lm.server on the tiny model.

The tiny model writes gibberish, so the point is the protocol: Claude Code's real request (its
system prompt, tools, thinking and all) is translated, the real server answers, and the session
ends without an API error. Seeing tools in its prompt, the tiny model calls `get_weather`, which
Claude Code does not have: Claude Code answers with an error tool result, the model then answers
in text, and the session ends normally, a real tool round trip.

The tiny model's window (4096 tokens) is far smaller than Claude Code's prompt, so the gateway is
told a larger window (the server itself enforces none); the real window is exercised by the
count_tokens and context tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import StartGateway
from tests.support.claude_code import ensure_claude_code, run_claude
from tests.support.mlx_backend import MlxBackend

pytestmark = pytest.mark.timeout(300)


def test_a_session_on_the_real_model_completes(
    mlx_backend: MlxBackend,
    start_gateway: StartGateway,
    tmp_path_factory: pytest.TempPathFactory,
    record_property: Callable[[str, object], None],
) -> None:
    ensure_claude_code()
    gateway = start_gateway(
        mlx_backend.url, "--mlx-model", mlx_backend.model, "--context-window", "200000"
    )
    cwd: Path = tmp_path_factory.mktemp("cwd")
    home: Path = tmp_path_factory.mktemp("home")
    started = time.monotonic()
    result = run_claude(
        "Say hello.",
        gateway.url,
        cwd=cwd,
        home=home,
        allowed_tools=[],
        extra_args=["--max-turns", "4"],
        timeout=240,
    )
    record_property("claude_seconds", round(result.duration, 2))
    print(f"\nclaude on the real model ran {time.monotonic() - started:.1f}s")
    log = gateway.log()
    assert result.returncode == 0, f"{result.describe()}\n{log[-3000:]}"
    assert result.result is not None
    assert result.result.get("is_error") is False, result.describe()
    assert result.result.get("num_turns", 0) >= 2, "expected the get_weather round trip"
    assert isinstance(result.text, str)
    assert "API Error" not in result.text
    assert "Traceback" not in log
