"""The request bodies the benchmark sends, each in Anthropic form and as its OpenAI equivalent.

The large request imitates what Claude Code sends (see tests/e2e/fixtures/claude_code_request.json
for a real one): a billing-header line and a long system prompt in text blocks with
cache_control, many tools with JSON schemas, and a long history of tool_use / tool_result turns.
It is generated from a seeded random source, so every run and every machine sends the same bytes.

The OpenAI equivalent is what the direct path sends to the backend: the same conversation written
the way the gateway forwards it (system text joined, tools as functions, tool_use as tool_calls,
tool_result as `role: tool`), so that "direct" means "the same work without the gateway".
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]

ANTHROPIC_MODEL = "claude-sonnet-4-5"
OPENAI_MODEL = "bench-model"
SMALL_PROMPT = "Write a haiku about local models."
SEED = 20_250_101

_WORD_TEXT = (
    "the file function returns value error test module request response stream token gateway "
    "backend client server config path line change read write edit run check build install "
    "package import class method argument result output input cache prompt model message tool "
    "schema field type string number object array boolean default option command shell search "
    "pattern match directory project source commit branch diff review update create delete list"
)
_WORDS = tuple(_WORD_TEXT.split())


def compact(value: Any) -> bytes:
    """JSON as SDKs and the gateway send it: no spaces, UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request as the gateway's client sends it, and its OpenAI chat equivalent."""

    client: bytes  # Anthropic Messages, or the Responses API's
    openai: bytes


# ---- small requests -----------------------------------------------------------------------------


def small(*, stream: bool) -> Exchange:
    anthropic: Json = {
        "model": ANTHROPIC_MODEL,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": SMALL_PROMPT}],
    }
    openai: Json = {
        "model": OPENAI_MODEL,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": SMALL_PROMPT}],
    }
    if stream:
        anthropic["stream"] = True
        openai["stream"] = True
        openai["stream_options"] = {"include_usage": True}
    return Exchange(client=compact(anthropic), openai=compact(openai))


def small_responses(*, stream: bool) -> Exchange:
    """The small request on the Responses API (the chat equivalent is the same as above)."""
    request: Json = {"model": "gpt-5-codex", "input": SMALL_PROMPT, "max_output_tokens": 256}
    if stream:
        request["stream"] = True
    return Exchange(client=compact(request), openai=small(stream=stream).openai)


# ---- the Claude-Code-like request ---------------------------------------------------------------


class _Text:
    """Deterministic filler text: sentences of common code-talk words."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def words(self, count: int) -> str:
        return " ".join(self._random.choice(_WORDS) for _ in range(count))

    def sentence(self) -> str:
        return self.words(self._random.randint(6, 16)).capitalize() + "."

    def paragraph(self, approx_chars: int) -> str:
        parts: list[str] = []
        size = 0
        while size < approx_chars:
            parts.append(self.sentence())
            size += len(parts[-1]) + 1
        return " ".join(parts)

    def code(self, lines: int) -> str:
        rows = [
            f"{number:>5}\tdef {self.words(1)}_{number}({self.words(1)}): return {self.words(2)!r}"
            for number in range(1, lines + 1)
        ]
        return "\n".join(rows)

    def integer(self, low: int, high: int) -> int:
        return self._random.randint(low, high)


def _tool_schema(text: _Text, index: int) -> Json:
    properties: Json = {
        "file_path": {"type": "string", "description": text.sentence()},
        "pattern": {"type": "string", "description": text.sentence()},
        "limit": {"type": "integer", "minimum": 1, "description": text.sentence()},
        "mode": {
            "type": "string",
            "enum": ["content", "files_with_matches", "count"],
            "description": text.sentence(),
        },
        "options": {
            "type": "object",
            "properties": {
                "recursive": {"type": "boolean", "default": False},
                "exclude": {"type": "array", "items": {"type": "string"}},
            },
            "additionalProperties": False,
        },
    }
    keep = 2 + index % 4
    chosen = dict(list(properties.items())[:keep])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": chosen,
        "required": list(chosen)[:1],
        "additionalProperties": False,
    }


def _tools(text: _Text, count: int) -> list[Json]:
    return [
        {
            "name": f"Tool{index:02d}",
            "description": text.paragraph(1400),
            "input_schema": _tool_schema(text, index),
        }
        for index in range(count)
    ]


def _turns(text: _Text, count: int) -> list[Json]:
    """A user question, then `count` assistant tool_use / user tool_result pairs."""
    messages: list[Json] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>\n" + text.paragraph(1500)},
                {"type": "text", "text": text.sentence()},
            ],
        }
    ]
    for turn in range(count):
        tool_id = f"toolu_bench_{turn:03d}"
        assistant: list[Json] = []
        if turn % 5 == 0:
            assistant.append({"type": "thinking", "thinking": text.paragraph(200), "signature": ""})
        assistant.append({"type": "text", "text": text.sentence()})
        assistant.append(
            {
                "type": "tool_use",
                "id": tool_id,
                "name": f"Tool{turn % 20:02d}",
                "input": {"file_path": f"/home/user/project/src/module_{turn}.py", "limit": 200},
            }
        )
        result: Json = {
            "type": "tool_result",
            "tool_use_id": tool_id,
            "content": text.code(text.integer(18, 26)),
        }
        if turn % 7 == 3:
            result["is_error"] = True
        if turn == count - 1:
            result["cache_control"] = {"type": "ephemeral"}
        messages += [
            {"role": "assistant", "content": assistant},
            {"role": "user", "content": [result]},
        ]
    return messages


def claude_code_like_request(*, tools: int = 20, turns: int = 30) -> Json:
    text = _Text(SEED)
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.0; cc_entrypoint=c;"},
        {
            "type": "text",
            "text": "You are Claude Code, Anthropic's official CLI for Claude.",
            "cache_control": {"type": "ephemeral"},
        },
        {
            "type": "text",
            "text": "\n".join(text.paragraph(1000) for _ in range(28)),
            "cache_control": {"type": "ephemeral"},
        },
    ]
    return {
        "model": ANTHROPIC_MODEL,
        "max_tokens": 32000,
        "system": system,
        "tools": _tools(text, tools),
        "messages": _turns(text, turns),
        "metadata": {"user_id": "user_bench_session_0000"},
        "stream": False,
    }


def _openai_message(message: Json) -> list[Json]:
    """One Anthropic message as the OpenAI messages the gateway would forward."""
    content = message["content"]
    if isinstance(content, str):
        return [{"role": message["role"], "content": content}]
    if message["role"] == "assistant":
        text = "".join(block["text"] for block in content if block["type"] == "text")
        calls = [
            {
                "id": block["id"],
                "type": "function",
                "function": {"name": block["name"], "arguments": compact(block["input"]).decode()},
            }
            for block in content
            if block["type"] == "tool_use"
        ]
        out: Json = {"role": "assistant", "content": text}
        if calls:
            out["tool_calls"] = calls
        return [out]
    results = [
        {"role": "tool", "tool_call_id": block["tool_use_id"], "content": block["content"]}
        for block in content
        if block["type"] == "tool_result"
    ]
    texts = [block["text"] for block in content if block["type"] == "text"]
    return results + ([{"role": "user", "content": "\n".join(texts)}] if texts else [])


def to_openai(request: Json) -> Json:
    # The gateway drops the billing-header block (it defeats backend prompt caches); so do we.
    system = "\n".join(
        block["text"]
        for block in request["system"]
        if not block["text"].startswith("x-anthropic-billing-header")
    )
    messages: list[Json] = [{"role": "system", "content": system}]
    for message in request["messages"]:
        messages += _openai_message(message)
    tools = [
        {
            "type": "function",
            "function": {
                "name": tool["name"],
                "description": tool["description"],
                "parameters": tool["input_schema"],
            },
        }
        for tool in request["tools"]
    ]
    return {
        "model": OPENAI_MODEL,
        "max_tokens": request["max_tokens"],
        "messages": messages,
        "tools": tools,
        "stream": False,
    }


def large() -> Exchange:
    request = claude_code_like_request()
    return Exchange(client=compact(request), openai=compact(to_openai(request)))


# ---- the Codex-like request ---------------------------------------------------------------------


def _responses_items(message: Json) -> list[Json]:
    """One Anthropic message as the Responses input items Codex would send for it."""
    content = message["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    part = "output_text" if message["role"] == "assistant" else "input_text"
    items: list[Json] = []
    for block in content:
        if block["type"] == "text":
            text = [{"type": part, "text": block["text"]}]
            items.append({"type": "message", "role": message["role"], "content": text})
        elif block["type"] == "tool_use":
            arguments = compact(block["input"]).decode()
            items.append({"type": "function_call", "call_id": block["id"], "name": block["name"],
                          "arguments": arguments})  # fmt: skip
        elif block["type"] == "tool_result":
            items.append({"type": "function_call_output", "call_id": block["tool_use_id"],
                          "output": block["content"]})  # fmt: skip
    return items


def codex_like_request(*, tools: int = 12, turns: int = 4) -> Json:
    """What Codex sends each turn (~60 KB here): the system prompt as a developer message, the
    whole history as items, flat function tools, a hosted tool, and fields only OpenAI uses."""
    request = claude_code_like_request(tools=tools, turns=turns)
    system = "\n".join(block["text"] for block in request["system"][1:])
    items = [{"type": "message", "role": "developer",
              "content": [{"type": "input_text", "text": system}]}]  # fmt: skip
    for message in request["messages"]:
        items += _responses_items(message)
    functions = [
        {"type": "function", "name": tool["name"], "description": tool["description"],
         "strict": False, "parameters": tool["input_schema"]}
        for tool in request["tools"]
    ]  # fmt: skip
    return {
        "model": "gpt-5-codex", "input": items, "tools": [*functions, {"type": "web_search"}],
        "tool_choice": "auto", "parallel_tool_calls": True, "reasoning": {"summary": "auto"},
        "store": False, "stream": False, "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "bench-session", "max_output_tokens": request["max_tokens"],
    }  # fmt: skip


def codex_large() -> Exchange:
    """The direct path gets the same conversation as chat, as the gateway forwards it."""
    chat = to_openai(claude_code_like_request(tools=12, turns=4))
    return Exchange(client=compact(codex_like_request()), openai=compact(chat))
