"""One Claude Code session through the gateway against llama.cpp's real `llama-server`.

The same session as `test_claude_code_real_model.py` runs against mlx_lm.server: the tiny model
sees tools in Claude Code's prompt and calls `get_weather`, which Claude Code does not have; Claude
Code answers with an error tool result, the model answers in text, and the session ends normally.

llama-server runs with `--skip-chat-parsing`, so the call comes back as text and the gateway's
own text tool-call parser turns it into a tool_use block. With its own parser llama-server
constrains a call to the offered tools by grammar: the tiny model's `get_weather`, which Claude
Code does not offer, is forced into another tool's name and then loops to `max_tokens` (tens of
thousands of tokens here), which no real session would survive either.

Unlike mlx_lm.server, llama-server enforces its window, and the gateway reads it from `/props` and
counts every prompt exactly with the server's own `/apply-template` and `/tokenize`: so the server
runs with a window that holds Claude Code's prompt (65536) and the gateway is given none, which
puts Claude Code's real requests through that counting and fitting too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import StartGateway
from tests.support.claude_code import ensure_claude_code, run_claude
from tests.support.llama_backend import StartLlamaServer

pytestmark = pytest.mark.timeout(300)
WINDOW = 65536


def test_a_session_on_llama_server_completes(
    start_llama_server: StartLlamaServer,
    start_gateway: StartGateway,
    tmp_path_factory: pytest.TempPathFactory,
    record_property: Callable[[str, object], None],
) -> None:
    ensure_claude_code()
    backend = start_llama_server("--skip-chat-parsing", window=WINDOW)
    gateway = start_gateway(backend.url, "--backend", "llama_cpp", "--mlx-model", backend.model)
    cwd: Path = tmp_path_factory.mktemp("cwd")
    home: Path = tmp_path_factory.mktemp("home")
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
    log = gateway.log()
    assert result.returncode == 0, f"{result.describe()}\n{log[-3000:]}\n{backend.log()[-3000:]}"
    assert result.result is not None
    assert result.result.get("is_error") is False, result.describe()
    assert result.result.get("num_turns", 0) >= 2, "expected the get_weather round trip"
    assert isinstance(result.text, str)
    assert "API Error" not in result.text
    assert "Traceback" not in log
