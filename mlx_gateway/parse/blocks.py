"""Chat completion chunks to an answer's blocks, in the order the model produced them: the part
of a stream machine that every wing shares.

A block is reasoning (`thinking`), text, or a tool call (`tool_use`). Reasoning arrives in three
ways (the `reasoning_content` or `reasoning` delta fields, or inline `<think>` tags) and always
becomes a thinking block; tool calls arrive as `tool_calls` deltas or, from servers without a
tool parser, as `<tool_call>` text, and always become tool_use blocks whose arguments are handed
on as they arrive (reasoning that comes while a text call is open follows the call). One block
is open at a time: a block is opened lazily and closed as soon as content of another kind (or
another tool call) arrives. Nothing per chunk depends on the length of the answer so far.

`BlockStream` does all of that and leaves what a block looks like on the wire to its subclass,
a wing's stream machine, through the `_on_*` hooks; each hook appends that wing's events.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from mlx_gateway.parse.chat import ChatCompletionChunk, ToolCall, Usage, lone_delta
from mlx_gateway.parse.partialjson import closing_suffix, is_json_object
from mlx_gateway.parse.stops import StopSequenceCutter
from mlx_gateway.parse.textcalls import (
    TextToolCallExtractor,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
)
from mlx_gateway.parse.textruns import TextRun
from mlx_gateway.parse.think import ThinkSplitter

log = logging.getLogger("mlx_gateway.stream")
prompts = logging.getLogger("mlx_gateway.prompts")  # see textlog.py

Event = dict[str, Any]
_NOT_SIMPLE = ("", "")
_json = msgspec.json.Encoder()


class BlockStream:
    """Feeds chunks into blocks; a subclass renders them (see the module docstring)."""

    __slots__ = (
        "_blocks",
        "_finish_reason",
        "_has_tool_use",
        "_held_reasoning",
        "_open_kind",
        "_open_tool_key",
        "_output_pieces",
        "_plain",
        "_seen_tool_keys",
        "_splitter",
        "_stop_cutter",
        "_stop_sequences",
        "_text_calls",
        "_tool_fragments",
        "_usage",
        "_vllm_stop",
    )

    def __init__(
        self, *, stop_sequences: list[str] | None = None, starts_in_reasoning: bool = False
    ) -> None:
        self._splitter = ThinkSplitter(starts_in_reasoning=starts_in_reasoning)
        self._text_calls = TextToolCallExtractor()
        self._stop_sequences = stop_sequences or []
        self._stop_cutter = StopSequenceCutter(self._stop_sequences)
        self._blocks = 0  # blocks closed so far: the index of the next (or open) one
        self._open_kind: str | None = None
        self._open_tool_key: object = None
        self._seen_tool_keys: set[object] = set()
        self._has_tool_use = False
        self._finish_reason: str | None = None
        self._vllm_stop: str | int | None = None
        self._usage: Usage | None = None
        self._output_pieces = 0
        self._tool_fragments: list[str] = []
        # Reasoning that arrives while a tool call written as text is open waits for its end.
        self._held_reasoning: list[str] = []
        # Whether plain text may skip the layers (see _passes_text); only they change it.
        self._plain = False

    # ---- what a subclass renders ------------------------------------------------------------

    def _on_open(self, kind: str, call_id: str | None, name: str, events: list[Event]) -> None:
        """A block starts; `call_id` and `name` only for tool_use (the id may be None)."""
        raise NotImplementedError

    def _on_text(self, text: str | msgspec.Raw, events: list[Event]) -> None:
        """`text` may still be JSON (a Raw string) when it came undecoded (textruns.py)."""
        raise NotImplementedError

    def _on_thinking(self, text: str, events: list[Event]) -> None:
        raise NotImplementedError

    def _on_arguments(self, fragment: str, events: list[Event]) -> None:
        raise NotImplementedError

    def _on_close(self, kind: str, arguments: str, events: list[Event]) -> None:
        """The open block ends; `arguments`: a tool call's whole arguments, else ""."""
        raise NotImplementedError

    # ---- driving ------------------------------------------------------------------------------

    def feed(self, chunk: ChatCompletionChunk) -> list[Event]:
        events: list[Event] = []
        if chunk.usage is not None:
            self._usage = chunk.usage
        if not chunk.choices:
            return events
        choice = chunk.choices[0]
        delta = choice.delta
        reasoning = delta.reasoning_content or delta.reasoning
        if reasoning:
            self._thinking(reasoning, events)
        content = delta.content
        if content and self._stop_cutter.matched is None:
            self._output_pieces += 1
            if self._plain and "<" not in content:
                self._text(content, events)  # what the layers below would do, at a tenth the cost
            else:
                self._content(self._stop_cutter.feed(content)[0], events)
                self._plain = self._passes_text()
        if delta.tool_calls:
            for position, call in enumerate(delta.tool_calls):
                self._tool_call_delta(position, call, events)
        if choice.finish_reason is not None:
            self._finish_reason = choice.finish_reason
            self._vllm_stop = choice.stop_reason
        return events

    def feed_batch(self, chunks: list[ChatCompletionChunk]) -> list[Event]:
        """The events of chunks that arrived together: what `feed` gives for each, except that a
        run of plain text or of reasoning leaves as one delta. Only what already arrived is
        joined, so nothing waits; a client of a fast backend then parses an event per network
        read instead of one per token, and the gateway encodes one."""
        events: list[Event] = []
        run: list[str] = []
        run_kind = ""
        for chunk in chunks:
            kind, text = self._simple_piece(chunk)
            if run and kind != run_kind:
                self._emit_run(run_kind, run, events)
                run = []
            if kind:
                run_kind = kind
                run.append(text)
            else:
                events += self.feed(chunk)
        if run:
            self._emit_run(run_kind, run, events)
        return events

    def feed_escaped_text(self, run: TextRun) -> list[Event] | None:
        """A run of plain text chunks whose texts are still JSON-escaped (textruns.py): what
        feed_batch gives for them, one delta carrying the texts as they came. None when plain
        text may not skip the layers now, or the texts hold a ``<``: the caller decodes them."""
        escaped = run.escaped
        if not self._plain or _LT in escaped or _escapes_lt(escaped):
            return None
        events: list[Event] = []
        if escaped:
            self._output_pieces += run.pieces
            self._text(msgspec.Raw(b'"' + escaped + b'"'), events)
        return events

    def _simple_piece(self, chunk: ChatCompletionChunk) -> tuple[str, str]:
        """("text", t) or ("thinking", t) for a chunk that carries only that, where `feed` would
        send it on unchanged; ("", "") for any other chunk."""
        delta = lone_delta(chunk)
        if delta is None:
            return _NOT_SIMPLE
        reasoning = delta.reasoning_content or delta.reasoning
        content = delta.content
        if reasoning:
            return _NOT_SIMPLE if content else ("thinking", reasoning)
        if content and self._plain and "<" not in content:  # _plain: no stop sequences either
            self._output_pieces += 1
            return "text", content
        return _NOT_SIMPLE

    def _emit_run(self, kind: str, run: list[str], events: list[Event]) -> None:
        text = "".join(run)  # a lone piece comes back as itself
        if kind == "thinking":
            self._thinking(text, events)
        else:
            self._text(text, events)

    @property
    def stopped(self) -> bool:
        """A stop sequence was seen: the caller should end the backend request and finish()."""
        return self._stop_cutter.matched is not None

    @property
    def complete(self) -> bool:
        """The backend said how the answer ended (or a stop sequence ended it here)."""
        return self._finish_reason is not None or self.stopped

    def _flush(self, events: list[Event]) -> None:
        """Everything the layers still hold, then the last block closed."""
        self._content(self._stop_cutter.finish(), events)
        for kind, text in self._splitter.finish():
            self._route(kind, text, events)
        for item in self._text_calls.finish():
            self._text_call_item(item, events)
        self._close(events)
        self._release_reasoning(events)
        self._close(events)

    # ---- content routing ----------------------------------------------------------------------

    def _passes_text(self) -> bool:
        """Whether text without ``<`` would come through every layer unchanged: no stop
        sequence to watch, and neither a ``<think>`` nor a ``<tool_call>`` tag in progress.
        Most chunks of most answers are such text, so they skip the layers."""
        return (
            not self._stop_cutter.watching
            and self._splitter.passes_text
            and self._text_calls.passes_text
        )

    def _content(self, text: str, events: list[Event]) -> None:
        if text:
            for kind, piece in self._splitter.feed(text):
                self._route(kind, piece, events)

    def _route(self, kind: str, text: str, events: list[Event]) -> None:
        if kind == "thinking":
            self._thinking(text, events)
            return
        for item in self._text_calls.feed(text):
            self._text_call_item(item, events)

    def _text_call_item(self, item: object, events: list[Event]) -> None:
        if isinstance(item, ToolCallStart):
            key = ("text", self._blocks)
            self._open_tool(key, None, item.name, events)
        elif isinstance(item, ToolCallArgs):
            if item.fragment:
                self._arguments(item.fragment, events)
        elif isinstance(item, ToolCallEnd):
            self._close(events)
            self._release_reasoning(events)
        else:
            self._text(item.text, events)  # type: ignore[attr-defined]

    def _thinking(self, text: str, events: list[Event]) -> None:
        if self._in_text_tool_call():
            # The call's remaining text is still to come into its tool_use block, which must
            # stay open: the reasoning follows the call as a block of its own.
            self._held_reasoning.append(text)
            return
        if self._open_kind != "thinking":
            self._open("thinking", None, "", events)
        self._on_thinking(text, events)

    def _in_text_tool_call(self) -> bool:
        key = self._open_tool_key
        return self._open_kind == "tool_use" and isinstance(key, tuple) and key[0] == "text"

    def _release_reasoning(self, events: list[Event]) -> None:
        if self._held_reasoning:
            held, self._held_reasoning = "".join(self._held_reasoning), []
            self._thinking(held, events)

    def _text(self, text: str | msgspec.Raw, events: list[Event]) -> None:
        if not text:
            return
        if self._open_kind != "text":
            self._open("text", None, "", events)
        self._on_text(text, events)

    def _tool_call_key(self, position: int, call: ToolCall) -> object:
        """Which call a delta belongs to: its `index` when the server sends one; else a new id
        or a new name starts a call, and a bare fragment continues the open one."""
        if call.index is not None:
            return ("index", call.index)
        if call.id:
            return ("id", call.id)
        named = call.function is not None and bool(call.function.name)
        if self._open_tool_key is not None and not named:
            return self._open_tool_key
        return ("position", self._blocks, position)

    def _tool_call_delta(self, position: int, call: ToolCall, events: list[Event]) -> None:
        key = self._tool_call_key(position, call)
        function = call.function
        fragment = function.arguments if function else None
        if key != self._open_tool_key:
            if key in self._seen_tool_keys:
                log.warning(
                    "dropping a fragment of tool call %s that arrived after a later one", key
                )
                return
            self._open_tool(key, call.id, function.name if function else None, events)
        if isinstance(fragment, dict):
            fragment = _json.encode(fragment).decode()
        if fragment:
            self._arguments(fragment, events)

    def _arguments(self, fragment: str, events: list[Event]) -> None:
        self._tool_fragments.append(fragment)
        self._on_arguments(fragment, events)

    def _open_tool(
        self, key: object, call_id: str | None, name: str | None, events: list[Event]
    ) -> None:
        self._has_tool_use = True
        self._seen_tool_keys.add(key)
        self._close(events)  # first, so that a made-up id carries this block's own index
        self._open("tool_use", call_id, name or "", events)
        self._open_tool_key = key

    # ---- blocks -------------------------------------------------------------------------------

    def _open(self, kind: str, call_id: str | None, name: str, events: list[Event]) -> None:
        self._close(events)
        self._on_open(kind, call_id, name, events)
        self._open_kind = kind

    def _close(self, events: list[Event]) -> None:
        kind = self._open_kind
        if kind is None:
            return
        arguments = self._close_arguments(events) if kind == "tool_use" else ""
        self._on_close(kind, arguments, events)
        self._blocks += 1
        self._open_kind = None
        self._open_tool_key = None

    def _close_arguments(self, events: list[Event]) -> str:
        """Arguments cut short (the backend's token limit) are closed into a JSON object, since
        what was already sent cannot be taken back and clients parse the joined fragments.
        Returns the call's whole arguments."""
        arguments = "".join(self._tool_fragments)
        self._tool_fragments = []
        if not arguments or is_json_object(arguments):
            return arguments
        suffix = closing_suffix(arguments)
        if suffix:
            self._on_arguments(suffix, events)
            return arguments + suffix
        if suffix is None:
            log.warning("tool call arguments are not JSON and cannot be closed")
            prompts.warning("the arguments that cannot be closed: %.200s", arguments)
        return arguments


_LT = 0x3C  # searched as an int: see parse/chunkreader.py


def _escapes_lt(escaped: bytes) -> bool:
    """Whether JSON text holds `<` written as an escape (Go servers such as Ollama do that)."""
    return escaped.find(b"\\u003c") >= 0 or escaped.find(b"\\u003C") >= 0
