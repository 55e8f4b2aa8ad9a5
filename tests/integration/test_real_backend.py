"""The gateway in front of the real mlx_lm.server on the tiny model: real inference, real token
counts, through both endpoints, streaming and not, the SDKs on one side and the real server on
the other. Answers are gibberish made of real tokens, deterministic at temperature 0, so each is
compared with what the server says when asked directly."""

from __future__ import annotations

import json
import secrets
import urllib.request
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import StartGateway
from tests.support.anthropic_stream import assert_well_formed, parse_sse
from tests.support.gateway import GatewayProcess
from tests.support.mlx_backend import MlxBackend

QUESTION = "Tell me about the weather"
WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture
def gateway(mlx_backend: MlxBackend, start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway(mlx_backend.url, "--mlx-model", mlx_backend.model, "--timeout", "60")


def direct(backend: MlxBackend, body: dict[str, Any]) -> dict[str, Any]:
    payload = json.dumps({"model": backend.model, "temperature": 0, **body}).encode()
    request = urllib.request.Request(
        f"{backend.url}/v1/chat/completions", payload, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, Any] = json.load(response)
        return answer


def prompt_total(usage: Any) -> int:
    """Anthropic counts cached prompt tokens apart; together they are the server's prompt."""
    return int(usage.input_tokens + (usage.cache_read_input_tokens or 0))


def test_anthropic_round_trip(gateway: GatewayProcess, mlx_backend: MlxBackend) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    message = client.messages.create(
        model="claude-anything",
        max_tokens=40,
        system="You are terse.",
        messages=[{"role": "user", "content": QUESTION}],
        extra_body={"temperature": 0},
    )
    expected = direct(
        mlx_backend,
        {
            "max_tokens": 40,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": QUESTION},
            ],
        },
    )
    assert message.model == mlx_backend.model
    assert message.content[0].text == expected["choices"][0]["message"]["content"]  # type: ignore[union-attr]
    assert prompt_total(message.usage) == expected["usage"]["prompt_tokens"]
    assert message.usage.output_tokens == expected["usage"]["completion_tokens"]
    stop = {"stop": "end_turn", "length": "max_tokens"}[expected["choices"][0]["finish_reason"]]
    assert message.stop_reason == stop


def test_anthropic_stream_matches_and_counts(
    gateway: GatewayProcess, mlx_backend: MlxBackend
) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    request: dict[str, Any] = {
        "model": "claude-anything",
        "max_tokens": 12,
        "messages": [{"role": "user", "content": QUESTION}],
        "extra_body": {"temperature": 0},
    }
    with client.messages.stream(**request) as stream:
        streamed = stream.get_final_message()
    plain = client.messages.create(**request)
    assert streamed.content[0].text == plain.content[0].text  # type: ignore[union-attr]
    assert streamed.stop_reason == plain.stop_reason == "max_tokens"
    assert streamed.usage.output_tokens == plain.usage.output_tokens == 12
    assert prompt_total(streamed.usage) == prompt_total(plain.usage)


def test_raw_stream_from_the_real_server_is_well_formed(
    gateway: GatewayProcess, mlx_backend: MlxBackend
) -> None:
    body = {
        "model": "m",
        "max_tokens": 20,
        "stream": True,
        "temperature": 0,
        "messages": [{"role": "user", "content": QUESTION}],
    }
    raw = httpx.post(f"{gateway.url}/v1/messages", json=body, timeout=60).content
    events = parse_sse(raw)
    assert_well_formed(events)
    expected = direct(mlx_backend, {"max_tokens": 20, "messages": body["messages"]})
    assert events[-2]["usage"]["output_tokens"] == expected["usage"]["completion_tokens"]


def test_openai_round_trip_and_stream(gateway: GatewayProcess, mlx_backend: MlxBackend) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    completion = client.chat.completions.create(
        model="gpt-anything", messages=messages, max_tokens=15, temperature=0
    )
    expected = direct(mlx_backend, {"max_tokens": 15, "messages": messages})
    assert completion.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert completion.usage.completion_tokens == expected["usage"]["completion_tokens"]
    chunks = list(
        client.chat.completions.create(
            model="gpt-anything",
            messages=messages,
            max_tokens=15,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected["choices"][0]["message"]["content"]
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == expected["usage"]["completion_tokens"]


@pytest.mark.parametrize("stream", [False, True])
def test_real_tool_call_and_loop(gateway: GatewayProcess, stream: bool) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    request: dict[str, Any] = {
        "model": "m",
        "max_tokens": 60,
        "tools": [WEATHER_TOOL],
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "extra_body": {"temperature": 0},
    }
    if stream:
        with client.messages.stream(**request) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**request)
    assert message.stop_reason == "tool_use"
    tool_use = next(block for block in message.content if block.type == "tool_use")
    assert tool_use.name == "get_weather"
    assert tool_use.input == {"city": "Paris"}
    follow_up = client.messages.create(
        **{
            **request,
            "messages": [
                *request["messages"],
                {"role": "assistant", "content": [block.model_dump() for block in message.content]},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": tool_use.id, "content": "Sunny, 24C"}
                    ],
                },
            ],
        }
    )
    assert follow_up.stop_reason in ("end_turn", "max_tokens")
    assert [block.type for block in follow_up.content] == ["text"]


def test_images_are_refused_clearly(gateway: GatewayProcess) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    image = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="m",
            max_tokens=5,
            messages=[{"role": "user", "content": [{"type": "image", "source": image}]}],
        )
    assert "does not accept images" in str(caught.value)


def test_models_lists_the_served_model(gateway: GatewayProcess, mlx_backend: MlxBackend) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    assert [model.id for model in client.models.list()] == [mlx_backend.model]


def test_a_repeated_prompt_is_reported_as_cached_in_both_protocols(
    gateway: GatewayProcess,
) -> None:
    """The server's own prompt cache count, through the gateway: Anthropic's
    `cache_read_input_tokens` (with `input_tokens` the rest), OpenAI's `cached_tokens`."""
    system = f"Cache check {secrets.token_hex(8)}. " + "Answer briefly. " * 40
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    client = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    first, again = (
        client.messages.create(
            model="claude-anything", max_tokens=4, system=system, messages=messages
        )
        for _ in range(2)
    )
    prompt = prompt_total(first.usage)
    # The server is shared: only the template's opening can be in its cache before the nonce.
    assert (first.usage.cache_read_input_tokens or 0) < prompt // 10
    assert prompt_total(again.usage) == prompt
    assert again.usage.cache_read_input_tokens is not None
    assert again.usage.cache_read_input_tokens >= prompt - 1  # all but the last token
    assert again.usage.input_tokens == prompt - again.usage.cache_read_input_tokens

    chat = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    openai_messages: list[Any] = [{"role": "system", "content": system}, *messages]
    completion = chat.chat.completions.create(
        model="gpt-anything", messages=openai_messages, max_tokens=4
    )
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == prompt
    details = completion.usage.prompt_tokens_details
    assert details is not None
    assert details.cached_tokens == again.usage.cache_read_input_tokens
