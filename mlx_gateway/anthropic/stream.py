"""Streaming translation: OpenAI chat completion chunks in, Anthropic stream events out.

`StreamTranslator` is a synchronous state machine; all per-request state lives on the instance.
The async edge only drives it: `start()` once, `feed(chunk)` per backend chunk (or
`feed_batch(chunks)` for the chunks of one network read), then `finish()` at the end of the
backend stream or `fail(error)` when it broke. Every method returns the events to send, in
order, as plain dicts whose `type` is also the SSE event name.

How chunks become blocks (reasoning, text, tool calls, one open at a time, in the order the model
produced them) is shared with the other wings in parse/blocks.py; this module renders the blocks
as Anthropic's content_block events, with a signature on each thinking block.
"""

from __future__ import annotations

import msgspec

from mlx_gateway.anthropic.outcome import (
    anthropic_stop_reason,
    start_usage,
    thinking_signature,
    usage_to_anthropic,
)
from mlx_gateway.errors import GatewayError
from mlx_gateway.parse.blocks import BlockStream, Event

__all__ = ["PING", "Event", "StreamTranslator"]

PING: Event = {"type": "ping"}
_EMPTY_BLOCKS: dict[str, Event] = {
    "thinking": {"type": "thinking", "thinking": "", "signature": ""},
    "text": {"type": "text", "text": ""},
}


class StreamTranslator(BlockStream):
    __slots__ = ("_estimated_input", "_message_id", "_model")

    def __init__(
        self,
        *,
        model: str,
        message_id: str,
        estimated_input_tokens: int,
        stop_sequences: list[str] | None = None,
        starts_in_reasoning: bool = False,
    ) -> None:
        super().__init__(stop_sequences=stop_sequences, starts_in_reasoning=starts_in_reasoning)
        self._model = model
        self._message_id = message_id
        self._estimated_input = estimated_input_tokens

    # ---- driving ------------------------------------------------------------------------------

    @property
    def ping(self) -> Event:
        """The event that stands for a backend keepalive (parse/chunkreader.py)."""
        return PING

    def start(self) -> list[Event]:
        message: Event = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage(self._estimated_input),
        }
        return [{"type": "message_start", "message": message}, PING]

    def finish(self) -> list[Event]:
        events: list[Event] = []
        self._flush(events)
        stop_reason, stop_sequence = anthropic_stop_reason(
            self._finish_reason,
            tool_use=self._has_tool_use,
            matched=self._stop_cutter.matched,
            stop_sequences=self._stop_sequences,
            backend_stop=self._vllm_stop,
        )
        usage = usage_to_anthropic(self._usage, self._estimated_input, self._output_pieces)
        delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        events.append({"type": "message_delta", "delta": delta, "usage": usage})
        events.append({"type": "message_stop"})
        return events

    def fail(self, error: GatewayError) -> list[Event]:
        """After the 200 the only honest signal is an error event; no stop_reason is made up."""
        body = {"type": error.anthropic_type, "message": error.message}
        if error.status < 500:
            body["type"] = "api_error"
        return [{"type": "error", "error": body}]

    # ---- blocks as Anthropic events -----------------------------------------------------------

    def _on_open(self, kind: str, call_id: str | None, name: str, events: list[Event]) -> None:
        if kind == "tool_use":
            tool_id = call_id or f"toolu_{self._message_id[4:]}_{self._blocks}"
            block: Event = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
        else:
            block = dict(_EMPTY_BLOCKS[kind])
        events.append(
            {"type": "content_block_start", "index": self._blocks, "content_block": block}
        )

    def _on_text(self, text: str | msgspec.Raw, events: list[Event]) -> None:
        events.append(self._delta({"type": "text_delta", "text": text}))

    def _on_thinking(self, text: str, events: list[Event]) -> None:
        events.append(self._delta({"type": "thinking_delta", "thinking": text}))

    def _on_arguments(self, fragment: str, events: list[Event]) -> None:
        events.append(self._delta({"type": "input_json_delta", "partial_json": fragment}))

    def _on_close(self, kind: str, _arguments: str, events: list[Event]) -> None:
        if kind == "thinking":
            signature = thinking_signature(self._message_id)
            events.append(self._delta({"type": "signature_delta", "signature": signature}))
        events.append({"type": "content_block_stop", "index": self._blocks})

    def _delta(self, delta: Event) -> Event:
        return {"type": "content_block_delta", "index": self._blocks, "delta": delta}
