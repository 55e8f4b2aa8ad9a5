"""Tool use both ways through the real gateway process: requests carry tools, tool calls and tool
results; answers carry tool_use blocks, streamed with their arguments as they arrive."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import StartGateway
from tests.support.anthropic_stream import accumulate, assert_well_formed, parse_sse
from tests.support.gateway import GatewayProcess
from tests.support.scripted_backend import (
    Completion,
    ScriptedBackend,
    Stream,
    chunk,
    text_stream,
)

WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
ASK: dict[str, Any] = {
    "model": "m",
    "max_tokens": 64,
    "tools": [WEATHER_TOOL],
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
}
ARGS = '{"city": "Paris", "units": "metric"}'


@pytest.fixture
def gateway(scripted_backend: ScriptedBackend, start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway(scripted_backend.url)


@pytest.fixture
def client(gateway: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def fragment_deltas(index: int, call_id: str, name: str, arguments: str) -> list[dict[str, Any]]:
    """vLLM/llama.cpp style: id and name with the first fragment, then 1-character pieces."""
    first = {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }
    return [first] + [{"index": index, "function": {"arguments": char}} for char in arguments]


def dump(message: Any) -> list[dict[str, Any]]:
    return [block.model_dump(exclude={"parsed_output"}) for block in message.content]


def test_request_tools_and_choice(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(Completion())
    client.messages.create(
        **ASK,
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        extra_body={
            "tools": [
                WEATHER_TOOL,
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
                {"name": "Later", "defer_loading": True, "input_schema": {"type": "object"}},
            ]
        },
    )
    sent = scripted_backend.last_json()
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["input_schema"],
                "description": "Weather for a city",
            },
        }
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("choice", "expected"),
    [({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none")],
)
def test_tool_choice_table(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend, choice: Any, expected: str
) -> None:
    scripted_backend.queue(Completion())
    client.messages.create(**ASK, tool_choice=choice)
    assert scripted_backend.last_json()["tool_choice"] == expected


def test_tool_call_answer(client: anthropic.Anthropic, scripted_backend: ScriptedBackend) -> None:
    scripted_backend.queue(
        Completion(
            text="Let me check.",
            tool_calls=[call("call_abc", "get_weather", ARGS)],
            finish_reason="tool_calls",
        )
    )
    message = client.messages.create(**ASK)
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["text", "tool_use"]
    tool_use = message.content[1]
    assert tool_use.id == "call_abc"  # type: ignore[union-attr]
    assert tool_use.name == "get_weather"  # type: ignore[union-attr]
    assert tool_use.input == {"city": "Paris", "units": "metric"}  # type: ignore[union-attr]


def test_streamed_tool_call_equals_the_non_streamed_one(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    deltas = fragment_deltas(0, "call_1", "get_weather", ARGS)
    scripted_backend.queue(
        text_stream(["Checking", "..."], "tool_calls", tool_call_deltas=deltas),
        Completion(
            text="Checking...",
            tool_calls=[call("call_1", "get_weather", ARGS)],
            finish_reason="tool_calls",
        ),
    )
    with client.messages.stream(**ASK) as stream:
        streamed = stream.get_final_message()
    plain = client.messages.create(**ASK)
    assert dump(streamed) == dump(plain)
    assert streamed.stop_reason == plain.stop_reason == "tool_use"


def test_arguments_are_forwarded_as_they_arrive(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    deltas = fragment_deltas(0, "call_1", "get_weather", ARGS)
    scripted_backend.queue(text_stream([], "tool_calls", tool_call_deltas=deltas))
    raw = httpx.post(f"{gateway.url}/v1/messages", json={**ASK, "stream": True}, timeout=10).content
    events = parse_sse(raw)
    assert_well_formed(events)
    fragments = [
        event["delta"]["partial_json"]
        for event in events
        if event["type"] == "content_block_delta" and event["delta"]["type"] == "input_json_delta"
    ]
    assert fragments == list(ARGS)
    start = next(event for event in events if event["type"] == "content_block_start")
    assert start["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {},
    }


def test_parallel_calls_become_consecutive_blocks(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    deltas = fragment_deltas(0, "call_a", "get_weather", '{"city": "Paris"}')
    deltas += fragment_deltas(1, "call_b", "get_weather", '{"city": "Rome"}')
    scripted_backend.queue(text_stream([], "tool_calls", tool_call_deltas=deltas))
    raw = httpx.post(f"{gateway.url}/v1/messages", json={**ASK, "stream": True}, timeout=10).content
    events = parse_sse(raw)
    assert_well_formed(events)
    message = accumulate(events)
    assert [(block["id"], block["input"]) for block in message["content"]] == [
        ("call_a", {"city": "Paris"}),
        ("call_b", {"city": "Rome"}),
    ]
    assert message["stop_reason"] == "tool_use"


def test_mlx_style_whole_call_in_one_chunk(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    whole = {
        "index": 0,
        **call("0b7e7c1e-5c3a-4d8e-9a57-1f7f8f2d9e10", "get_weather", '{"city": "Paris"}'),
    }
    scripted_backend.queue(
        Stream(
            [
                chunk({"role": "assistant", "content": ""}),
                chunk({"tool_calls": [whole]}, "tool_calls"),
            ]
        )
    )
    raw = httpx.post(f"{gateway.url}/v1/messages", json={**ASK, "stream": True}, timeout=10).content
    message = accumulate(parse_sse(raw))
    assert message["content"] == [
        {
            "type": "tool_use",
            "id": "0b7e7c1e-5c3a-4d8e-9a57-1f7f8f2d9e10",
            "name": "get_weather",
            "input": {"city": "Paris"},
        }
    ]


TEXT_CALL = (
    'Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
)


def test_text_tool_calls_become_tool_use(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(
        Completion(text=TEXT_CALL),
        text_stream([TEXT_CALL[i : i + 3] for i in range(0, len(TEXT_CALL), 3)]),
    )
    plain = client.messages.create(**ASK)
    with client.messages.stream(**ASK) as stream:
        streamed = stream.get_final_message()
    for message in (plain, streamed):
        assert message.stop_reason == "tool_use"
        assert [block.type for block in message.content] == ["text", "tool_use"]
        assert message.content[0].text == "Sure."  # type: ignore[union-attr]
        assert message.content[1].input == {"city": "Paris"}  # type: ignore[union-attr]
        assert message.content[1].name == "get_weather"  # type: ignore[union-attr]


def test_broken_arguments_are_repaired_or_kept(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(
        Completion(
            tool_calls=[
                call("c1", "get_weather", '{"city": "Paris"'),
                call("c2", "get_weather", "not json at all"),
            ],
            finish_reason="tool_calls",
        )
    )
    message = client.messages.create(**ASK)
    inputs = [block.input for block in message.content if block.type == "tool_use"]  # type: ignore[union-attr]
    assert inputs[0] == {"city": "Paris"}
    assert len(inputs) == 2
    assert inputs[1] != {}


def test_the_whole_loop(client: anthropic.Anthropic, scripted_backend: ScriptedBackend) -> None:
    scripted_backend.queue(
        Completion(
            text=None,
            tool_calls=[call("call_1", "get_weather", '{"city": "Paris"}')],
            finish_reason="tool_calls",
        ),
        Completion(text="It is sunny in Paris."),
    )
    first = client.messages.create(**ASK)
    tool_use = first.content[0]
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    second = client.messages.create(
        **{
            **ASK,
            "messages": [
                *ASK["messages"],
                {"role": "assistant", "content": [block.model_dump() for block in first.content]},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": tool_use.id,  # type: ignore[union-attr]
                            "content": [{"type": "text", "text": "sunny, 24C"}, image],
                        },
                        {"type": "text", "text": "Answer briefly."},
                    ],
                },
            ],
        }
    )
    assert second.content[0].text == "It is sunny in Paris."  # type: ignore[union-attr]
    sent = scripted_backend.last_json()["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [call("call_1", "get_weather", '{"city":"Paris"}')],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24C"}
    assert sent[3]["role"] == "user"
    assert sent[3]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "text", "text": "Answer briefly."},
    ]


def test_tool_errors_stay_visible(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(Completion(text="I see it failed."))
    client.messages.create(
        **{
            **ASK,
            "messages": [
                *ASK["messages"],
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "t1",
                            "name": "get_weather",
                            "input": {"city": "X"},
                        },
                        {
                            "type": "tool_use",
                            "id": "t2",
                            "name": "get_weather",
                            "input": {"city": "Y"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": "Exit code 3",
                            "is_error": True,
                        },
                        {"type": "tool_result", "tool_use_id": "t2", "content": "ok"},
                    ],
                },
            ],
        }
    )
    sent = scripted_backend.last_json()["messages"]
    assert [message["role"] for message in sent] == ["user", "assistant", "tool", "tool"]
    assert sent[2]["tool_call_id"] == "t1"
    assert "Exit code 3" in sent[2]["content"]
    assert "error" in sent[2]["content"].lower()
    assert sent[3] == {"role": "tool", "tool_call_id": "t2", "content": "ok"}


def test_openai_endpoint_passes_tool_calls_through(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    deltas = fragment_deltas(0, "call_1", "get_weather", ARGS)
    scripted_backend.queue(text_stream([], "tool_calls", tool_call_deltas=deltas))
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": {"type": "object"}},
            }
        ],
        stream=True,
    )
    arguments = ""
    for item in stream:
        for choice in item.choices:
            for tool_call in choice.delta.tool_calls or []:
                arguments += tool_call.function.arguments or ""  # type: ignore[union-attr]
    assert json.loads(arguments) == json.loads(ARGS)
