"""Streaming translation: OpenAI chat completion chunks in, Responses API events out; a whole
answer is the final `response` the same machine assembles.

`ResponsesStream` is a synchronous state machine driven like the Anthropic one: `start()`,
`feed_batch(chunks)` (or `feed`), then `finish()` or `fail(error)`. How chunks become blocks is
shared (parse/blocks.py); here each block is an output item: reasoning -> `reasoning` (its text
as `reasoning_text` content), text -> `message`, a tool call -> `function_call`, or a
`custom_tool_call` for a freeform tool, whose one string argument becomes the call's `input`.
Every item is announced (`response.output_item.added`), streamed, and repeated whole in
`response.output_item.done`, which is what Codex keeps; `response.completed` (or `.incomplete`
at the token limit) ends the answer with usage. A stream that ends without a finish reason, or
breaks, ends with `response.failed`: the client retries instead of keeping half an answer.
"""

from __future__ import annotations

from typing import Any

import msgspec

from mlx_gateway.errors import BackendUnavailable, GatewayError
from mlx_gateway.parse.blocks import BlockStream, Event
from mlx_gateway.parse.chat import ChatCompletion, Usage, completion_as_chunk
from mlx_gateway.parse.sse import encode_event
from mlx_gateway.parse.think import opened_by_prompt
from mlx_gateway.responses.request import CUSTOM_ARGUMENT

PING: Event = {"type": "keepalive"}  # the Responses API has no ping event: sent as a comment
_COMMENT_PING = b": ping\n\n"
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_ITEM_PREFIXES = {"thinking": "rs", "text": "msg"}
_json = msgspec.json.Encoder()
_any_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
_text_decoder = msgspec.json.Decoder(str)


def encode_events(events: list[Event]) -> bytes:
    """SSE frames, `event: <type>` and `data: <json>`; a keepalive as a comment line."""
    encode = _json.encode
    return b"".join(
        [
            _COMMENT_PING if event is PING else encode_event(event["type"], encode(event))
            for event in events
        ]
    )


class ResponsesStream(BlockStream):
    __slots__ = (
        "_created_at",
        "_custom_open",
        "_custom_tools",
        "_estimated_input",
        "_item",
        "_model",
        "_output",
        "_pieces",
        "_response_id",
        "_sequence",
        "response",
    )

    def __init__(
        self,
        *,
        model: str,
        response_id: str,
        created_at: int,
        estimated_input_tokens: int = 0,
        custom_tools: frozenset[str] = frozenset(),
        starts_in_reasoning: bool = False,
    ) -> None:
        super().__init__(starts_in_reasoning=starts_in_reasoning)
        self._model = model
        self._response_id = response_id
        self._created_at = created_at
        self._estimated_input = estimated_input_tokens
        self._custom_tools = custom_tools
        self._sequence = 0
        self._output: list[Event] = []  # the items done so far
        self._item: Event = {}  # the open item
        self._pieces: list[Any] = []  # its text, reasoning or arguments so far
        self._custom_open = False
        # The last state of the response: in progress, then how it ended.
        self.response: Event = self._snapshot("in_progress")

    # ---- driving ------------------------------------------------------------------------------

    @property
    def ping(self) -> Event:
        """The event that stands for a backend keepalive (parse/chunkreader.py)."""
        return PING

    def start(self) -> list[Event]:
        events: list[Event] = []
        self._emit(events, {"type": "response.created", "response": self.response})
        self._emit(events, {"type": "response.in_progress", "response": self.response})
        return events

    def finish(self) -> list[Event]:
        if self._finish_reason is None and not self.stopped:
            return self.fail(BackendUnavailable("the stream ended before the answer did"))
        events: list[Event] = []
        self._flush(events)
        reason = _INCOMPLETE.get(self._finish_reason or "")
        response = self._snapshot("incomplete" if reason else "completed")
        response["usage"] = self._usage_object()
        if reason:
            response["incomplete_details"] = {"reason": reason}
        self.response = response
        kind = "response.incomplete" if reason else "response.completed"
        self._emit(events, {"type": kind, "response": response})
        return events

    def fail(self, error: GatewayError) -> list[Event]:
        """After the 200 the only honest end is `response.failed`; nothing is made up."""
        response = self._snapshot("failed")
        response["error"] = {"code": error.openai_code or "server_error", "message": error.message}
        self.response = response
        events: list[Event] = []
        self._emit(events, {"type": "response.failed", "response": response})
        return events

    # ---- items --------------------------------------------------------------------------------

    def _on_open(self, kind: str, call_id: str | None, name: str, events: list[Event]) -> None:
        index = self._blocks
        suffix = f"{self._response_id[5:]}_{index}"
        if kind == "tool_use":
            item = self._call_item(suffix, call_id, name)
        elif kind == "thinking":
            item = {"type": "reasoning", "id": f"rs_{suffix}", "summary": []}
        else:
            item = {"type": "message", "id": f"msg_{suffix}", "status": "in_progress",
                    "role": "assistant", "content": []}  # fmt: skip
        self._item, self._pieces = item, []
        added = {"type": "response.output_item.added", "output_index": index, "item": dict(item)}
        self._emit(events, added)
        if kind == "text":
            part = {"type": "output_text", "text": "", "annotations": []}
            self._emit(events, {"type": "response.content_part.added", **self._at(), "part": part})

    def _call_item(self, suffix: str, call_id: str | None, name: str) -> Event:
        self._custom_open = name in self._custom_tools
        call_id = call_id or f"call_{suffix}"
        if self._custom_open:
            return {"type": "custom_tool_call", "id": f"ctc_{suffix}", "status": "in_progress",
                    "call_id": call_id, "name": name, "input": ""}  # fmt: skip
        return {"type": "function_call", "id": f"fc_{suffix}", "status": "in_progress",
                "call_id": call_id, "name": name, "arguments": ""}  # fmt: skip

    def _on_text(self, text: str | msgspec.Raw, events: list[Event]) -> None:
        self._pieces.append(text)
        self._emit(events, {"type": "response.output_text.delta", **self._at(), "delta": text,
                            "logprobs": []})  # fmt: skip

    def _on_thinking(self, text: str, events: list[Event]) -> None:
        self._pieces.append(text)
        self._emit(events, {"type": "response.reasoning_text.delta", **self._at(), "delta": text})

    def _on_arguments(self, fragment: str, events: list[Event]) -> None:
        self._pieces.append(fragment)
        if not self._custom_open:  # a custom call's input is known only once its JSON is whole
            where = {"item_id": self._item["id"], "output_index": self._blocks}
            self._emit(events, {"type": "response.function_call_arguments.delta", **where,
                                "delta": fragment})  # fmt: skip

    def _on_close(self, kind: str, arguments: str, events: list[Event]) -> None:
        item = self._item
        if kind == "tool_use":
            self._close_call(item, arguments, events)
        else:
            text = "".join([p if isinstance(p, str) else _text_decoder.decode(p)
                            for p in self._pieces])  # fmt: skip
            (self._close_message if kind == "text" else self._close_reasoning)(item, text, events)
        done = {"type": "response.output_item.done", "output_index": self._blocks, "item": item}
        self._emit(events, done)
        self._output.append(item)
        self._pieces = []

    def _close_message(self, item: Event, text: str, events: list[Event]) -> None:
        at = self._at()
        part = {"type": "output_text", "text": text, "annotations": []}
        self._emit(events, {"type": "response.output_text.done", **at, "text": text,
                            "logprobs": []})  # fmt: skip
        self._emit(events, {"type": "response.content_part.done", **at, "part": part})
        item["content"] = [part]
        item["status"] = "completed"

    def _close_reasoning(self, item: Event, text: str, events: list[Event]) -> None:
        """The text is also the item's summary: Codex shows a reasoning item by its summary
        (and sends the item back whole, where the request translation reads the content)."""
        self._emit(events, {"type": "response.reasoning_text.done", **self._at(), "text": text})
        item["summary"] = [{"type": "summary_text", "text": text}]
        item["content"] = [{"type": "reasoning_text", "text": text}]

    def _close_call(self, item: Event, arguments: str, events: list[Event]) -> None:
        where = {"item_id": item["id"], "output_index": self._blocks}
        item["status"] = "completed"
        if not self._custom_open:
            item["arguments"] = arguments or "{}"
            self._emit(events, {"type": "response.function_call_arguments.done", **where,
                                "arguments": item["arguments"]})  # fmt: skip
            return
        text = custom_input(arguments)
        item["input"] = text
        if text:
            self._emit(events, {"type": "response.custom_tool_call_input.delta", **where,
                                "delta": text})  # fmt: skip
        self._emit(events, {"type": "response.custom_tool_call_input.done", **where,
                            "input": text})  # fmt: skip

    # ---- the response -------------------------------------------------------------------------

    def _emit(self, events: list[Event], event: Event) -> None:
        event["sequence_number"] = self._sequence
        self._sequence += 1
        events.append(event)

    def _at(self) -> Event:
        return {"item_id": self._item["id"], "output_index": self._blocks, "content_index": 0}

    def _snapshot(self, status: str) -> Event:
        return {
            "id": self._response_id,
            "object": "response",
            "created_at": self._created_at,
            "status": status,
            "model": self._model,
            "output": list(self._output),
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "metadata": {},
            "parallel_tool_calls": True,
            "temperature": None,
            "tool_choice": "auto",
            "tools": [],
            "top_p": None,
            "usage": None,
        }

    def _usage_object(self) -> Event:
        return usage_object(self._usage, self._estimated_input, self._output_pieces)


def usage_object(usage: Usage | None, estimated_input: int, estimated_output: int) -> Event:
    """The Responses API counts cached prompt tokens inside `input_tokens` and reasoning tokens
    inside `output_tokens`, as chat does; the details come from servers that count them."""
    prompt, output, cached, reasoning = estimated_input, estimated_output, 0, 0
    if usage is not None:
        prompt, output = usage.prompt_tokens, usage.completion_tokens
        if (details := usage.prompt_tokens_details) is not None:
            cached = details.cached_tokens or 0
        if (output_details := usage.completion_tokens_details) is not None:
            reasoning = output_details.reasoning_tokens or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + output,
    }


def custom_input(arguments: str) -> str:
    """A freeform tool's input from the function call the model made: its string argument; the
    text itself when the model wrote it without the JSON around it."""
    try:
        parsed = _any_decoder.decode(arguments)
    except msgspec.DecodeError:
        return arguments
    if isinstance(parsed, dict):
        value = parsed.get(CUSTOM_ARGUMENT)
        strings = [v for v in parsed.values() if isinstance(v, str)]
        if isinstance(value, str):
            return value
        if len(strings) == 1:
            return strings[0]
    return parsed if isinstance(parsed, str) else arguments


def whole_response(completion: ChatCompletion, stream: ResponsesStream) -> Event:
    """A non-streamed answer: the response the stream machine assembles from it as one chunk."""
    chunk = completion_as_chunk(completion)
    for choice in chunk.choices:
        choice.finish_reason = choice.finish_reason or "stop"
    stream.start()
    stream.feed(chunk)
    stream.finish()
    return stream.response


def starts_in_reasoning(completion: ChatCompletion) -> bool:
    """A whole reply with a `</think>` and no `<think>` before it began inside reasoning."""
    choice = completion.choices[0] if completion.choices else None
    return choice is not None and opened_by_prompt(choice.message.content or "")
