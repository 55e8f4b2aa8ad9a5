"""Reasoning in its three backend forms becomes thinking blocks; the request's `thinking` switches
reasoning where the backend can; images reach the backend or fail clearly."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import StartGateway
from tests.support.anthropic_stream import accumulate, assert_well_formed, parse_sse
from tests.support.gateway import GatewayProcess
from tests.support.scripted_backend import Completion, HttpError, ScriptedBackend, text_stream

ASK: dict[str, Any] = {
    "model": "m",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "2+2?"}],
}
REASONING = "The user asks 2+2. That is 4."


@pytest.fixture
def gateway(scripted_backend: ScriptedBackend, start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway(scripted_backend.url)


@pytest.fixture
def client(gateway: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def assert_thinking_then_text(message: dict[str, Any]) -> None:
    assert [block["type"] for block in message["content"]] == ["thinking", "text"]
    assert message["content"][0]["thinking"] == REASONING
    assert message["content"][0]["signature"]
    assert message["content"][1]["text"] == "4"


@pytest.mark.parametrize(
    "reply",
    [
        Completion(text="4", reasoning_content=REASONING),
        Completion(text="4", reasoning=REASONING),
        Completion(text=f"<think>\n{REASONING}</think>\n\n4"),
        Completion(text=f"{REASONING}</think>\n\n4"),  # the template opened <think> in the prompt
    ],
    ids=["reasoning_content", "reasoning", "think-tags", "prompt-opened"],
)
def test_reasoning_non_streaming(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend, reply: Completion
) -> None:
    scripted_backend.queue(reply)
    message = client.messages.create(**ASK)
    assert_thinking_then_text(message.model_dump())


@pytest.mark.parametrize(
    "stream",
    [
        text_stream(["4"], reasoning_pieces=pieces(REASONING, 3)),
        text_stream(["4"], reasoning_pieces=pieces(REASONING, 5), reasoning_field="reasoning"),
        text_stream(pieces(f"<think>{REASONING}</think>\n\n4", 1)),
        text_stream(pieces(f"<think>\n{REASONING}</think>4", 4)),
    ],
    ids=["reasoning_content", "reasoning", "think-tags-1-char", "think-tags-4-chars"],
)
def test_reasoning_streaming(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend, stream: Any
) -> None:
    scripted_backend.queue(stream)
    raw = httpx.post(f"{gateway.url}/v1/messages", json={**ASK, "stream": True}, timeout=10).content
    events = parse_sse(raw)
    assert_well_formed(events)
    message = accumulate(events)
    assert_thinking_then_text(message)
    signatures = [
        e
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "signature_delta"
    ]
    assert len(signatures) == 1


def test_sdk_stream_with_thinking(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(text_stream(["4"], reasoning_pieces=pieces(REASONING, 2)))
    with client.messages.stream(**ASK) as stream:
        final = stream.get_final_message()
    assert_thinking_then_text(final.model_dump())


@pytest.mark.parametrize(
    ("thinking", "expected"),
    [
        ({"type": "enabled", "budget_tokens": 2048}, True),
        ({"type": "adaptive"}, True),
        ({"type": "disabled"}, False),
        (None, None),
    ],
)
def test_thinking_switch_reaches_the_backend(
    client: anthropic.Anthropic,
    scripted_backend: ScriptedBackend,
    thinking: Any,
    expected: bool | None,
) -> None:
    scripted_backend.queue(Completion())
    extra = {"thinking": thinking} if thinking else {}
    client.messages.create(**ASK, extra_body=extra)
    sent = scripted_backend.last_json()
    if expected is None:
        assert "chat_template_kwargs" not in sent
    else:
        assert sent["chat_template_kwargs"] == {"enable_thinking": expected}


def test_no_switch_for_a_backend_without_one(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url, "--backend", "ollama")
    scripted_backend.queue(Completion())
    httpx.post(
        f"{gateway.url}/v1/messages",
        json={**ASK, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        timeout=5,
    )
    assert "chat_template_kwargs" not in scripted_backend.last_json()


HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "2+2?"},
    {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "earlier reasoning", "signature": ""},
            {"type": "text", "text": "4"},
        ],
    },
    {"role": "user", "content": "and 3+3? /no_think"},
]


def test_echoed_thinking_is_dropped(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(Completion(text="6"))
    client.messages.create(model="m", max_tokens=10, messages=HISTORY)
    sent = scripted_backend.last_json()["messages"]
    assert sent == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3? /no_think"},
    ]


@pytest.mark.parametrize("backend", ["vllm", "llama_cpp"])
def test_echoed_thinking_is_dropped_for_servers_that_take_reasoning_content(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway, backend: str
) -> None:
    """Their Qwen3-style templates drop it at the next user message, which would cut the prompt
    cache's prefix there: it never goes back."""
    gateway = start_gateway(scripted_backend.url, "--backend", backend)
    scripted_backend.queue(Completion(text="6"))
    httpx.post(
        f"{gateway.url}/v1/messages",
        json={"model": "m", "max_tokens": 10, "messages": HISTORY},
        timeout=5,
    )
    assistant = scripted_backend.last_json()["messages"][1]
    assert assistant == {"role": "assistant", "content": "4"}


IMAGE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def test_images_keep_their_place(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(Completion(text="a dot"))
    client.messages.create(
        model="m",
        max_tokens=10,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": IMAGE_PNG},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/cat.jpg"},
                    },
                    {"type": "text", "text": "Be brief."},
                ],
            }
        ],
    )
    assert scripted_backend.last_json()["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE_PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "Be brief."},
    ]


def test_a_text_only_model_refusing_images(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(HttpError(404, {"error": "Only 'text' content type is supported."}))
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="m",
            max_tokens=10,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": IMAGE_PNG,
                            },
                        }
                    ],
                }
            ],
        )
    assert "does not accept images" in str(caught.value)
