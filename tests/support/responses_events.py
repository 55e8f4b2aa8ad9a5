"""The OpenAI Responses API stream, built from a list of output items, for scripted model servers.

A model answer is a tuple of output items (`Message`, `Reasoning`, `FunctionCall`,
`CustomToolCall`); `stream_events()` renders it as the event sequence the Responses API streams and
Codex parses: `response.created`, `response.in_progress`, then for each item
`response.output_item.added`, its deltas and `.done` events, `response.output_item.done` with the
whole item, and a terminal `response.completed` (with usage), `response.incomplete` or
`response.failed`. Every event carries `type` and a `sequence_number` counting from 0, and goes
out as an SSE frame with an `event:` line naming the type, as OpenAI sends it.

Codex builds its items from `response.output_item.done` alone and uses the deltas only to show
progress, so the deltas here are cut into small pieces on purpose: a consumer that mixed them up
would show a different text than the item it stores. Pure functions only; the servers that send
this live elsewhere (`tests.support.responses_server`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

__all__ = [
    "CustomToolCall",
    "Failure",
    "FunctionCall",
    "Message",
    "OutputItem",
    "Reasoning",
    "ResponseSpec",
    "encode_event",
    "parse_sse_events",
    "pieces",
    "stream_events",
    "usage",
]

PIECE = 5  # characters per delta: small enough to split words, JSON tokens and patch lines


@dataclass(frozen=True)
class Message:
    """An assistant message with one `output_text` part."""

    text: str


@dataclass(frozen=True)
class Reasoning:
    """Raw reasoning, streamed as `response.reasoning_text.delta` (what open models produce)."""

    text: str


@dataclass(frozen=True)
class FunctionCall:
    """A call of a JSON-schema (`type: function`) tool; `arguments` is sent as a JSON string."""

    name: str
    arguments: dict[str, Any]
    call_id: str


@dataclass(frozen=True)
class CustomToolCall:
    """A call of a freeform (`type: custom`) tool such as `apply_patch`: `input` is raw text."""

    name: str
    input: str
    call_id: str


OutputItem: TypeAlias = Message | Reasoning | FunctionCall | CustomToolCall


@dataclass(frozen=True)
class Failure:
    """The `error` of a `response.failed` event, e.g. code `context_length_exceeded`."""

    code: str
    message: str


@dataclass(frozen=True)
class ResponseSpec:
    """One streamed response: its items and how it ends.

    `incomplete_reason` ends it with `response.incomplete` (e.g. `max_output_tokens`) instead of
    `response.completed`; `failure` ends it with `response.failed`. Item ids derive from
    `response_id`, unique per spec because Codex sends earlier items back with their ids.
    """

    items: tuple[OutputItem, ...] = ()
    incomplete_reason: str | None = None
    failure: Failure | None = None
    response_id: str = field(default_factory=lambda: f"resp_{uuid.uuid4().hex[:16]}")
    model: str = "scripted-model"
    usage: dict[str, Any] = field(default_factory=lambda: usage(120, 30))


def usage(
    input_tokens: int, output_tokens: int, cached: int = 0, reasoning: int = 0
) -> dict[str, Any]:
    """A Responses `usage` object with the detail fields Codex reads."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def pieces(text: str, size: int = PIECE) -> list[str]:
    return [text[at : at + size] for at in range(0, len(text), size)]


# --- items -----------------------------------------------------------------------------------


def item_id(item: OutputItem, index: int, response_id: str) -> str:
    prefix = {Message: "msg", Reasoning: "rs", FunctionCall: "fc", CustomToolCall: "ctc"}
    return f"{prefix[type(item)]}_{response_id}_{index}"


def finished_item(item: OutputItem, ident: str) -> dict[str, Any]:
    """The whole item, as `response.output_item.done` and the final `output` carry it."""
    if isinstance(item, Message):
        part = {"type": "output_text", "text": item.text, "annotations": []}
        return _message(ident, "completed", [part])
    if isinstance(item, Reasoning):
        content = [{"type": "reasoning_text", "text": item.text}]
        return {"type": "reasoning", "id": ident, "summary": [], "content": content}
    if isinstance(item, FunctionCall):
        arguments = json.dumps(item.arguments)
        return _call(ident, item.call_id, item.name, "completed", arguments=arguments)
    return _call(ident, item.call_id, item.name, "completed", input=item.input)


def opened_item(item: OutputItem, ident: str) -> dict[str, Any]:
    """The item as `response.output_item.added` announces it: no content yet."""
    if isinstance(item, Message):
        return _message(ident, "in_progress", [])
    if isinstance(item, Reasoning):
        return {"type": "reasoning", "id": ident, "summary": []}
    if isinstance(item, FunctionCall):
        return _call(ident, item.call_id, item.name, "in_progress", arguments="")
    return _call(ident, item.call_id, item.name, "in_progress", input="")


def _message(ident: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "message", "id": ident, "status": status, "role": "assistant", "content": content,
    }


def _call(ident: str, call_id: str, name: str, status: str, **payload: str) -> dict[str, Any]:
    kind = "function_call" if "arguments" in payload else "custom_tool_call"
    fields = {"id": ident, "status": status, "call_id": call_id, "name": name}
    return {"type": kind, **fields, **payload}


# --- events ----------------------------------------------------------------------------------


def _item_events(item: OutputItem, ident: str, index: int) -> Iterator[dict[str, Any]]:
    """The events between `output_item.added` and `output_item.done` for one item."""
    where: dict[str, Any] = {"item_id": ident, "output_index": index}
    if isinstance(item, Message):
        yield from _text_events(item.text, where)
    elif isinstance(item, Reasoning):
        at = {**where, "content_index": 0}
        for piece in pieces(item.text):
            yield {"type": "response.reasoning_text.delta", **at, "delta": piece}
        yield {"type": "response.reasoning_text.done", **at, "text": item.text}
    elif isinstance(item, FunctionCall):
        arguments = json.dumps(item.arguments)
        for piece in pieces(arguments):
            yield {"type": "response.function_call_arguments.delta", **where, "delta": piece}
        yield {"type": "response.function_call_arguments.done", **where, "arguments": arguments}
    else:
        for piece in pieces(item.input):
            yield {"type": "response.custom_tool_call_input.delta", **where, "delta": piece}
        yield {"type": "response.custom_tool_call_input.done", **where, "input": item.input}


def _text_events(text: str, where: dict[str, Any]) -> Iterator[dict[str, Any]]:
    part = {"type": "output_text", "text": "", "annotations": []}
    at = {**where, "content_index": 0}
    yield {"type": "response.content_part.added", **at, "part": part}
    for piece in pieces(text):
        yield {"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []}
    yield {"type": "response.output_text.done", **at, "text": text, "logprobs": []}
    yield {"type": "response.content_part.done", **at, "part": {**part, "text": text}}


def _response(spec: ResponseSpec, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": spec.response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": spec.model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "usage": None,
    }


def _terminal(spec: ResponseSpec, output: list[dict[str, Any]]) -> dict[str, Any]:
    if spec.failure is not None:
        failed = _response(spec, "failed", output)
        failed["error"] = {"code": spec.failure.code, "message": spec.failure.message}
        return {"type": "response.failed", "response": failed}
    if spec.incomplete_reason is not None:
        cut = _response(spec, "incomplete", output)
        cut.update(incomplete_details={"reason": spec.incomplete_reason}, usage=spec.usage)
        return {"type": "response.incomplete", "response": cut}
    completed = {**_response(spec, "completed", output), "usage": spec.usage}
    return {"type": "response.completed", "response": completed}


def stream_events(spec: ResponseSpec) -> list[dict[str, Any]]:
    """Every event of the response, in order, each with its `sequence_number`."""
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": _response(spec, "in_progress", [])},
        {"type": "response.in_progress", "response": _response(spec, "in_progress", [])},
    ]
    output: list[dict[str, Any]] = []
    for index, item in enumerate(spec.items):
        ident = item_id(item, index, spec.response_id)
        added = opened_item(item, ident)
        events.append({"type": "response.output_item.added", "output_index": index, "item": added})
        events.extend(_item_events(item, ident, index))
        output.append(finished_item(item, ident))
        done = output[-1]
        events.append({"type": "response.output_item.done", "output_index": index, "item": done})
    events.append(_terminal(spec, output))
    return [{**event, "sequence_number": number} for number, event in enumerate(events)]


def encode_event(event: dict[str, Any]) -> bytes:
    """One SSE frame: `event: <type>` and `data: <json>`, as the Responses API sends them."""
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def parse_sse_events(body: bytes) -> list[dict[str, Any]]:
    """The JSON `data` of each frame of an SSE body (for checking a Responses stream)."""
    events = []
    for frame in body.decode().replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].lstrip() for line in frame.split("\n") if line.startswith("data:")]
        if data and data != ["[DONE]"]:
            events.append(json.loads("\n".join(data)))
    return events
