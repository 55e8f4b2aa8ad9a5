"""Pure translation, table-driven: Anthropic request -> OpenAI request, OpenAI completion ->
Anthropic message. Requests go through the real decoder, completions through the real one."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mlx_gateway.anthropic.answer import to_anthropic_message
from mlx_gateway.anthropic.outcome import usage_to_anthropic
from mlx_gateway.anthropic.request import to_openai_messages, to_openai_request
from mlx_gateway.anthropic.types import MessagesRequest, decode_messages_request
from mlx_gateway.backends.profiles import PROFILES, BackendProfile
from mlx_gateway.parse.chat import decode_completion
from mlx_gateway.parse.toolargs import RAW_ARGUMENTS_KEY, parse_tool_arguments
from tests.unit.usage import usage_of

Json = dict[str, Any]

MLX = PROFILES["mlx_lm"]
VLLM = PROFILES["vllm"]
OLLAMA = PROFILES["ollama"]
MSG_ID = "msg_0123456789abcdef"
BILLING = "x-anthropic-billing-header: cc_version=1.0.51.abc; cc_entrypoint=cli; cch=8f2e1;"
PNG = "iVBORw0KGgo="
CLAUDE_CODE_REQUEST = (
    Path(__file__).resolve().parents[1] / "e2e" / "fixtures" / "claude_code_request.json"
)


def request(**fields: Any) -> MessagesRequest:
    body: Json = {"model": "claude-x", "max_tokens": 256, "messages": [user("hi")]}
    body.update(fields)
    return decode_messages_request(json.dumps(body).encode())


def user(content: Any) -> Json:
    return {"role": "user", "content": content}


def assistant(content: Any) -> Json:
    return {"role": "assistant", "content": content}


def text(value: str, **extra: Any) -> Json:
    return {"type": "text", "text": value, **extra}


def image_b64(data: str = PNG, media_type: str | None = "image/png") -> Json:
    source: Json = {"type": "base64", "data": data}
    if media_type is not None:
        source["media_type"] = media_type
    return {"type": "image", "source": source}


def image_url(url: str) -> Json:
    return {"type": "image", "source": {"type": "url", "url": url}}


def tool_use(id_: str, name: str, input_: Json) -> Json:
    return {"type": "tool_use", "id": id_, "name": name, "input": input_}


def tool_result(id_: str, content: Any = None, **extra: Any) -> Json:
    block: Json = {"type": "tool_result", "tool_use_id": id_, **extra}
    if content is not None:
        block["content"] = content
    return block


def thinking(value: str) -> Json:
    return {"type": "thinking", "thinking": value, "signature": "sig"}


def part_text(value: str) -> Json:
    return {"type": "text", "text": value}


def part_image(url: str) -> Json:
    return {"type": "image_url", "image_url": {"url": url}}


def data_url(data: str = PNG, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{data}"


def call(id_: str, name: str, arguments: str) -> Json:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


def convert(
    messages: list[Json], system: Any = None, profile: BackendProfile = MLX
) -> list[Json]:
    decoded = request(messages=messages, **({} if system is None else {"system": system}))
    return to_openai_messages(decoded.system, decoded.messages, profile)


# ---- system -----------------------------------------------------------------------------------

SYSTEM_CASES: list[tuple[str, Any, list[Json]]] = [
    ("string", "Be brief.", [{"role": "system", "content": "Be brief."}]),
    ("empty string", "", []),
    ("one block", [text("Be brief.")], [{"role": "system", "content": "Be brief."}]),
    (
        "blocks joined by newline",
        [text("You are Claude Code."), text("Be brief.")],
        [{"role": "system", "content": "You are Claude Code.\nBe brief."}],
    ),
    (
        "billing header block removed",
        [text(BILLING), text("You are Claude Code.")],
        [{"role": "system", "content": "You are Claude Code."}],
    ),
    (
        "billing header with leading whitespace removed",
        [text("  \n" + BILLING), text("Rules.")],
        [{"role": "system", "content": "Rules."}],
    ),
    ("only a billing header", [text(BILLING)], []),
    ("billing header as the string", BILLING, []),
    (
        "billing header text elsewhere in a block is kept",
        [text("Note: " + BILLING)],
        [{"role": "system", "content": "Note: " + BILLING}],
    ),
    (
        "cache_control ignored",
        [text("A", cache_control={"type": "ephemeral"}), text("B")],
        [{"role": "system", "content": "A\nB"}],
    ),
]


@pytest.mark.parametrize(
    ("system", "expected_head"),
    [case[1:] for case in SYSTEM_CASES],
    ids=[case[0] for case in SYSTEM_CASES],
)
def test_system(system: Any, expected_head: list[Json]) -> None:
    assert convert([user("hi")], system=system) == [*expected_head, user("hi")]


def test_the_billing_header_nonce_does_not_change_the_messages() -> None:
    one = convert([user("hi")], system=[text(BILLING), text("Rules.")])
    other = convert([user("hi")], system=[text(BILLING.replace("8f2e1", "0000a")), text("Rules.")])
    assert one == other


# ---- message content --------------------------------------------------------------------------

MESSAGE_CASES: list[tuple[str, list[Json], list[Json]]] = [
    ("user string", [user("hello")], [user("hello")]),
    ("user one text block", [user([text("hello")])], [user("hello")]),
    ("user text blocks in order", [user([text("a"), text("b")])], [user("a\nb")]),
    (
        "cache_control on blocks ignored",
        [user([text("a", cache_control={"type": "ephemeral"})])],
        [user("a")],
    ),
    ("role system inside messages", [{"role": "system", "content": "S"}, user("u")],
     [{"role": "system", "content": "S"}, user("u")]),
    ("role system with blocks", [{"role": "system", "content": [text("S1"), text("S2")]}],
     [{"role": "system", "content": "S1\nS2"}]),
    (
        "base64 image becomes a data URL",
        [user([image_b64()])],
        [user([part_image(data_url())])],
    ),
    (
        "base64 image keeps its media type",
        [user([image_b64("abc", "image/jpeg")])],
        [user([part_image(data_url("abc", "image/jpeg"))])],
    ),
    (
        "url image becomes its URL",
        [user([image_url("https://example.com/cat.png")])],
        [user([part_image("https://example.com/cat.png")])],
    ),
    (
        "text and images keep their order as parts",
        [user([text("look"), image_b64(), text("and"), image_url("https://x/y.png")])],
        [user([
            part_text("look"),
            part_image(data_url()),
            part_text("and"),
            part_image("https://x/y.png"),
        ])],
    ),
    (
        "text document inlined",
        [user([{"type": "document", "source": {"type": "text", "data": "DOC"}}, text("sum")])],
        [user("DOC\nsum")],
    ),
    (
        "search result inlined",
        [user([{"type": "search_result", "title": "t", "source": "s",
                "content": [text("r1"), text("r2")]}])],
        [user("r1\nr2")],
    ),
    ("assistant string", [user("q"), assistant("a")], [user("q"), assistant("a")]),
    (
        "assistant text block",
        [user("q"), assistant([text("a")])],
        [user("q"), assistant("a")],
    ),
]


@pytest.mark.parametrize(
    ("messages", "expected"),
    [case[1:] for case in MESSAGE_CASES],
    ids=[case[0] for case in MESSAGE_CASES],
)
def test_messages(messages: list[Json], expected: list[Json]) -> None:
    assert convert(messages) == expected


def test_pdf_document_is_named_not_dropped() -> None:
    pdf = {"type": "document", "title": "spec.pdf",
           "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}}
    [message] = convert([user([pdf])])
    assert message["role"] == "user"
    assert "spec.pdf" in message["content"]


# ---- assistant: tool calls and thinking ------------------------------------------------------


def test_assistant_tool_use_becomes_tool_calls_with_ids_kept() -> None:
    messages = [
        user("read two files"),
        assistant([
            text("Reading."),
            tool_use("toolu_01A", "read", {"path": "a.py"}),
            tool_use(
                "3f2c9a1e-uuid", "read", {"path": "b.py", "lines": [1, 2], "deep": {"x": None}}
            ),
        ]),
    ]
    [_, message] = convert(messages)
    assert message["role"] == "assistant"
    assert message["content"] == "Reading."
    calls = message["tool_calls"]
    assert [c["id"] for c in calls] == ["toolu_01A", "3f2c9a1e-uuid"]
    assert [c["type"] for c in calls] == ["function", "function"]
    assert [c["function"]["name"] for c in calls] == ["read", "read"]
    assert all(isinstance(c["function"]["arguments"], str) for c in calls)
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"path": "a.py"},
        {"path": "b.py", "lines": [1, 2], "deep": {"x": None}},
    ]


def test_assistant_tool_use_with_empty_input_sends_an_empty_object() -> None:
    [_, message] = convert([user("q"), assistant([tool_use("t1", "now", {})])])
    assert message["tool_calls"] == [call("t1", "now", "{}")]
    assert message["content"] == ""


def test_assistant_non_ascii_arguments_round_trip() -> None:
    [_, message] = convert([user("q"), assistant([tool_use("t1", "say", {"t": "héllo ✓ \n"})])])
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"t": "héllo ✓ \n"}


THINKING_CASES: list[tuple[str, BackendProfile, Json]] = [
    ("mlx_lm drops thinking", MLX, assistant("answer")),
    ("ollama drops thinking", OLLAMA, assistant("answer")),
    ("vllm drops thinking", VLLM, assistant("answer")),
    ("llama.cpp drops thinking", PROFILES["llama_cpp"], assistant("answer")),
    ("a profile that wants it gets reasoning_content",
     dataclasses.replace(VLLM, reasoning_back_field="reasoning_content"),
     {**assistant("answer"), "reasoning_content": "hmm"}),
]


@pytest.mark.parametrize(
    ("profile", "expected"),
    [case[1:] for case in THINKING_CASES],
    ids=[case[0] for case in THINKING_CASES],
)
def test_thinking_blocks_per_profile(profile: BackendProfile, expected: Json) -> None:
    messages = [
        user("q"),
        assistant([thinking("hmm"), {"type": "redacted_thinking", "data": "xyz"}, text("answer")]),
    ]
    assert convert(messages, profile=profile) == [user("q"), expected]


def test_server_tool_blocks_in_history_are_not_forwarded() -> None:
    messages = [
        user("q"),
        assistant([
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
             "input": {"query": "x"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
            text("found"),
        ]),
    ]
    assert convert(messages) == [user("q"), assistant("found")]


# ---- user: tool results ----------------------------------------------------------------------

CALLS = assistant([tool_use("t1", "read", {"path": "a"}), tool_use("t2", "read", {"path": "b"})])
CALLS_OUT = {
    "role": "assistant",
    "content": "",
    "tool_calls": [call("t1", "read", '{"path":"a"}'), call("t2", "read", '{"path":"b"}')],
}


def tool_msg(id_: str, content: str) -> Json:
    return {"role": "tool", "tool_call_id": id_, "content": content}


TOOL_RESULT_CASES: list[tuple[str, list[Json], list[Json]]] = [
    (
        "string results in order",
        [tool_result("t1", "A"), tool_result("t2", "B")],
        [tool_msg("t1", "A"), tool_msg("t2", "B")],
    ),
    (
        "block results joined",
        [tool_result("t1", [text("A1"), text("A2")]), tool_result("t2", [text("B")])],
        [tool_msg("t1", "A1\nA2"), tool_msg("t2", "B")],
    ),
    (
        "empty text blocks skipped, with or without other parts",
        [
            tool_result("t1", [text("A1"), text(""), text("A2")]),
            tool_result("t2", [text(""), {"type": "tool_reference", "tool_name": "x"}, text("B")]),
        ],
        [tool_msg("t1", "A1\nA2"), tool_msg("t2", "Tool loaded: x\nB")],
    ),
    (
        "no content",
        [tool_result("t1"), tool_result("t2", "")],
        [tool_msg("t1", ""), tool_msg("t2", "")],
    ),
    (
        "is_error marked",
        [tool_result("t1", "No such file", is_error=True), tool_result("t2", "B")],
        [tool_msg("t1", "[tool error] No such file"), tool_msg("t2", "B")],
    ),
    (
        "is_error marked on block content",
        [tool_result("t1", [text("boom")], is_error=True), tool_result("t2", "ok")],
        [tool_msg("t1", "[tool error] boom"), tool_msg("t2", "ok")],
    ),
    (
        "user text after the results stays after them",
        [tool_result("t1", "A"), tool_result("t2", "B"), text("now fix it")],
        [tool_msg("t1", "A"), tool_msg("t2", "B"), user("now fix it")],
    ),
    (
        "user text before the results goes after them",
        [text("note"), tool_result("t1", "A"), tool_result("t2", "B")],
        [tool_msg("t1", "A"), tool_msg("t2", "B"), user("note")],
    ),
    (
        "images inside a result go to a user message after the tool messages",
        [
            tool_result("t1", [text("screenshot:"), image_b64()]),
            tool_result("t2", [image_url("https://x/2.png")]),
        ],
        [
            tool_msg("t1", "screenshot:"),
            tool_msg("t2", ""),
            user([part_image(data_url()), part_image("https://x/2.png")]),
        ],
    ),
    (
        "result images then user text in one user message, in block order",
        [tool_result("t1", [image_b64()]), tool_result("t2", "B"), text("what is it?")],
        [
            tool_msg("t1", ""),
            tool_msg("t2", "B"),
            user([part_image(data_url()), part_text("what is it?")]),
        ],
    ),
    (
        "cache_control on a result ignored",
        [tool_result("t1", "A", cache_control={"type": "ephemeral"}), tool_result("t2", "B")],
        [tool_msg("t1", "A"), tool_msg("t2", "B")],
    ),
]


@pytest.mark.parametrize(
    ("blocks", "expected_tail"),
    [case[1:] for case in TOOL_RESULT_CASES],
    ids=[case[0] for case in TOOL_RESULT_CASES],
)
def test_tool_results(blocks: list[Json], expected_tail: list[Json]) -> None:
    out = convert([user("go"), CALLS, user(blocks)])
    assert out == [user("go"), CALLS_OUT, *expected_tail]


def test_a_whole_agent_turn_keeps_the_conversation_order() -> None:
    messages = [
        user("fix the bug"),
        assistant([thinking("plan"), text("Reading."), tool_use("t1", "read", {"p": "a"})]),
        user([tool_result("t1", "code"), text("hurry")]),
        assistant([tool_use("t2", "edit", {"p": "a"})]),
        user([tool_result("t2", "done", is_error=False)]),
        assistant("Fixed."),
    ]
    out = convert(messages, system=[text(BILLING), text("Rules.")])
    assert [m["role"] for m in out] == [
        "system", "user", "assistant", "tool", "user", "assistant", "tool", "assistant"
    ]
    assert out[3] == tool_msg("t1", "code")
    assert out[4] == user("hurry")
    assert out[6] == tool_msg("t2", "done")
    assert "plan" not in json.dumps(out)


def test_tool_reference_result_names_the_loaded_tool() -> None:
    """ToolSearch results hold `tool_reference` blocks; the backend gets a tool message that
    says which tool was loaded (the block itself has no OpenAI counterpart)."""
    messages = [
        user("open an issue"),
        assistant([tool_use("t1", "ToolSearch", {"query": "select:create_issue"})]),
        user([tool_result("t1", [{"type": "tool_reference", "tool_name": "create_issue"}])]),
    ]
    out = convert(messages)
    assert out[2]["role"] == "tool"
    assert out[2]["tool_call_id"] == "t1"
    assert "create_issue" in out[2]["content"]


def test_the_real_claude_code_request() -> None:
    decoded = decode_messages_request(CLAUDE_CODE_REQUEST.read_bytes())
    body = to_openai_request(decoded, model="local/model", profile=MLX, stream=True)
    messages = body["messages"]
    assert messages[0]["role"] == "system"
    assert "x-anthropic-billing-header" not in json.dumps(messages)
    assert all(m.get("content") is not None for m in messages)
    called = [c["id"] for m in messages for c in m.get("tool_calls", [])]
    answered = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert called == answered
    assert answered
    names = [tool["function"]["name"] for tool in body["tools"]]
    assert "DeferredToolPlaceholder" not in names
    assert "Bash" in names
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["stream_options"] == {"include_usage": True}
    assert any(m["content"].startswith("[tool error] ") for m in messages if m["role"] == "tool")


# ---- the request body ------------------------------------------------------------------------


def body_of(
    profile: BackendProfile = MLX,
    *,
    stream: bool = False,
    max_tokens: int | None = None,
    **fields: Any,
) -> Json:
    body = to_openai_request(
        request(**fields), model="local/model", profile=profile, stream=stream,
        max_tokens=max_tokens,
    )
    wire: Json = msgspec.json.decode(msgspec.json.encode(body))  # as the backend reads it
    return wire


def test_minimal_request() -> None:
    assert body_of() == {
        "model": "local/model",
        "messages": [user("hi")],
        "max_tokens": 256,
        "stream": False,
    }


def test_max_tokens_override() -> None:
    assert body_of(max_tokens=64)["max_tokens"] == 64


@pytest.mark.parametrize("client_asked", [True, False])
def test_stream_is_the_callers_choice_and_asks_for_usage(client_asked: bool) -> None:
    decoded = request(stream=client_asked)
    body = to_openai_request(decoded, model="m", profile=MLX, stream=True)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    body = to_openai_request(decoded, model="m", profile=MLX, stream=False)
    assert body["stream"] is False
    assert "stream_options" not in body


PARAMETER_CASES: list[tuple[str, Json, Json]] = [
    ("temperature", {"temperature": 0.7}, {"temperature": 0.7}),
    ("temperature zero is kept", {"temperature": 0}, {"temperature": 0.0}),
    ("top_p", {"top_p": 0.9}, {"top_p": 0.9}),
    ("top_k", {"top_k": 40}, {"top_k": 40}),
    ("stop kept by the gateway", {"stop_sequences": ["###", "\n\nHuman:"]}, {}),
    ("user", {"metadata": {"user_id": "u-1"}}, {"user": "u-1"}),
    ("metadata without user", {"metadata": {}}, {}),
    ("unknown fields ignored", {"service_tier": "auto", "container": None}, {}),
    (
        "all sampling at once",
        {"temperature": 1, "top_p": 0.5, "top_k": 5},
        {"temperature": 1.0, "top_p": 0.5, "top_k": 5},
    ),
]


@pytest.mark.parametrize(
    ("fields", "expected_extra"),
    [case[1:] for case in PARAMETER_CASES],
    ids=[case[0] for case in PARAMETER_CASES],
)
def test_parameters(fields: Json, expected_extra: Json) -> None:
    base = body_of()
    assert body_of(**fields) == {**base, **expected_extra}


STOP_FORWARD_CASES: list[tuple[str, str, list[str], Json]] = [
    ("vllm reports the match: forwarded", "vllm", ["###", "\n\nHuman:"],
     {"stop": ["###", "\n\nHuman:"]}),
    ("vllm empty list", "vllm", [], {}),
    ("mlx_lm strips the match: gateway watches", "mlx_lm", ["###"], {}),
    ("ollama strips the match: gateway watches", "ollama", ["###"], {}),
    ("llama.cpp strips the match: gateway watches", "llama_cpp", ["###"], {}),
]


@pytest.mark.parametrize(
    ("profile", "stops", "expected_extra"),
    [case[1:] for case in STOP_FORWARD_CASES],
    ids=[case[0] for case in STOP_FORWARD_CASES],
)
def test_stop_sequences_forwarded_only_where_the_match_is_reported(
    profile: str, stops: list[str], expected_extra: Json
) -> None:
    body = body_of(PROFILES[profile], stop_sequences=stops)
    assert {k: v for k, v in body.items() if k == "stop"} == expected_extra


# ---- tools -------------------------------------------------------------------------------------

SCHEMA: Json = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {"path": {"type": "string", "format": "uri", "$ref": "#/x"}},
    "required": ["path"],
    "additionalProperties": False,
}
READ = {"name": "read", "description": "Read a file", "input_schema": SCHEMA}
READ_FN = {
    "type": "function",
    "function": {"name": "read", "parameters": SCHEMA, "description": "Read a file"},
}

TOOL_CASES: list[tuple[str, list[Json], list[Json]]] = [
    ("schema unchanged incl. $schema", [READ], [READ_FN]),
    (
        "no description",
        [{"name": "now", "input_schema": {"type": "object", "properties": {}}}],
        [{"type": "function",
          "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}],
    ),
    (
        "custom type kept",
        [{**READ, "type": "custom"}],
        [READ_FN],
    ),
    (
        "server tools dropped",
        [
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
            READ,
            {"type": "bash_20250124", "name": "bash"},
            {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        ],
        [READ_FN],
    ),
    ("deferred tools dropped", [{**READ, "name": "later", "defer_loading": True}, READ], [READ_FN]),
    (
        "cache_control on a tool ignored",
        [{**READ, "cache_control": {"type": "ephemeral"}}],
        [READ_FN],
    ),
]


@pytest.mark.parametrize(
    ("tools", "expected"),
    [case[1:] for case in TOOL_CASES],
    ids=[case[0] for case in TOOL_CASES],
)
def test_tools(tools: list[Json], expected: list[Json]) -> None:
    assert body_of(tools=tools)["tools"] == expected


def test_schema_goes_to_the_backend_byte_for_byte() -> None:
    schema = b'{ "type":"object",  "properties":{"q":{"description":"caf\\u00e9 \xc3\xa9"}}}'
    raw = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],' + (
        b'"tools":[{"name":"find","input_schema":' + schema + b"}]}"
    )
    body = to_openai_request(
        decode_messages_request(raw), model="m", profile=MLX, stream=False
    )
    sent = msgspec.json.encode(body)
    assert b'"parameters":' + schema in sent
    assert json.loads(sent)["tools"][0]["function"]["parameters"] == json.loads(schema)


@pytest.mark.parametrize("given", [{}, {"input_schema": None}])
def test_tool_without_schema_takes_no_parameters(given: Json) -> None:
    [tool] = body_of(tools=[{"name": "now", **given}])["tools"]
    assert tool["function"]["parameters"] == {"type": "object", "properties": {}}


def test_only_unforwardable_tools_send_no_tools_and_no_choice() -> None:
    body = body_of(
        tools=[{"type": "web_search_20250305", "name": "web_search"}],
        tool_choice={"type": "any"},
    )
    assert "tools" not in body
    assert "tool_choice" not in body
    assert "parallel_tool_calls" not in body


def test_schema_keys_stripped_where_the_profile_says_so() -> None:
    profile = BackendProfile(name="strict", schema_keys_to_strip=("$schema", "format"))
    [tool] = body_of(profile, tools=[READ])["tools"]
    assert tool["function"]["parameters"] == {
        "type": "object",
        "properties": {"path": {"type": "string", "$ref": "#/x"}},
        "required": ["path"],
        "additionalProperties": False,
    }


TOOL_CHOICE_CASES: list[tuple[str, Json | None, Json]] = [
    ("no choice", None, {}),
    ("auto", {"type": "auto"}, {"tool_choice": "auto"}),
    ("any", {"type": "any"}, {"tool_choice": "required"}),
    ("none", {"type": "none"}, {"tool_choice": "none"}),
    (
        "tool",
        {"type": "tool", "name": "read"},
        {"tool_choice": {"type": "function", "function": {"name": "read"}}},
    ),
    (
        "auto without parallel calls",
        {"type": "auto", "disable_parallel_tool_use": True},
        {"tool_choice": "auto", "parallel_tool_calls": False},
    ),
    (
        "any without parallel calls",
        {"type": "any", "disable_parallel_tool_use": True},
        {"tool_choice": "required", "parallel_tool_calls": False},
    ),
    (
        "tool without parallel calls",
        {"type": "tool", "name": "read", "disable_parallel_tool_use": True},
        {
            "tool_choice": {"type": "function", "function": {"name": "read"}},
            "parallel_tool_calls": False,
        },
    ),
    (
        "parallel calls allowed says nothing",
        {"type": "auto", "disable_parallel_tool_use": False},
        {"tool_choice": "auto"},
    ),
]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [case[1:] for case in TOOL_CHOICE_CASES],
    ids=[case[0] for case in TOOL_CHOICE_CASES],
)
def test_tool_choice(choice: Json | None, expected: Json) -> None:
    fields: Json = {"tools": [READ]}
    if choice is not None:
        fields["tool_choice"] = choice
    body = body_of(**fields)
    got = {k: body[k] for k in ("tool_choice", "parallel_tool_calls") if k in body}
    assert got == expected


# ---- thinking switch ---------------------------------------------------------------------------

ENABLED = {"type": "enabled", "budget_tokens": 2048}
THINKING_SWITCH_CASES: list[tuple[str, str, Json | None, Json | None]] = [
    ("mlx_lm enabled", "mlx_lm", ENABLED, {"enable_thinking": True}),
    ("mlx_lm adaptive", "mlx_lm", {"type": "adaptive"}, {"enable_thinking": True}),
    ("mlx_lm disabled", "mlx_lm", {"type": "disabled"}, {"enable_thinking": False}),
    ("mlx_lm not asked", "mlx_lm", None, None),
    ("vllm enabled", "vllm", ENABLED, {"enable_thinking": True}),
    ("vllm disabled", "vllm", {"type": "disabled"}, {"enable_thinking": False}),
    ("llama.cpp enabled", "llama_cpp", ENABLED, {"enable_thinking": True}),
    ("ollama has no switch", "ollama", ENABLED, None),
    ("ollama disabled has no switch", "ollama", {"type": "disabled"}, None),
    ("lmstudio has no switch", "lmstudio", ENABLED, None),
    ("openai has no switch", "openai", ENABLED, None),
]


@pytest.mark.parametrize(
    ("profile", "thinking_config", "expected"),
    [case[1:] for case in THINKING_SWITCH_CASES],
    ids=[case[0] for case in THINKING_SWITCH_CASES],
)
def test_thinking_switch(profile: str, thinking_config: Json | None, expected: Json | None) -> None:
    fields: Json = {} if thinking_config is None else {"thinking": thinking_config}
    body = body_of(PROFILES[profile], **fields)
    assert body.get("chat_template_kwargs") == expected


def test_request_translation_does_not_mutate_the_request() -> None:
    decoded = request(system=[text(BILLING), text("R")], tools=[READ], stop_sequences=["x"])
    before = repr(decoded)
    to_openai_request(decoded, model="m", profile=MLX, stream=True)
    to_openai_request(decoded, model="m", profile=VLLM, stream=False)
    assert repr(decoded) == before
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"


# ---- response: OpenAI -> Anthropic ------------------------------------------------------------


def completion(
    message: Json | None = None,
    finish_reason: str | None = "stop",
    usage: Json | None = None,
    **choice_extra: Any,
) -> bytes:
    choice: Json = {"index": 0, "message": {"role": "assistant", **(message or {})},
                    "finish_reason": finish_reason, **choice_extra}
    body: Json = {"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
                  "choices": [choice]}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


def translate(raw: bytes, stop_sequences: list[str] | None = None) -> Json:
    return to_anthropic_message(
        decode_completion(raw), model="claude-x", message_id=MSG_ID, stop_sequences=stop_sequences
    )


USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


def test_text_answer_envelope() -> None:
    assert translate(completion({"content": "Hi!"}, usage=USAGE)) == {
        "id": MSG_ID,
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "Hi!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage_of(12, 3),
    }


CONTENT_CASES: list[tuple[str, Json | None, list[Json]]] = [
    ("null content", {"content": None}, []),
    ("empty content", {"content": ""}, []),
    ("no message fields", None, []),
    ("whitespace kept", {"content": "  a\n"}, [{"type": "text", "text": "  a\n"}]),
]


@pytest.mark.parametrize(
    ("message", "expected"),
    [case[1:] for case in CONTENT_CASES],
    ids=[case[0] for case in CONTENT_CASES],
)
def test_content(message: Json | None, expected: list[Json]) -> None:
    assert translate(completion(message))["content"] == expected


def test_no_choices_is_an_empty_end_turn() -> None:
    raw = json.dumps({"choices": [], "usage": USAGE}).encode()
    message = translate(raw)
    assert message["content"] == []
    assert message["stop_reason"] == "end_turn"


FINISH_CASES: list[tuple[str | None, str]] = [
    ("stop", "end_turn"),
    ("length", "max_tokens"),
    ("content_filter", "refusal"),
    (None, "end_turn"),
    ("abort", "end_turn"),
]


@pytest.mark.parametrize(("finish_reason", "stop_reason"), FINISH_CASES)
def test_finish_reason_table(finish_reason: str | None, stop_reason: str) -> None:
    message = translate(completion({"content": "x"}, finish_reason=finish_reason))
    assert message["stop_reason"] == stop_reason
    assert message["stop_sequence"] is None


@pytest.mark.parametrize("finish_reason", ["tool_calls", "function_call", "stop", None])
def test_tool_calls_give_tool_use_whatever_the_finish_reason(finish_reason: str | None) -> None:
    raw = completion(
        {"content": None, "tool_calls": [call("c1", "read", '{"p":1}')]},
        finish_reason=finish_reason,
    )
    assert translate(raw)["stop_reason"] == "tool_use"


USAGE_CASES: list[tuple[str, Json | None, Json]] = [
    ("plain", USAGE, usage_of(12, 3)),
    (
        "cached tokens counted apart",
        {**USAGE, "prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 80}},
        usage_of(20, 3, cached=80),
    ),
    (
        "zero cached tokens reported",
        {**USAGE, "prompt_tokens_details": {"cached_tokens": 0}},
        usage_of(12, 3, cached=0),
    ),
    (
        "details without cached tokens",
        {**USAGE, "prompt_tokens_details": {"audio_tokens": 0}},
        usage_of(12, 3),
    ),
    ("null details", {**USAGE, "prompt_tokens_details": None},
     usage_of(12, 3)),
    (
        "all cached",
        {**USAGE, "prompt_tokens_details": {"cached_tokens": 12}},
        usage_of(0, 3, cached=12),
    ),
]


@pytest.mark.parametrize(
    ("usage", "expected"),
    [case[1:] for case in USAGE_CASES],
    ids=[case[0] for case in USAGE_CASES],
)
def test_usage(usage: Json | None, expected: Json) -> None:
    message = translate(completion({"content": "x"}, usage=usage))
    assert message["usage"] == expected
    if usage is not None:
        got = message["usage"]
        assert got["input_tokens"] + got["cache_read_input_tokens"] == usage["prompt_tokens"]


def test_usage_missing_is_estimated_not_a_crash() -> None:
    usage = translate(completion({"content": "x"}))["usage"]
    assert set(usage) == set(usage_of(0, 0))
    assert all(isinstance(v, int) and v >= 0 for v in usage.values())


def test_usage_estimates_when_the_backend_sends_none() -> None:
    assert usage_to_anthropic(None, 7, 2) == usage_of(7, 2)


SIGNATURE = f"mlxgw-{MSG_ID}"

REASONING_CASES: list[tuple[str, Json, str, str]] = [
    ("reasoning_content", {"reasoning_content": "R", "content": "A"}, "R", "A"),
    ("reasoning (mlx_lm)", {"reasoning": "R", "content": "A"}, "R", "A"),
    ("reasoning_content wins over reasoning", {"reasoning_content": "R", "reasoning": "R"},
     "R", ""),
    ("inline think", {"content": "<think>R</think>A"}, "R", "A"),
    ("inline think with newlines", {"content": "<think>\nR\n</think>\n\nA"}, "R\n", "A"),
    ("prompt-opened think", {"content": "R</think>\n\nA"}, "R", "A"),
    ("empty inline think", {"content": "<think>\n\n</think>\n\nA"}, "", "A"),
    ("reasoning only", {"reasoning_content": "R", "content": None}, "R", ""),
    ("field plus inline", {"reasoning_content": "R1", "content": "<think>R2</think>A"},
     "R1R2", "A"),
]


@pytest.mark.parametrize(
    ("message", "reasoning", "answer"),
    [case[1:] for case in REASONING_CASES],
    ids=[case[0] for case in REASONING_CASES],
)
def test_reasoning_becomes_a_thinking_block_first(
    message: Json, reasoning: str, answer: str
) -> None:
    content = translate(completion(message))["content"]
    expected: list[Json] = []
    if reasoning:
        expected.append({"type": "thinking", "thinking": reasoning, "signature": SIGNATURE})
    if answer:
        expected.append({"type": "text", "text": answer})
    assert content == expected


def test_reasoning_then_text_then_tool_calls() -> None:
    raw = completion(
        {"reasoning": "R", "content": "A", "tool_calls": [call("c1", "read", "{}")]},
        finish_reason="tool_calls",
    )
    assert [b["type"] for b in translate(raw)["content"]] == ["thinking", "text", "tool_use"]


def test_tool_calls_keep_ids_and_order() -> None:
    raw = completion(
        {
            "content": "Reading both.",
            "tool_calls": [
                call("call_abc", "read", '{"path": "a.py"}'),
                call("1b4e28ba-2fa1-11d2-883f-0016d3cca427", "grep", '{"q": "x", "n": 3}'),
            ],
        },
        finish_reason="tool_calls",
    )
    message = translate(raw)
    assert message["content"] == [
        {"type": "text", "text": "Reading both."},
        {"type": "tool_use", "id": "call_abc", "name": "read", "input": {"path": "a.py"}},
        {"type": "tool_use", "id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "name": "grep",
         "input": {"q": "x", "n": 3}},
    ]
    assert message["stop_reason"] == "tool_use"


def test_tool_call_without_id_gets_a_unique_one() -> None:
    raw = completion({"tool_calls": [
        {"type": "function", "function": {"name": "a", "arguments": "{}"}},
        {"type": "function", "function": {"name": "b", "arguments": "{}"}},
    ]}, finish_reason="tool_calls")
    ids = [block["id"] for block in translate(raw)["content"]]
    assert len(set(ids)) == 2
    assert all(isinstance(id_, str) and id_ for id_ in ids)


ARGUMENT_CASES: list[tuple[str, Any, Json]] = [
    ("valid", '{"path": "a.py"}', {"path": "a.py"}),
    ("object", {"path": "a.py", "n": [1]}, {"path": "a.py", "n": [1]}),
    ("empty string", "", {}),
    ("whitespace", "  \n", {}),
    ("null", None, {}),
    ("truncated repaired", '{"path": "a.py"', {"path": "a.py"}),
    ("single quotes repaired", "{'path': 'a.py'}", {"path": "a.py"}),
    ("python literal repaired", '{"all": True}', {"all": True}),
    ("not json kept raw", "not json at all", {RAW_ARGUMENTS_KEY: "not json at all"}),
    ("array kept raw", "[1, 2]", {RAW_ARGUMENTS_KEY: "[1, 2]"}),
    ("string kept raw", '"a.py"', {RAW_ARGUMENTS_KEY: '"a.py"'}),
    ("json null kept raw", "null", {RAW_ARGUMENTS_KEY: "null"}),
]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [case[1:] for case in ARGUMENT_CASES],
    ids=[case[0] for case in ARGUMENT_CASES],
)
def test_tool_call_arguments(arguments: Any, expected: Json) -> None:
    assert parse_tool_arguments(arguments) == expected
    raw = completion(
        {"tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "f", "arguments": arguments}}]},
        finish_reason="tool_calls",
    )
    [block] = translate(raw)["content"]
    assert block == {"type": "tool_use", "id": "c1", "name": "f", "input": expected}


TEXT_CALL = '<tool_call>\n{"name": "read", "arguments": {"path": "a.py"}}\n</tool_call>'


def test_text_tool_call_in_content_becomes_tool_use() -> None:
    message = translate(completion({"content": "Let me look.\n" + TEXT_CALL}))
    content = message["content"]
    assert content[0] == {"type": "text", "text": "Let me look.\n"}
    assert content[1]["type"] == "tool_use"
    assert content[1]["name"] == "read"
    assert content[1]["input"] == {"path": "a.py"}
    assert content[1]["id"]
    assert message["stop_reason"] == "tool_use"


def test_two_text_tool_calls_after_thinking() -> None:
    second = TEXT_CALL.replace("a.py", "b.py")
    message = translate(completion({"content": "<think>plan</think>" + TEXT_CALL + "\n" + second}))
    content = message["content"]
    assert [b["type"] for b in content] == ["thinking", "tool_use", "tool_use"]
    assert [b["input"] for b in content[1:]] == [{"path": "a.py"}, {"path": "b.py"}]
    assert content[1]["id"] != content[2]["id"]


def test_text_tool_call_ids_do_not_collide_with_structured_ones() -> None:
    raw = completion(
        {"content": TEXT_CALL, "tool_calls": [{"type": "function",
                                               "function": {"name": "x", "arguments": "{}"}}]},
        finish_reason="tool_calls",
    )
    ids = [b["id"] for b in translate(raw)["content"] if b["type"] == "tool_use"]
    assert len(ids) == 2
    assert len(set(ids)) == 2


STOP_SEQUENCE_CASES: list[tuple[str, list[str] | None, str, Any, str, str | None]] = [
    ("vLLM names the sequence", ["###", "END"], "stop", "END", "stop_sequence", "END"),
    ("vLLM stop token id", ["###"], "stop", 151645, "end_turn", None),
    ("vLLM EOS", ["###"], "stop", None, "end_turn", None),
    ("vLLM names an unknown string", ["###"], "stop", "<|im_end|>", "end_turn", None),
    ("no stop sequences asked", None, "stop", "###", "end_turn", None),
    ("length wins", ["###"], "length", "###", "max_tokens", None),
]


@pytest.mark.parametrize(
    ("stops", "finish_reason", "vllm_stop", "stop_reason", "stop_sequence"),
    [case[1:] for case in STOP_SEQUENCE_CASES],
    ids=[case[0] for case in STOP_SEQUENCE_CASES],
)
def test_stop_sequence(
    stops: list[str] | None,
    finish_reason: str,
    vllm_stop: Any,
    stop_reason: str,
    stop_sequence: str | None,
) -> None:
    raw = completion({"content": "answer"}, finish_reason=finish_reason, stop_reason=vllm_stop)
    message = translate(raw, stop_sequences=stops)
    assert (message["stop_reason"], message["stop_sequence"]) == (stop_reason, stop_sequence)


def test_stop_sequence_left_in_the_text_is_recognised() -> None:
    message = translate(completion({"content": "answer###"}), stop_sequences=["###"])
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "###")
    assert message["content"] == [{"type": "text", "text": "answer"}]


def test_deferred_tools_are_offered_once_a_tool_search_loaded_them() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "tools": [
            {"name": "ToolSearch", "input_schema": {"type": "object"}},
            {"name": "create_issue", "defer_loading": True, "input_schema": {"type": "object"}},
            {"name": "close_issue", "defer_loading": True, "input_schema": {"type": "object"}},
        ],
        "messages": [
            {"role": "user", "content": "open an issue"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "ToolSearch", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "tool_reference", "tool_name": "create_issue"}],
                    }
                ],
            },
        ],
    }
    request = decode_messages_request(json.dumps(body).encode())
    sent = to_openai_request(request, model="m", profile=MLX, stream=False)
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["ToolSearch", "create_issue"]


def test_parallel_results_follow_the_order_of_the_calls() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "run both"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "slow", "name": "Bash", "input": {}},
                    {"type": "tool_use", "id": "fast", "name": "Bash", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "fast", "content": "fast output"},
                    {"type": "tool_result", "tool_use_id": "slow", "content": "slow output"},
                    {"type": "text", "text": "and then?"},
                ],
            },
        ],
    }
    request = decode_messages_request(json.dumps(body).encode())
    sent = to_openai_request(request, model="m", profile=MLX, stream=False)["messages"]
    assert [(m["role"], m.get("tool_call_id")) for m in sent[2:]] == [
        ("tool", "slow"),
        ("tool", "fast"),
        ("user", None),
    ]
