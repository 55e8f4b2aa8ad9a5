"""Responses request -> chat request: every input item kind, tools, options, and the errors that
name the field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mlx_gateway.backends.profiles import PROFILES
from mlx_gateway.errors import InvalidRequest
from mlx_gateway.responses.request import custom_tool_names, to_chat_request
from mlx_gateway.responses.types import decode_responses_request

Json = dict[str, Any]
MLX, LLAMA = PROFILES["mlx_lm"], PROFILES["llama_cpp"]
GRAMMAR = 'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF'


def body_of(profile: Any = MLX, **fields: Any) -> Json:
    """The chat body as the backend receives it (encoded), read back."""
    request = decode_responses_request(json.dumps({"model": "gpt-x", **fields}).encode())
    body = to_chat_request(request, model="local", profile=profile, stream=True, max_tokens=99)
    return dict(msgspec.json.decode(msgspec.json.encode(body)))


def messages_of(items: Any, profile: Any = MLX, **fields: Any) -> list[Json]:
    return list(body_of(profile, input=items, **fields)["messages"])


def call(call_id: str, name: str = "exec_command", arguments: str = '{"cmd": "ls"}') -> Json:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def result(call_id: str, output: Any = "ok", kind: str = "function_call_output") -> Json:
    return {"type": kind, "call_id": call_id, "output": output}


def tool_call(call_id: str, name: str, arguments: str) -> Json:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def text(role: str, value: str, part: str = "input_text") -> Json:
    return {"type": "message", "role": role, "content": [{"type": part, "text": value}]}


ITEM_CASES: list[tuple[str, Any, list[Json]]] = [
    ("a string", "hi", [{"role": "user", "content": "hi"}]),
    ("a message without a type", [{"role": "user", "content": "hi"}],
     [{"role": "user", "content": "hi"}]),
    ("developer messages join the leading system message",
     [text("developer", "rules"), text("developer", "more"), text("user", "hi")],
     [{"role": "system", "content": "rules\n\nmore"}, {"role": "user", "content": "hi"}]),
    ("a later system message stays in place, as marked user text",
     [text("user", "hi"), text("system", "now")],
     [{"role": "user", "content": "hi"},
      {"role": "user", "content": "<system_instructions>\nnow\n</system_instructions>"}]),
    ("a developer message after a call ends the assistant turn",
     [text("developer", "rules"), text("user", "go"), call("a"), result("a"),
      text("developer", "mode changed")],
     [{"role": "system", "content": "rules"}, {"role": "user", "content": "go"},
      {"role": "assistant", "content": "", "tool_calls": [
          tool_call("a", "exec_command", '{"cmd": "ls"}')]},
      {"role": "tool", "tool_call_id": "a", "content": "ok"},
      {"role": "user",
       "content": "<system_instructions>\nmode changed\n</system_instructions>"}]),
    ("assistant output_text",
     [text("user", "hi"), text("assistant", "hello", "output_text")],
     [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]),
    ("an image", [{"role": "user", "content": [
        {"type": "input_text", "text": "see"},
        {"type": "input_image", "image_url": "data:image/png;base64,AA"}]}],
     [{"role": "user", "content": [{"type": "text", "text": "see"}, {
         "type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]),
    ("parallel calls are one assistant turn, outputs after it",
     [text("user", "go"), call("a"), call("b", arguments="{}"), result("b", "B"), result("a")],
     [{"role": "user", "content": "go"},
      {"role": "assistant", "content": "", "tool_calls": [
          tool_call("a", "exec_command", '{"cmd": "ls"}'), tool_call("b", "exec_command", "{}")]},
      {"role": "tool", "tool_call_id": "b", "content": "B"},
      {"role": "tool", "tool_call_id": "a", "content": "ok"}]),
    ("text then a call is one assistant message",
     [text("assistant", "Let me look.", "output_text"), call("a")],
     [{"role": "assistant", "content": "Let me look.",
       "tool_calls": [tool_call("a", "exec_command", '{"cmd": "ls"}')]}]),
    ("a custom tool call round trip",
     [{"type": "custom_tool_call", "call_id": "p", "name": "apply_patch", "input": "*** Begin"},
      result("p", "Done!", "custom_tool_call_output")],
     [{"role": "assistant", "content": "",
       "tool_calls": [tool_call("p", "apply_patch", '{"input":"*** Begin"}')]},
      {"role": "tool", "tool_call_id": "p", "content": "Done!"}]),
    ("a local shell call",
     [{"type": "local_shell_call", "call_id": "s", "action": {"type": "exec", "command": ["ls"]}},
      {"type": "local_shell_call_output", "id": "s", "output": "a.txt"}],
     [{"role": "assistant", "content": "", "tool_calls": [
         tool_call("s", "local_shell", '{"type":"exec","command":["ls"]}')]},
      {"role": "tool", "tool_call_id": "s", "content": "a.txt"}]),
    ("an output's image goes to a user message after the outputs",
     [call("v", "view_image"), result("v", [
         {"type": "input_text", "text": "img"},
         {"type": "input_image", "image_url": "http://x/i.png"}]), text("user", "next")],
     [{"role": "assistant", "content": "",
       "tool_calls": [tool_call("v", "view_image", '{"cmd": "ls"}')]},
      {"role": "tool", "tool_call_id": "v", "content": "img"},
      {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/i.png"}}]},
      {"role": "user", "content": "next"}]),
    ("reasoning without a field to send it back in is dropped",
     [{"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "t"}],
       "encrypted_content": None}, text("assistant", "A", "output_text")],
     [{"role": "assistant", "content": "A"}]),
    ("unknown item kinds are dropped",
     [{"type": "web_search_call", "id": "w"}, text("user", "hi")],
     [{"role": "user", "content": "hi"}]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("items", "expected"), [c[1:] for c in ITEM_CASES], ids=[c[0] for c in ITEM_CASES]
)
def test_input_items(items: Any, expected: list[Json]) -> None:
    assert messages_of(items) == expected


def test_reasoning_is_sent_back_where_the_backend_reads_it() -> None:
    items = [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "sum"}]},
        call("a"),
        result("a"),
    ]
    # No known server's profile asks for it any more (see README, "Prompt cache").
    echoing = dataclasses.replace(LLAMA, reasoning_back_field="reasoning_content")
    assert messages_of(items, echoing)[0]["reasoning_content"] == "sum"
    assert "reasoning_content" not in messages_of(items, LLAMA)[0]


def test_instructions_come_first() -> None:
    messages = messages_of([text("developer", "dev"), text("user", "u")], instructions="inst")
    assert messages[0] == {"role": "system", "content": "inst\n\ndev"}


EXEC_TOOL = {"type": "function", "name": "exec_command", "description": "Run",
             "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}
PATCH_TOOL = {"type": "custom", "name": "apply_patch", "description": "Edit files.",
              "format": {"type": "grammar", "syntax": "lark", "definition": GRAMMAR}}
HOSTED = [{"type": "web_search"}, {"type": "tool_search"}, {"type": "file_search"}]


def test_tools_function_custom_and_hosted() -> None:
    body = body_of(input="hi", tools=[EXEC_TOOL, PATCH_TOOL, *HOSTED], tool_choice="auto")
    exec_tool, patch_tool = body["tools"]
    assert exec_tool == {"type": "function", "function": {
        "name": "exec_command", "description": "Run", "parameters": EXEC_TOOL["parameters"]}}
    function = patch_tool["function"]
    assert function["name"] == "apply_patch"
    assert function["parameters"]["required"] == ["input"]
    assert function["parameters"]["properties"]["input"]["type"] == "string"
    assert "Edit files." in function["description"]
    assert GRAMMAR in function["description"]
    assert body["tool_choice"] == "auto"


def test_custom_tool_names() -> None:
    request = decode_responses_request(
        json.dumps({"model": "m", "input": "x", "tools": [EXEC_TOOL, PATCH_TOOL]}).encode()
    )
    assert custom_tool_names(request) == {"apply_patch"}


def test_a_namespace_offers_its_tools_by_their_own_names() -> None:
    group = {"type": "namespace", "name": "agents", "description": "Sub-agents.",
             "tools": [{**EXEC_TOOL, "name": "spawn_agent"}, {**PATCH_TOOL, "name": "edit"}]}
    body = body_of(input="hi", tools=[group, {"type": "namespace", "name": "empty"}])
    assert [t["function"]["name"] for t in body["tools"]] == ["spawn_agent", "edit"]
    request = decode_responses_request(
        json.dumps({"model": "m", "input": "x", "tools": [group]}).encode()
    )
    assert custom_tool_names(request) == {"edit"}


OPTION_CASES: list[tuple[str, Json, Json]] = [
    ("sampling", {"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2, "top_p": 0.9}),
    ("reasoning on", {"reasoning": {"effort": "high"}},
     {"chat_template_kwargs": {"enable_thinking": True}}),
    ("reasoning off", {"reasoning": {"effort": "minimal"}},
     {"chat_template_kwargs": {"enable_thinking": False}}),
    ("json schema", {"text": {"format": {"type": "json_schema", "name": "r", "strict": True,
                                         "schema": {"type": "object"}}}},
     {"response_format": {"type": "json_schema",
                          "json_schema": {"name": "r", "schema": {"type": "object"},
                                          "strict": True}}}),
    ("plain text format", {"text": {"format": {"type": "text"}, "verbosity": "low"}}, {}),
    ("accepted and not forwarded", {"store": False, "include": ["reasoning.encrypted_content"],
                                    "prompt_cache_key": "k", "metadata": {"a": "b"},
                                    "client_metadata": {"x": 1}, "new_field": [1]}, {}),
    ("no parallel calls", {"tools": [EXEC_TOOL], "parallel_tool_calls": False,
                           "tool_choice": {"type": "function", "name": "exec_command"}},
     {"parallel_tool_calls": False,
      "tool_choice": {"type": "function", "function": {"name": "exec_command"}}}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "expected"), [c[1:] for c in OPTION_CASES], ids=[c[0] for c in OPTION_CASES]
)
def test_options(fields: Json, expected: Json) -> None:
    body = body_of(input="hi", **fields)
    base = {"model": "local", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 99,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    body.pop("tools", None)
    assert body == {**base, **expected}


ERROR_CASES: list[tuple[str, Json, str]] = [
    ("stateful", {"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id: "),
    ("input of the wrong type", {"input": 3}, "input: Expected `str | array`"),
    ("content of the wrong type", {"input": [{"role": "user", "content": 5}]}, "input.0.content"),
    ("a call without call_id", {"input": [{"type": "function_call", "name": "f"}]},
     "input.0.call_id: Field required"),
    ("an output without call_id", {"input": [{"type": "function_call_output", "output": ""}]},
     "input.0.call_id: Field required"),
    ("a bad role", {"input": [{"role": "robot", "content": "x"}]}, "input.0.role"),
    ("no input", {}, "input: expected a non-empty"),
    ("a function tool without a name", {"input": "x", "tools": [{"type": "function"}]},
     "tools.0.name: Field required"),
    ("a bad limit", {"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "message"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_errors_name_the_field(fields: Json, message: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        body_of(**fields)
    assert message in raised.value.message


def test_a_codex_request() -> None:
    """The shape Codex sends every turn: developer prompt, history with reasoning, parallel
    calls and a patch, its tools, and fields a local server has no use for."""
    request = {
        "input": [
            text("developer", "You are Codex."), text("user", "<environment_context/>"),
            text("user", "make a.txt"),
            {"type": "reasoning", "summary": [], "content": None, "encrypted_content": None},
            call("c1"), call("c2", arguments='{"cmd": "pwd"}'), result("c1"), result("c2", "/w"),
            {"type": "custom_tool_call", "call_id": "c3", "name": "apply_patch",
             "input": "*** Begin Patch\n*** Add File: a.txt\n+x\n*** End Patch\n"},
            result("c3", "Success.", "custom_tool_call_output"),
            text("assistant", "Done.", "output_text"), text("user", "thanks"),
        ],
        "tools": [EXEC_TOOL, PATCH_TOOL, {"type": "web_search", "external_web_access": False}],
        "tool_choice": "auto", "parallel_tool_calls": True, "reasoning": {"effort": "medium"},
        "store": False, "stream": True, "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "019a", "text": {"verbosity": "medium"},
    }  # fmt: skip
    body = body_of(**request)
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "user", "assistant", "tool", "tool", "assistant", "tool",
                     "assistant", "user"]  # fmt: skip
    assert [c["id"] for c in body["messages"][3]["tool_calls"]] == ["c1", "c2"]
    patch = json.loads(body["messages"][6]["tool_calls"][0]["function"]["arguments"])
    assert patch["input"].startswith("*** Begin Patch")
    assert [t["function"]["name"] for t in body["tools"]] == ["exec_command", "apply_patch"]
    assert body["chat_template_kwargs"] == {"enable_thinking": True}


def test_the_recorded_codex_request() -> None:
    """A real first turn of Codex (tests/e2e/fixtures): system prompt first, one system message,
    its function tools, namespace tools flattened, apply_patch as a one-string function, the
    hosted web_search dropped; client_metadata (per turn) never reaches the backend."""
    fixture = Path(__file__).parents[1] / "e2e" / "fixtures" / "codex_request.json"
    recorded = json.loads(fixture.read_text())
    body = body_of(**{k: v for k, v in recorded.items() if k != "model"})
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "user"]
    assert body["messages"][0]["content"].startswith(recorded["input"][0]["content"][0]["text"])
    names = [tool["function"]["name"] for tool in body["tools"]]
    named = [t["name"] for t in recorded["tools"] if t["type"] in ("function", "custom")]
    nested = [t["name"] for g in recorded["tools"] if g["type"] == "namespace" for t in g["tools"]]
    assert sorted(names) == sorted(named + nested)
    patch = next(t["function"] for t in body["tools"] if t["function"]["name"] == "apply_patch")
    assert list(patch["parameters"]["properties"]) == ["input"]
    assert "client_metadata" not in body
    assert "prompt_cache_key" not in body
