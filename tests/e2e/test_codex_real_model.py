"""One Codex turn through the gateway against the real mlx_lm.server on the tiny model.

The tiny model writes gibberish, so the point is the protocol: Codex's real request (its
developer messages, the whole tool set with the freeform apply_patch) is translated into a chat
request, the real server answers, and the turn completes without an error item. Seeing tools in
its prompt, the tiny model calls `get_weather`, which Codex does not have: Codex answers the call
with an error output, the model then answers in text, and the turn ends normally, a real tool
round trip through both translations.

A recording proxy between the gateway and the server keeps what the server received and
answered, so the usage Codex reports is checked against the server's own counts. The tiny
model's window (4096 tokens) is far smaller than Codex's prompt, so the gateway is told a larger
window (the server itself enforces none); the answers stay short because the tiny model ends
each one by itself within 28 tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartGateway
from tests.e2e.recording_proxy import Exchange, RecordingProxy
from tests.support.codex import CodexResult, ensure_codex, run_codex
from tests.support.gateway import GatewayProcess
from tests.support.mlx_backend import MlxBackend

pytestmark = pytest.mark.timeout(300)

WINDOW = 16384  # about twice the prompt: room for the turn, and a bounded answer


@pytest.fixture
def proxy(mlx_backend: MlxBackend) -> Iterator[RecordingProxy]:
    with RecordingProxy(mlx_backend.url) as recording:
        yield recording


def chat_exchanges(proxy: RecordingProxy) -> list[Exchange]:
    return [e for e in proxy.exchanges if e.path == "/v1/chat/completions"]


def server_usage(exchange: Exchange) -> dict[str, Any]:
    """The usage the server reported at the end of its stream."""
    usages = []
    for line in exchange.response.decode().splitlines():
        if line.startswith("data: {"):
            usage = json.loads(line[6:]).get("usage")
            if usage:
                usages.append(usage)
    assert usages, exchange.response[-2000:]
    usage: dict[str, Any] = usages[-1]
    return usage


def turn_usage(result: CodexResult) -> dict[str, Any]:
    [completed] = [e for e in result.events if e.get("type") == "turn.completed"]
    usage: dict[str, Any] = completed["usage"]
    return usage


def test_a_codex_turn_on_the_real_model_completes(
    mlx_backend: MlxBackend,
    proxy: RecordingProxy,
    start_gateway: StartGateway,
    tmp_path_factory: pytest.TempPathFactory,
    record_property: Callable[[str, object], None],
) -> None:
    ensure_codex()
    gateway: GatewayProcess = start_gateway(
        proxy.url, "--mlx-model", mlx_backend.model, "--context-window", str(WINDOW)
    )
    workdir: Path = tmp_path_factory.mktemp("workdir")
    home: Path = tmp_path_factory.mktemp("home")
    result = run_codex(
        gateway.url, "What is the weather in Paris?", workdir, home=home,
        model=mlx_backend.model, context_window=WINDOW, timeout=240,
    )  # fmt: skip
    record_property("codex_seconds", round(result.duration, 2))
    print(f"\ncodex on the real model ran {result.duration:.1f}s")
    log = gateway.log()

    assert result.ok, f"{result.describe()}\n{log[-3000:]}"
    assert not [e for e in result.events if e.get("type") == "error"], result.describe()
    assert not result.items("error"), result.describe()
    assert "Traceback" not in log
    assert "backend stream failed" not in log

    chats = chat_exchanges(proxy)
    assert all(exchange.status == 200 for exchange in chats)
    first = json.loads(chats[0].request)
    assert first["model"] == mlx_backend.model
    assert first["stream"] is True
    assert first["messages"][0]["role"] == "system"
    names = {tool["function"]["name"] for tool in first["tools"]}
    assert {"exec_command", "apply_patch"} <= names
    assert "get_weather" not in names

    # The usage Codex shows is the server's own counts, summed over the turn's requests.
    counted = [server_usage(exchange) for exchange in chats]
    usage = turn_usage(result)
    print(f"{len(chats)} chat request(s), server usage {counted}, Codex's {usage}")
    assert usage["input_tokens"] == sum(u["prompt_tokens"] for u in counted)
    assert usage["output_tokens"] == sum(u["completion_tokens"] for u in counted)
    cached = [(u.get("prompt_tokens_details") or {}).get("cached_tokens", 0) for u in counted]
    assert usage["cached_input_tokens"] == sum(cached)

    # The model called a tool Codex does not have; Codex answered it, and the follow-up starts
    # with the first request's messages, so the server reused its cached prefix.
    assert len(chats) == 2
    follow_up = json.loads(chats[1].request)
    [turn] = [m for m in follow_up["messages"] if m.get("tool_calls")]
    [call] = turn["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    [output] = [m for m in follow_up["messages"] if m["role"] == "tool"]
    assert output["tool_call_id"] == call["id"]
    assert follow_up["messages"][: len(first["messages"])] == first["messages"]
    assert cached[1] > 0
    assert result.final_message
