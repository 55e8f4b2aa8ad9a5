"""Server-sent events: the incremental decoder for backend streams and the one encoder.

Decoding follows the WHATWG event-stream rules (lines end in CRLF, LF or CR; ``event``,
``data``, ``id`` and ``retry`` fields; one space after the colon is dropped; a blank line
dispatches), with two deliberate differences that serve a gateway:

* Comment lines are not discarded but returned at once as an ``SSEEvent`` whose ``comment``
  is set (``event``/``id`` None, ``data`` empty), because backends send keepalives such as
  ``: keepalive 3/10`` while they process a long prompt and the gateway turns them into pings.
* ``flush()`` at the end of the stream dispatches an event whose closing blank line never
  came (the spec drops it); some servers end the stream right after the last ``data:`` line.

Lines are split on bytes and decoded one line at a time: CR and LF never occur inside a
multi-byte UTF-8 sequence, so a character cut between two network reads is always whole
again once its line is. Bytes of an unfinished line are kept as a list of chunks and joined
once, when the line ends, so a long line arriving in many reads costs linear time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DONE",
    "DataRun",
    "SSEDecoder",
    "SSEEvent",
    "encode_comment",
    "encode_data",
    "encode_event",
]

DONE = b"data: [DONE]\n\n"
# How an event of one data line begins, and what lies between two such events.
DATA_FIELD = b"data: "
NEXT_DATA_EVENT = b"\n\n" + DATA_FIELD

_BOM = b"\xef\xbb\xbf"
# Bytes searched for a byte given as an int is a plain byte search; given as a one-byte bytes
# object it goes through the buffer protocol first and costs five times as much.
_LF, _CR, _NUL = 0x0A, 0x0D, 0x00


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event, or one comment line when ``comment`` is not None.

    A comment's text is the line after the colon, less one leading space, so
    ``: keepalive 3/10`` gives ``comment="keepalive 3/10"``.

    ``event`` is None when the stream named no type (the spec's default, "message");
    ``id`` is the stream's last event id at dispatch time, which per the spec carries
    over to later events until the stream sets another. Not frozen: one is built per
    backend chunk, and a frozen dataclass costs several times more to construct.
    """

    event: str | None
    data: str
    id: str | None = None
    comment: str | None = None


@dataclass(slots=True)
class DataRun:
    """Consecutive events that are one ``data: `` line each and nothing else, as the bytes
    they came in (``data: A\n\ndata: B\n\n``).

    A backend's stream is almost all such events, many to a read when it is fast; handed over
    whole they cost the decoder two byte counts instead of an event object each, and a JSON
    consumer can decode their payloads in one call (``joined(b",")`` inside brackets).
    """

    raw: bytes
    count: int
    id: str | None = None

    def joined(self, separator: bytes) -> bytes:
        # The run holds no line breaks but the ones between events (see feed_runs).
        return self.raw[6:-2].replace(NEXT_DATA_EVENT, separator)

    def events(self) -> list[SSEEvent]:
        payloads = self.raw[6:-2].split(NEXT_DATA_EVENT)
        return [SSEEvent(None, payload.decode("utf-8", "replace"), self.id) for payload in payloads]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class SSEDecoder:
    """Incremental event-stream decoder: ``feed(bytes) -> events``, ``flush()`` at the end.

    ``retry`` holds the last valid reconnection time (ms) the stream announced; it is
    not part of any event because the spec applies it to the connection, not an event.
    """

    __slots__ = ("_data", "_event", "_first", "_id", "_partial", "_skip_lf", "retry")

    def __init__(self) -> None:
        self._partial: list[bytes] = []
        self._skip_lf = False
        self._first = True
        self._event: bytes | None = None
        self._data: list[bytes] | None = None
        self._id: str | None = None
        self.retry: int | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Decode ``data``; return the events and comments completed by it."""
        if self._skip_lf and data:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        if _LF not in data and _CR not in data:
            if data:
                self._partial.append(data)
            return []
        buf = b"".join(self._partial) + data if self._partial else data
        self._partial = []
        if _CR in buf:
            # A CR ending this read may be the first half of a CRLF split across reads.
            self._skip_lf = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        # Nearly every event a backend sends is one `data: ` line and a blank line: split into
        # such blocks first, so each costs one check instead of two trips through the line loop.
        blocks = buf.split(b"\n\n")
        rest = blocks.pop()
        out: list[SSEEvent] = []
        for block in blocks:
            if (
                block[:6] == b"data: "
                and _LF not in block
                and self._data is None
                and self._event is None
                and not self._first
            ):
                out.append(SSEEvent(None, block[6:].decode("utf-8", "replace"), self._id))
            else:
                self._lines(block.split(b"\n"), out)
                self._dispatch(out)
        lines = rest.split(b"\n")
        partial = lines.pop()
        if partial:
            self._partial.append(partial)
        self._lines(lines, out)
        return out

    def _lines(self, lines: list[bytes], out: list[SSEEvent]) -> None:
        if self._first and lines:
            self._line(lines[0], out)  # may begin with a byte order mark
            lines = lines[1:]
        for line in lines:
            if not line:
                self._dispatch(out)
            elif line[:5] == b"data:":
                self._on_data(line[6:] if line[5:6] == b" " else line[5:])
            else:
                self._line(line, out)

    def feed_runs(self, data: bytes) -> list[SSEEvent | DataRun]:
        """``feed``, except that when ``data`` begins at an event boundary with events of one
        ``data: `` line each, those come back as one DataRun; anything after them as usual."""
        out: list[SSEEvent | DataRun] = []
        if not self._at_boundary():
            # A read that ends inside an event: finish that event as usual, then look for a run.
            end = data.find(b"\n\n") + 2
            if end == 1:
                end = len(data)
            out += self.feed(data[:end])
            data = data[end:]
        end = data.rfind(b"\n\n") + 2
        if end > 7 and data[:6] == DATA_FIELD and self._at_boundary():
            run = data[:end]
            count = run.count(NEXT_DATA_EVENT) + 1
            if run.count(_LF) == 2 * count and _CR not in run:
                out.append(DataRun(run, count, self._id))
                data = data[end:]
        out += self.feed(data)
        return out

    def at_event_start(self) -> bool:
        """Nothing is pending: the next bytes begin an event (or the stream)."""
        return not (self._partial or self._skip_lf) and self._data is None and self._event is None

    def skipped(self) -> None:
        """The caller read whole events from an event start itself: the stream has begun."""
        self._first = False

    def _at_boundary(self) -> bool:
        return (
            not (self._partial or self._skip_lf or self._first)
            and self._data is None
            and self._event is None
        )

    def flush(self) -> list[SSEEvent]:
        """End of stream: finish a last line without terminator and dispatch what is pending."""
        out: list[SSEEvent] = []
        if self._partial:
            line = b"".join(self._partial)
            self._partial = []
            self._line(line, out)
        self._line(b"", out)
        self._skip_lf = False
        return out

    def _line(self, line: bytes, out: list[SSEEvent]) -> None:
        if self._first:
            self._first = False
            line = line.removeprefix(_BOM)
        if not line:
            self._dispatch(out)
            return
        colon = line.find(b":")
        if colon == 0:
            out.append(SSEEvent(None, "", None, _text(_value(line[1:]))))
            return
        if colon < 0:
            name, value = line, b""
        else:
            name, value = line[:colon], _value(line[colon + 1 :])
        handler = _FIELDS.get(name)
        if handler is not None:
            handler(self, value)

    def _dispatch(self, out: list[SSEEvent]) -> None:
        data, event = self._data, self._event
        self._data = self._event = None
        if data is not None:
            name = _text(event) if event else None
            raw = data[0] if len(data) == 1 else b"\n".join(data)
            out.append(SSEEvent(name, raw.decode("utf-8", "replace"), self._id))

    def _on_event(self, value: bytes) -> None:
        self._event = value

    def _on_data(self, value: bytes) -> None:
        if self._data is None:
            self._data = [value]
        else:
            self._data.append(value)

    def _on_id(self, value: bytes) -> None:
        if _NUL not in value:
            self._id = _text(value)

    def _on_retry(self, value: bytes) -> None:
        if value.isdigit():
            self.retry = int(value)


def _value(raw: bytes) -> bytes:
    return raw[1:] if raw[:1] == b" " else raw


# Unknown field names are ignored, as the spec requires.
_FIELDS: dict[bytes, Callable[[SSEDecoder, bytes], None]] = {
    b"event": SSEDecoder._on_event,
    b"data": SSEDecoder._on_data,
    b"id": SSEDecoder._on_id,
    b"retry": SSEDecoder._on_retry,
}


def _data_lines(payload: bytes) -> bytes:
    # JSON from an encoder never holds a raw line break; anything else gets one field per line
    # so the receiver's decoder joins it back with LF.
    if _LF not in payload and _CR not in payload:
        return b"data: " + payload + b"\n"
    lines = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return b"".join(b"data: " + line + b"\n" for line in lines)


# The Anthropic stream's event names, each line encoded once.
_EVENT_LINES = {
    name: f"event: {name}\n".encode()
    for name in (
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    )
}


def encode_event(event_type: str, payload: bytes) -> bytes:
    """``event: <type>`` plus ``data: <payload>`` and the blank line that dispatches it."""
    line = _EVENT_LINES.get(event_type) or b"event: " + event_type.encode() + b"\n"
    if _LF not in payload and _CR not in payload:
        return b"".join((line, b"data: ", payload, b"\n\n"))  # one allocation, for every event
    return line + _data_lines(payload) + b"\n"


def encode_data(payload: bytes) -> bytes:
    """A nameless event (the OpenAI stream format): ``data: <payload>`` and a blank line."""
    return _data_lines(payload) + b"\n"


def encode_comment(text: str) -> bytes:
    """A comment block (``: <text>``), one comment line per line of ``text``."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "".join(f": {line}\n" for line in lines).encode() + b"\n"
