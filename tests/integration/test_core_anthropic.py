"""POST /v1/messages without streaming, through the real gateway process, against the scripted
backend: what reaches the backend and what the official anthropic SDK gets back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess
from tests.support.scripted_backend import (
    Completion,
    Pause,
    RecordedRequest,
    ScriptedBackend,
    Stream,
    chunk,
)

MODEL = "test-org/Test-Model-4bit"


@pytest.fixture
def gateway(scripted_backend: ScriptedBackend, start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway(scripted_backend.url, "--mlx-model", MODEL)


@pytest.fixture
def client(gateway: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="local", max_retries=0)


def test_round_trip_with_the_sdk(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    usage = {"prompt_tokens": 31, "completion_tokens": 5, "total_tokens": 36}
    scripted_backend.queue(Completion(text="Bonjour!", usage=usage))
    message = client.messages.create(
        model="local-sonnet",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say hello in French"}],
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == MODEL
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Bonjour!"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.usage.input_tokens == 31
    assert message.usage.output_tokens == 5
    sent = scripted_backend.last_json()
    assert sent["model"] == MODEL
    assert sent["max_tokens"] == 64
    assert sent["stream"] is False
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello in French"},
    ]


def test_parameters_are_carried_over(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(Completion())
    client.messages.create(
        model="local-haiku",
        max_tokens=10,
        # Newer SDKs dropped the sampling keywords; the API still takes them in the body.
        extra_body={"temperature": 0.2, "top_p": 0.9, "top_k": 40},
        metadata={"user_id": "user-42"},
        system=[
            {"type": "text", "text": "First.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Second."},
        ],
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": "c"},
            {"role": "user", "content": "d"},
        ],
    )
    sent = scripted_backend.last_json()
    assert sent["temperature"] == 0.2
    assert sent["top_p"] == 0.9
    assert sent["top_k"] == 40
    assert sent["user"] == "user-42"
    assert sent["messages"] == [
        {"role": "system", "content": "First.\nSecond."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]


def test_claude_code_shaped_request_is_accepted(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    """Fields the gateway does not use, system messages inside `messages`, the billing header,
    `?beta=true` and the beta headers: all accepted, never a 400."""
    scripted_backend.queue(Completion(text="ok"))
    body: dict[str, Any] = {
        "model": "claude-opus-4-1",
        "max_tokens": 128000,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cch=abc123;"},
            {
                "type": "text",
                "text": "You are Claude Code.",
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "messages": [
            {"role": "system", "content": "Reminder: be careful."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}],
            },
        ],
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "safeguards": {"mode": "x"},
        "some_future_field": {"nested": [1, 2, 3]},
        "tools": [
            {"name": "Bash", "description": "run", "input_schema": {"type": "object"}},
            {"name": "Later", "defer_loading": True, "input_schema": {"type": "object"}},
        ],
        "metadata": {"user_id": "u"},
        "stream": False,
    }
    response = httpx.post(
        f"{gateway.url}/v1/messages?beta=true",
        json=body,
        headers={
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "interleaved-thinking-2025-05-14",
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.json()["content"] == [{"type": "text", "text": "ok"}]
    sent = scripted_backend.last_json()
    assert sent["messages"][0] == {"role": "system", "content": "You are Claude Code."}
    assert sent["messages"][1] == {"role": "system", "content": "Reminder: be careful."}
    assert "x-anthropic-billing-header" not in str(sent)


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), (None, "end_turn")],
)
def test_finish_reasons(
    client: anthropic.Anthropic,
    scripted_backend: ScriptedBackend,
    finish_reason: str | None,
    stop_reason: str,
) -> None:
    scripted_backend.queue(Completion(text="x", finish_reason=finish_reason))
    message = client.messages.create(
        model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.stop_reason == stop_reason


def test_cached_tokens_are_reported(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 64},
    }
    scripted_backend.queue(Completion(usage=usage))
    message = client.messages.create(
        model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.usage.cache_read_input_tokens == 64
    assert message.usage.input_tokens + 64 == 100
    assert message.usage.output_tokens == 3


def test_null_content_gives_an_empty_answer(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(Completion(text=None))
    message = client.messages.create(
        model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content == []
    assert message.stop_reason == "end_turn"


def _echo_last_user_text(request: RecordedRequest) -> Completion:
    messages = request.json()["messages"]
    return Completion(text=f"echo:{messages[-1]['content']}", delay=0.05)


def test_concurrent_requests_each_get_their_own_answer(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.set_responder(_echo_last_user_text)

    def ask(n: int) -> str:
        message = client.messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": f"question-{n}"}]
        )
        return message.content[0].text  # type: ignore[union-attr]

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(ask, range(20)))
    assert answers == [f"echo:question-{n}" for n in range(20)]


def test_one_megabyte_request(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(Completion(text="read it"))
    big = "lorem ipsum " * (1024 * 1024 // 12 + 1)
    message = client.messages.create(
        model="m", max_tokens=5, messages=[{"role": "user", "content": big}]
    )
    assert message.content[0].text == "read it"  # type: ignore[union-attr]
    assert scripted_backend.last_json()["messages"][0]["content"] == big


def test_stop_sequences_go_to_a_backend_that_reports_the_match(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url, "--backend", "vllm")
    client = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    scripted_backend.queue(Completion(text="one two", extra_choice={"stop_reason": "STOP"}))
    message = client.messages.create(
        model="m",
        max_tokens=10,
        stop_sequences=["END", "STOP"],
        messages=[{"role": "user", "content": "count"}],
    )
    assert scripted_backend.last_json()["stop"] == ["END", "STOP"]
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "STOP"


def test_gateway_enforces_stop_sequences_itself(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    """mlx_lm.server, llama.cpp and Ollama strip the matched text and do not say which one
    matched; the gateway watches the stream itself and ends the backend request there."""
    pieces: list[Any] = [
        chunk({"role": "assistant", "content": "one two E"}),
        chunk({"content": "ND three"}),
    ]
    pieces += [item for _ in range(50) for item in (Pause(0.05), chunk({"content": " more"}))]
    scripted_backend.queue(Stream(pieces))
    message = client.messages.create(
        model="m",
        max_tokens=10,
        stop_sequences=["END", "STOP"],
        messages=[{"role": "user", "content": "count"}],
    )
    assert "stop" not in scripted_backend.last_json()
    assert message.content[0].text == "one two "  # type: ignore[union-attr]
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "END"
    scripted_backend.wait_for_disconnect(timeout=2)
