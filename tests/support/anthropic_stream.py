"""The one checker for Anthropic message streams, shared by unit and integration tests.

* ``assert_well_formed(events)`` checks the event grammar the SDKs and Claude Code rely on:
  ``message_start`` first; ``ping`` anywhere after it; content blocks numbered 0, 1, 2... in
  order, one open at a time, each with deltas of its own kind (a thinking block ends with
  exactly one ``signature_delta``) and a matching ``content_block_stop``; then exactly one
  ``message_delta`` and ``message_stop`` last. A failed stream ends with one ``error`` event
  instead and has no ``message_delta``/``message_stop``. The ``input_json_delta`` fragments of
  every closed tool_use block must concatenate to one JSON object.
* ``accumulate(events)`` rebuilds the final message from a well-formed stream, as the SDK's
  ``get_final_message()`` does, so a stream can be compared with a non-streaming answer.
* ``parse_sse(raw)`` turns wire bytes into events; every ``event:`` line must equal its data's
  ``type``, and ``data: [DONE]`` (an OpenAI-ism) must not appear.

The SSE parser here is deliberately independent of ``mlx_gateway.sse``: a test of the gateway's
output should not read it with the gateway's own decoder.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any, NoReturn

__all__ = ["StreamFailed", "accumulate", "assert_well_formed", "parse_sse"]

Event = dict[str, Any]

STOP_REASONS = frozenset(
    {"end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal", "pause_turn"}
)
# Block kind -> the delta types it may carry.
DELTA_KINDS: dict[str, frozenset[str]] = {
    "text": frozenset({"text_delta"}),
    "thinking": frozenset({"thinking_delta", "signature_delta"}),
    "tool_use": frozenset({"input_json_delta"}),
}
# Delta type -> the string field that carries its payload.
DELTA_FIELDS = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "signature_delta": "signature",
    "input_json_delta": "partial_json",
}


class StreamFailed(Exception):
    """``accumulate`` on a stream that ended with an ``error`` event."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('type')}: {error.get('message')}")
        self.error = error


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Checker:
    """Walks the events once; every method checks one event against the state so far."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.at = 0
        self.next_index = 0
        self.open: Event | None = None  # the content_block of the open block
        self.signed = False  # the open thinking block got its signature_delta
        self.json_parts: list[str] = []
        self.message_delta_seen = False
        self.ended = False

    def fail(self, why: str) -> NoReturn:
        raise AssertionError(f"event {self.at} {self.events[self.at]!r}: {why}")

    def check(self, condition: bool, why: str) -> None:
        if not condition:
            self.fail(why)

    def run(self) -> None:
        assert self.events, "empty stream: expected message_start first"
        for at, event in enumerate(self.events):
            self.at = at
            self.check(isinstance(event, dict), "an event must be a JSON object")
            self.check(not self.ended, "nothing may follow message_stop or error")
            kind = event.get("type")
            if self.at == 0:
                self.check(kind == "message_start", "the first event must be message_start")
                self.message_start(event)
                continue
            handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
            if handler is None:
                self.fail(f"unknown or misplaced event type {kind!r}")
            else:
                handler(self, event)
        self.at = len(self.events) - 1
        self.check(self.ended, "the stream must end with message_stop or error")

    def message_start(self, event: Event) -> None:
        message = event.get("message")
        self.check(isinstance(message, dict), "message_start.message must be an object")
        assert isinstance(message, dict)
        id_ = message.get("id")
        self.check(isinstance(id_, str) and bool(id_), "message.id must be a non-empty string")
        self.check(message.get("type") == "message", "message.type must be 'message'")
        self.check(message.get("role") == "assistant", "message.role must be 'assistant'")
        model = message.get("model")
        self.check(isinstance(model, str) and bool(model), "message.model must be a string")
        self.check(message.get("content") == [], "message.content must be empty")
        self.check(message.get("stop_reason") is None, "message.stop_reason must be null")
        self.check(message.get("stop_sequence") is None, "message.stop_sequence must be null")
        usage = message.get("usage")
        self.check(isinstance(usage, dict), "message.usage must be an object")
        assert isinstance(usage, dict)
        self.check(_is_int(usage.get("input_tokens")), "usage.input_tokens must be an int")

    def ping(self, event: Event) -> None:
        pass

    def block_start(self, event: Event) -> None:
        self.check(self.open is None, "a content block is already open")
        self.check(not self.message_delta_seen, "content block after message_delta")
        self.check(
            event.get("index") == self.next_index, f"expected block index {self.next_index}"
        )
        block = event.get("content_block")
        self.check(isinstance(block, dict), "content_block must be an object")
        assert isinstance(block, dict)
        kind = block.get("type")
        self.check(kind in DELTA_KINDS, f"unexpected content block type {kind!r}")
        _START_CHECKS[str(kind)](self, block)
        self.open, self.signed, self.json_parts = block, False, []

    def start_text(self, block: Event) -> None:
        self.check(block.get("text") == "", "a text block starts with text ''")

    def start_thinking(self, block: Event) -> None:
        self.check(block.get("thinking") == "", "a thinking block starts with thinking ''")
        self.check(block.get("signature") == "", "a thinking block starts with signature ''")

    def start_tool_use(self, block: Event) -> None:
        id_, name = block.get("id"), block.get("name")
        self.check(isinstance(id_, str) and bool(id_), "tool_use.id must be a non-empty string")
        self.check(isinstance(name, str) and bool(name), "tool_use.name must be non-empty")
        self.check(block.get("input") == {}, "a tool_use block starts with input {}")

    def block_delta(self, event: Event) -> None:
        self.check(self.open is not None, "content_block_delta with no open block")
        assert self.open is not None
        self.check(event.get("index") == self.next_index, "delta index is not the open block")
        delta = event.get("delta")
        self.check(isinstance(delta, dict), "delta must be an object")
        assert isinstance(delta, dict)
        kind = delta.get("type")
        allowed = DELTA_KINDS[self.open["type"]]
        self.check(kind in allowed, f"{kind!r} in a {self.open['type']} block")
        field = DELTA_FIELDS[str(kind)]
        self.check(isinstance(delta.get(field), str), f"{kind}.{field} must be a string")
        self.check(not self.signed, "signature_delta must be the last delta of its block")
        if kind == "signature_delta":
            self.signed = True
        elif kind == "input_json_delta":
            self.json_parts.append(delta[field])

    def block_stop(self, event: Event) -> None:
        self.check(self.open is not None, "content_block_stop with no open block")
        assert self.open is not None
        self.check(event.get("index") == self.next_index, "stop index is not the open block")
        if self.open["type"] == "thinking":
            self.check(self.signed, "a thinking block needs one signature_delta before its stop")
        if self.open["type"] == "tool_use":
            self.check_tool_json()
        self.open = None
        self.next_index += 1

    def check_tool_json(self) -> None:
        text = "".join(self.json_parts)
        if not text:  # no fragments at all: the SDK leaves input {}
            return
        try:
            value = json.loads(text)
        except ValueError as exc:
            self.fail(f"tool input fragments {text!r} are not JSON: {exc}")
        self.check(isinstance(value, dict), f"tool input {text!r} is not a JSON object")

    def message_delta(self, event: Event) -> None:
        self.check(self.open is None, "message_delta while a content block is open")
        self.check(not self.message_delta_seen, "more than one message_delta")
        self.message_delta_seen = True
        delta, usage = event.get("delta"), event.get("usage")
        self.check(isinstance(delta, dict), "message_delta.delta must be an object")
        self.check(isinstance(usage, dict), "message_delta.usage must be an object")
        assert isinstance(delta, dict)
        assert isinstance(usage, dict)
        reason, sequence = delta.get("stop_reason"), delta.get("stop_sequence")
        self.check(reason in STOP_REASONS, f"stop_reason {reason!r} is not an Anthropic one")
        if reason == "stop_sequence":
            self.check(isinstance(sequence, str) and bool(sequence), "stop_sequence missing")
        else:
            self.check(sequence is None, "stop_sequence set but stop_reason is not stop_sequence")
        self.check(_is_int(usage.get("output_tokens")), "usage.output_tokens must be an int")
        for key, value in usage.items():
            if key.endswith("_tokens"):
                self.check(value is None or _is_int(value), f"usage.{key} must be an int")

    def message_stop(self, event: Event) -> None:
        self.check(self.message_delta_seen, "message_stop without a message_delta before it")
        self.ended = True

    def error(self, event: Event) -> None:
        self.check(not self.message_delta_seen, "error after message_delta")
        error = event.get("error")
        self.check(isinstance(error, dict), "error.error must be an object")
        assert isinstance(error, dict)
        self.check(isinstance(error.get("type"), str), "error.type must be a string")
        self.check(isinstance(error.get("message"), str), "error.message must be a string")
        self.ended = True


_HANDLERS = {
    "ping": _Checker.ping,
    "content_block_start": _Checker.block_start,
    "content_block_delta": _Checker.block_delta,
    "content_block_stop": _Checker.block_stop,
    "message_delta": _Checker.message_delta,
    "message_stop": _Checker.message_stop,
    "error": _Checker.error,
}
_START_CHECKS = {
    "text": _Checker.start_text,
    "thinking": _Checker.start_thinking,
    "tool_use": _Checker.start_tool_use,
}


def assert_well_formed(events: list[dict[str, Any]]) -> None:
    """Raise AssertionError, naming the event, unless ``events`` is a well-formed stream."""
    _Checker(events).run()


# ---- accumulate ---------------------------------------------------------------------------


def _apply_delta(block: Event, delta: Event, json_parts: list[str]) -> None:
    kind = delta["type"]
    if kind == "text_delta":
        block["text"] += delta["text"]
    elif kind == "thinking_delta":
        block["thinking"] += delta["thinking"]
    elif kind == "signature_delta":
        block["signature"] = delta["signature"]
    elif kind == "input_json_delta":
        json_parts.append(delta["partial_json"])


def accumulate(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The final message of a well-formed stream, like the SDK's ``get_final_message()``.

    Raises ``StreamFailed`` (carrying the error object) when the stream ended with an error.
    """
    assert_well_formed(events)
    message: Event = copy.deepcopy(events[0]["message"])
    json_parts: dict[int, list[str]] = {}
    for event in events[1:]:
        kind = event["type"]
        if kind == "content_block_start":
            message["content"].append(copy.deepcopy(event["content_block"]))
            json_parts[event["index"]] = []
        elif kind == "content_block_delta":
            block = message["content"][event["index"]]
            _apply_delta(block, event["delta"], json_parts[event["index"]])
        elif kind == "content_block_stop":
            block = message["content"][event["index"]]
            if block["type"] == "tool_use":
                text = "".join(json_parts[event["index"]])
                block["input"] = json.loads(text) if text else {}
        elif kind == "message_delta":
            message["stop_reason"] = event["delta"]["stop_reason"]
            message["stop_sequence"] = event["delta"].get("stop_sequence")
            usage = message.setdefault("usage", {})
            # Cumulative counts overwrite; absent or null ones leave message_start's value.
            usage.update({k: v for k, v in event["usage"].items() if v is not None})
        elif kind == "error":
            raise StreamFailed(event["error"])
    return message


# ---- wire bytes ---------------------------------------------------------------------------

_LINE_END = re.compile(r"\r\n|\r|\n")


def _parse_fields(lines: list[str]) -> tuple[str | None, list[str]]:
    name: str | None = None
    data: list[str] = []
    for line in lines:
        if line.startswith(":"):
            continue  # a comment (keepalive)
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return name, data


def _event_of(lines: list[str]) -> Event | None:
    name, data = _parse_fields(lines)
    if not data:
        assert name is None, f"event {name!r} without data: {lines!r}"
        return None
    text = "\n".join(data)
    assert text != "[DONE]", "data: [DONE] does not belong in an Anthropic stream"
    event = json.loads(text)
    assert isinstance(event, dict), f"data is not a JSON object: {text!r}"
    assert name is not None, f"no event: line for {text!r}"
    assert name == event.get("type"), f"event: {name!r} but data type is {event.get('type')!r}"
    return event


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """The events of an Anthropic SSE body; asserts the wire rules on the way."""
    text = raw.decode("utf-8").removeprefix("\ufeff")
    events: list[Event] = []
    lines: list[str] = []
    *complete, unterminated = _LINE_END.split(text)
    for line in complete:
        if line:
            lines.append(line)
            continue
        event = _event_of(lines)
        if event is not None:
            events.append(event)
        lines = []
    assert not unterminated, f"the stream ends in the middle of a line: {unterminated!r}"
    # Leftover field lines mean the last event never got its closing blank line: a client
    # would drop it.
    assert not [line for line in lines if not line.startswith(":")], (
        f"the stream ends inside an unterminated event: {lines!r}"
    )
    return events
