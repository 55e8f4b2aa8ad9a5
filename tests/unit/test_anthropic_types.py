"""Anthropic request decoding: what is accepted, what is refused, and errors naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mlx_gateway.anthropic import types as an
from mlx_gateway.anthropic.types import decode_count_tokens_request, decode_messages_request
from mlx_gateway.errors import InvalidRequest
from mlx_gateway.parse.validation import describe_validation_error

Json = dict[str, Any]
FIXTURE = Path(__file__).resolve().parents[1] / "e2e" / "fixtures" / "claude_code_request.json"


def body(**fields: Any) -> Json:
    base: Json = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
    }
    base.update(fields)
    return base


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def error_of(raw: bytes) -> str:
    with pytest.raises(InvalidRequest) as caught:
        decode_messages_request(raw)
    return caught.value.message


THREE = [
    {"role": "user", "content": "a"},
    {"role": "assistant", "content": "b"},
]

ERROR_CASES: list[tuple[str, Any, str]] = [
    (
        "unknown block type, deep",
        body(messages=[*THREE, {"role": "user", "content": [{"type": "bogus"}]}]),
        "messages.2.content.0.type: Invalid value 'bogus'",
    ),
    (
        "block type missing",
        body(messages=[*THREE, {"role": "user", "content": [{"text": "x"}]}]),
        "messages.2.content.0.type: Field required",
    ),
    (
        "text not a string",
        body(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]),
        "messages.0.content.0.text: Expected `str`, got `int`",
    ),
    (
        "unknown role",
        body(messages=[{"role": "robot", "content": "x"}]),
        "messages.0.role: Invalid enum value 'robot'",
    ),
    ("role missing", body(messages=[{"content": "x"}]), "messages.0.role: Field required"),
    (
        "content null",
        body(messages=[{"role": "user", "content": None}]),
        "messages.0.content: Expected `str | array`, got `null`",
    ),
    ("no messages", body(messages=[]), "messages: Expected `array` of length >= 1"),
    ("messages a string", body(messages="hi"), "messages: Expected `array`, got `str`"),
    (
        "max_tokens missing",
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        "max_tokens: Field required",
    ),
    ("model missing", {"max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]},
     "model: Field required"),
    ("max_tokens zero", body(max_tokens=0), "max_tokens: Expected `int` >= 1"),
    ("max_tokens a string", body(max_tokens="10"), "max_tokens: Expected `int`, got `str`"),
    (
        "image source type missing",
        body(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]),
        "messages.0.content.0.source.type: Field required",
    ),
    (
        "tool_use inside a tool_result",
        body(messages=[{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "tool_use"}]}
        ]}]),
        "messages.0.content.0.content.0.type: Invalid value 'tool_use'",
    ),
    ("tool name missing", body(tools=[{"description": "x"}]), "tools.0.name: Field required"),
    (
        "tool schema an array",
        body(tools=[{"name": "a"}, {"name": "b", "input_schema": [1]}]),
        "tools.1.input_schema: Expected `object | null`, got `array`",
    ),
    (
        "tool schema a string",
        body(tools=[{"name": "a", "input_schema": "{}"}]),
        "tools.0.input_schema: Expected `object | null`, got `str`",
    ),
    (
        "tool_choice type",
        body(tool_choice={"type": "sometimes"}),
        "tool_choice.type: Invalid enum value 'sometimes'",
    ),
    ("system image", body(system=[{"type": "image"}]), "system.0.type: Invalid value 'image'"),
    ("temperature a string", body(temperature="hot"),
     "temperature: Expected `float | null`, got `str`"),
    ("stream a string", body(stream="yes"), "stream: Expected `bool`, got `str`"),
    ("user_id a number", body(metadata={"user_id": 5}),
     "metadata.user_id: Expected `str | null`, got `int`"),
    ("stop_sequences a string", body(stop_sequences="###"),
     "stop_sequences: Expected `array | null`, got `str`"),
    ("not an object", [], "Expected `object`, got `array`"),
]


@pytest.mark.parametrize(("value", "message"), [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_errors_name_the_field(value: Any, message: str) -> None:
    assert error_of(encode(value)) == message


def test_empty_body() -> None:
    assert error_of(b"") == "request body is empty; expected a JSON object"


def test_malformed_json() -> None:
    assert error_of(b"{not json").startswith("request body is not valid JSON: ")


def test_error_is_an_invalid_request_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_messages_request(encode(body(max_tokens=0)))
    assert caught.value.status == 400
    assert caught.value.anthropic_type == "invalid_request_error"


DESCRIBE_CASES: list[tuple[str, str]] = [
    ("Expected `int`, got `str` - at `$.messages[2].max`",
     "messages.2.max: Expected `int`, got `str`"),
    ("Object missing required field `type` - at `$.messages[10].content[0]`",
     "messages.10.content.0.type: Field required"),
    ("Object missing required field `model`", "model: Field required"),
    ("Expected `object`, got `array`", "Expected `object`, got `array`"),
]


@pytest.mark.parametrize(("raw", "expected"), DESCRIBE_CASES)
def test_describe_validation_error(raw: str, expected: str) -> None:
    assert describe_validation_error(msgspec.ValidationError(raw)) == expected


ACCEPTED_BLOCKS: list[tuple[str, Json, type]] = [
    ("text", {"type": "text", "text": "x", "citations": None}, an.TextBlock),
    ("image base64", {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                  "data": "AAAA"}}, an.ImageBlock),
    ("image url", {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
     an.ImageBlock),
    ("image file", {"type": "image", "source": {"type": "file", "file_id": "f_1"}},
     an.ImageBlock),
    ("document", {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                 "data": "doc"}, "title": "t"},
     an.DocumentBlock),
    ("search_result", {"type": "search_result", "title": "t", "source": "s",
                       "content": [{"type": "text", "text": "r"}]}, an.SearchResultBlock),
    ("tool_use", {"type": "tool_use", "id": "t", "name": "n", "input": {"a": 1}},
     an.ToolUseBlock),
    ("tool_result string", {"type": "tool_result", "tool_use_id": "t", "content": "ok"},
     an.ToolResultBlock),
    ("tool_result blocks", {"type": "tool_result", "tool_use_id": "t", "is_error": True,
                            "content": [{"type": "text", "text": "x"},
                                        {"type": "image", "source": {"type": "url", "url": "u"}}]},
     an.ToolResultBlock),
    ("thinking", {"type": "thinking", "thinking": "x", "signature": "s"}, an.ThinkingBlock),
    ("redacted_thinking", {"type": "redacted_thinking", "data": "x"}, an.RedactedThinkingBlock),
    ("server_tool_use", {"type": "server_tool_use", "id": "s", "name": "web_search",
                         "input": {}}, an.ServerToolUseBlock),
    ("web_search_tool_result", {"type": "web_search_tool_result", "tool_use_id": "s",
                                "content": [{"type": "web_search_result", "url": "u"}]},
     an.WebSearchToolResultBlock),
    ("container_upload", {"type": "container_upload", "file_id": "f"}, an.ContainerUploadBlock),
]


@pytest.mark.parametrize(("block", "kind"), [c[1:] for c in ACCEPTED_BLOCKS],
                         ids=[c[0] for c in ACCEPTED_BLOCKS])
def test_every_block_kind_is_accepted(block: Json, kind: type) -> None:
    decoded = decode_messages_request(encode(body(messages=[
        {"role": "user", "content": [{**block, "cache_control": {"type": "ephemeral"}}]}
    ])))
    content = decoded.messages[0].content
    assert isinstance(content, list)
    assert isinstance(content[0], kind)


def test_unknown_fields_are_tolerated_everywhere() -> None:
    decoded = decode_messages_request(encode(body(
        messages=[{"role": "user", "content": [{"type": "text", "text": "x", "new": 1}],
                   "extra": True}],
        tools=[{"name": "t", "input_schema": {"type": "object"}, "strict": True, "new": {}}],
        tool_choice={"type": "auto", "new": 1},
        thinking={"type": "adaptive", "display": "omitted"},
        metadata={"user_id": "u", "new": 1},
        context_management={"edits": []},
        output_config={"effort": "high"},
        service_tier="auto",
    )))
    assert decoded.tools is not None
    assert decoded.tools[0].name == "t"
    assert decoded.thinking == an.ThinkingConfig(type="adaptive")


def test_defaults() -> None:
    decoded = decode_messages_request(encode(body()))
    assert decoded.stream is False
    assert decoded.system is None
    assert decoded.tools is None
    assert decoded.thinking is None
    assert decoded.messages == [an.Message(role="user", content="hi")]


def test_the_real_claude_code_request_decodes() -> None:
    decoded = decode_messages_request(FIXTURE.read_bytes())
    assert decoded.stream is True
    assert decoded.thinking is not None
    assert decoded.tools
    assert any(tool.defer_loading for tool in decoded.tools)


def test_count_tokens_takes_no_max_tokens() -> None:
    raw = encode({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert decode_count_tokens_request(raw).messages[0].content == "hi"
    with pytest.raises(InvalidRequest, match="messages: Expected `array` of length >= 1"):
        decode_count_tokens_request(encode({"model": "m", "messages": []}))
    with pytest.raises(InvalidRequest, match="empty"):
        decode_count_tokens_request(b"")


def test_tool_reference_inside_a_tool_result_is_accepted() -> None:
    """Claude Code's ToolSearch answers with `tool_reference` blocks in its tool_result (the
    API expands them into the deferred tool's definition); the next turn sends them back."""
    raw = encode(body(messages=[
        {"role": "user", "content": "open an issue"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "ToolSearch",
             "input": {"query": "select:mcp__github__create_issue"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1",
             "content": [{"type": "tool_reference", "tool_name": "mcp__github__create_issue"}]}
        ]},
    ]))
    decoded = decode_messages_request(raw)
    assert len(decoded.messages) == 3
