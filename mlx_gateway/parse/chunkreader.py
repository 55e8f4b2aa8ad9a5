"""One backend stream's bytes to a wing's stream events, read by read.

The reader serves every wing's stream machine (`ChunkTranslator`): it decodes the server-sent
events of a read, hands the chunks of one read over together, turns a keepalive comment into the
wing's ping in its place, and sends plain text that fits the stream's template (textruns.py)
without decoding it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from mlx_gateway.parse.chat import ChatCompletionChunk, decode_chunk, decode_chunk_array, plain_text
from mlx_gateway.parse.sse import DATA_FIELD, NEXT_DATA_EVENT, DataRun, SSEDecoder, SSEEvent
from mlx_gateway.parse.textruns import TextRun, TextTemplate

# Bytes searched for as ints: `b"x" in data` first tries the needle as an int, and the TypeError
# it raises and clears costs more than the search.
_LF, _CR = 0x0A, 0x0D
_DONE_EVENT = DATA_FIELD + b"[DONE]\n\n"

E = TypeVar("E")


class ChunkTranslator(Protocol[E]):
    """What a wing's stream machine offers the reader."""

    @property
    def ping(self) -> E: ...

    def feed_batch(self, chunks: list[ChatCompletionChunk]) -> list[E]: ...

    def feed_escaped_text(self, run: TextRun) -> list[E] | None: ...


class ChunkReader(Generic[E]):
    """One backend stream's bytes to the translator's events, read by read. Chunks that came
    in one read are decoded and translated together (see feed_batch); a keepalive comment
    among them becomes a ping in its place; leading events of plain text that fit the stream's
    template are not decoded at all (textruns.py), nor even seen by the event decoder when a
    read begins with them."""

    __slots__ = ("_decoder", "_learn_from", "_template", "_translator", "saw_done")

    def __init__(self, translator: ChunkTranslator[E], learn_from: int = 8) -> None:
        """`learn_from`: a template is learned only from a read that begins at least this many
        events: learning costs about what decoding eight chunks does."""
        self._translator = translator
        self._learn_from = learn_from
        self._decoder = SSEDecoder()
        self._template: TextTemplate | None = None
        # The stream's end marker came: with a finish reason, what tells a whole answer from
        # one cut off (the marker is read where it is dropped, never searched for).
        self.saw_done = False

    def feed(self, piece: bytes) -> list[E]:
        if self._template is None and piece.find(NEXT_DATA_EVENT) < 0:
            # Nothing to learn a template from: one event a read, as when tokens come slowly.
            return self._translate(self._decoder.feed_runs(piece), False)
        if not self._decoder.at_event_start():
            return self._translate(self._decoder.feed_runs(piece), True)
        events: list[E] = []
        piece = self._text_run(piece, events)
        if piece:  # the template has been tried on it already
            events += self._translate(self._decoder.feed_runs(piece), False)
        return events

    def flush(self) -> list[E]:
        return self._translate(self._decoder.flush(), False)

    def _translate(self, items: Sequence[SSEEvent | DataRun], templates: bool) -> list[E]:
        events: list[E] = []
        chunks: list[ChatCompletionChunk] = []
        for item in items:
            if isinstance(item, DataRun):
                if item.raw.endswith(_DONE_EVENT):
                    self.saw_done = True
                if not templates:
                    chunks += run_chunks(item)
                    continue
                self._feed_chunks(chunks, events)
                rest = self._text_run(item.raw, events)
                if rest is item.raw:
                    chunks += run_chunks(item)
                elif rest:
                    chunks += run_chunks(DataRun(rest, rest.count(NEXT_DATA_EVENT) + 1, item.id))
            elif item.comment is not None:
                self._feed_chunks(chunks, events)
                events.append(self._translator.ping)
            elif is_chunk_data(item.data):
                chunks.append(decode_chunk(item.data))
            elif item.data == "[DONE]":
                self.saw_done = True
        self._feed_chunks(chunks, events)
        return events

    def _feed_chunks(self, chunks: list[ChatCompletionChunk], events: list[E]) -> None:
        if chunks:
            events += self._translator.feed_batch(chunks)
            chunks.clear()

    def _text_run(self, data: bytes, events: list[E]) -> bytes:
        """Sends on the leading events of `data` (bytes from the start of an event) that fit the
        template, learning it first when there is none yet and `data` is long enough to repay
        that; returns the bytes left for the decoder."""
        if not data.startswith(DATA_FIELD):
            return data
        if self._template is None:
            if not _starts_events(data, self._learn_from):
                return data
            data = self._learn(data, events)
        template = self._template
        if template is None:
            return data
        text = template.split(data)
        if text is None:
            return data
        translated = self._translator.feed_escaped_text(text)
        if translated is None:
            return data
        self._decoder.skipped()
        events += translated
        return text.rest

    def _learn(self, data: bytes, events: list[E]) -> bytes:
        """Decodes the leading events up to the first that is plain text (a role chunk often
        comes first) and learns the template from that one; returns the bytes after them."""
        for _ in range(2):
            end = data.find(b"\n\n")
            payload = data[6:end]
            if end < 0 or _LF in payload or _CR in payload or payload in (b"", b"[DONE]"):
                return data
            chunk = decode_chunk(payload)
            text = plain_text(chunk)  # before the translator, which may take the chunk apart
            self._decoder.skipped()
            events += self._translator.feed_batch([chunk])
            data = data[end + 2 :]
            if text:
                self._template = TextTemplate.learn(payload, text)
                break
            if not data.startswith(DATA_FIELD):
                break
        return data


def _starts_events(data: bytes, count: int) -> bool:
    """Whether at least `count` events begin in `data`, which begins with one."""
    at = 0
    for _ in range(count - 1):
        at = data.find(NEXT_DATA_EVENT, at) + 1
        if not at:
            return False
    return True


def run_chunks(run: DataRun) -> list[ChatCompletionChunk]:
    """A run's chunks decoded as one JSON array; one by one only when that fails, so that the
    error names the chunk that is not one."""
    array, count = run.joined(b","), run.count
    if array == b"[DONE]" or array.endswith(b",[DONE]"):  # the end marker after the last chunk
        array, count = array[:-7], count - 1
    chunks = decode_chunk_array(b"[" + array + b"]", count) if count else []
    if chunks is None:
        chunks = [decode_chunk(e.data) for e in run.events() if is_chunk_data(e.data)]
    return chunks


def is_chunk_data(data: str) -> bool:
    """Not empty and not the stream's end marker."""
    return bool(data) and data != "[DONE]"
