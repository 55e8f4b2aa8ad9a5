"""Runs of plain text chunks, read without decoding them.

A backend wraps every token of an answer in the same envelope; only the text changes:

    data: {"id":"c1","object":"chat.completion.chunk",...,"delta":{"content":"Hel"},...}\n\n

Once one such chunk has been decoded and found to be plain text, its bytes before and after the
text are the stream's template. The leading events of a read that have that template are cut
apart at the event boundaries and sliced at C speed, checked in one comparison against the
events rebuilt from their texts, and the texts, still JSON-escaped, go out in one Anthropic
delta as they came: no JSON is decoded or encoded for them. Each text is checked to be a valid
JSON string body (and the whole UTF-8); anything else (another envelope, a finish reason,
usage, a tool call, a text that would need its quotes checked) takes the decoding path, which
stays the reference: both give the same events.
"""

from __future__ import annotations

import re
from operator import itemgetter

import msgspec

from mlx_gateway.parse.sse import DATA_FIELD, NEXT_DATA_EVENT

# The one place a plain text chunk carries its text; a key only, never inside a JSON string
# (there every quote is escaped).
_CONTENT_KEY = re.compile(rb'"content"\s*:\s*"')
# A JSON string's body: no bare quote, backslash or control character; only valid escapes.
# Written so that the engine loops once per escape, not once per character.
_PLAIN = rb'[^"\\\x00-\x1f]*'
_BODY = _PLAIN + rb'(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})' + _PLAIN + b")*"
_BODY_THEN_QUOTE = re.compile(_BODY + b'"')
# Bodies joined by NUL, which no body may contain, so that each is checked on its own.
_BODIES = re.compile(_BODY + b"(?:\x00" + _BODY + b")*")
_str_decoder = msgspec.json.Decoder(str)
_EVENT_END = b"\n\n"
_CONTROL = bytes(range(32))
_QUOTE, _BACKSLASH = 0x22, 0x5C  # searched as ints: see app._LF


class TextRun:
    """What the leading template events of some event-stream bytes carry, and the bytes after
    them."""

    __slots__ = ("escaped", "pieces", "rest")

    def __init__(self, escaped: bytes, pieces: int, rest: bytes) -> None:
        self.escaped = escaped  # the texts joined, as a JSON string body
        self.pieces = pieces  # how many of them were not empty
        self.rest = rest  # the bytes after them: other events, or the start of one


class TextTemplate:
    """The envelope of a stream's plain text chunks (see the module docstring)."""

    __slots__ = ("_after", "_before", "_body", "_frame", "_head", "_joiner", "_tail")

    def __init__(self, before: bytes, after: bytes) -> None:
        self._before = before
        self._after = after
        self._frame = len(before) + len(after)
        # A C-level slice for map(): a list comprehension costs twice as much per event.
        self._body = itemgetter(slice(len(before), -len(after)))
        self._head = DATA_FIELD + before
        self._tail = after + _EVENT_END
        self._joiner = self._tail + self._head  # between two bodies

    @classmethod
    def learn(cls, data: bytes, text: str) -> TextTemplate | None:
        """The template of one event's data, if its only `"content"` key holds `text`."""
        keys = list(_CONTENT_KEY.finditer(data))
        if len(keys) != 1:
            return None
        start = keys[0].end()
        body = _BODY_THEN_QUOTE.match(data, start)
        if body is None:
            return None
        end = body.end() - 1
        try:
            if _str_decoder.decode(data[start - 1 : end + 1]) != text:
                return None
        except msgspec.DecodeError:
            return None
        return cls(data[:start], data[end:])

    def split(self, data: bytes) -> TextRun | None:
        """The leading events of `data` (event-stream bytes from the start of an event) that fit
        the template, when only events after them do not (a finish, usage, the end marker, an
        event the read cut off); None otherwise."""
        if not data.startswith(self._head):
            return None
        # Cut at event boundaries, not at the template's joiner: CPython redoes a long
        # separator's search set-up for every piece, which cost more than the split itself.
        payloads = data.split(NEXT_DATA_EVENT)
        payloads[0] = payloads[0][len(DATA_FIELD) :]
        taken = len(payloads)
        if payloads[-1].endswith(_EVENT_END):
            payloads[-1] = payloads[-1][: -len(_EVENT_END)]
        else:
            taken -= 1  # the read ends inside the last event
        while taken and not self._fits(payloads[taken - 1]):  # the end: finish, usage...
            taken -= 1
        if not taken:
            return None
        del payloads[taken:]
        bodies = list(map(self._body, payloads))
        # The events rebuilt from the bodies must be the bytes that came: compared in place, in
        # two calls, instead of a check per event.
        joined = self._joiner.join(bodies)
        size = len(self._head) + len(joined)
        if not (data.startswith(joined, len(self._head)) and data.startswith(self._tail, size)):
            return None
        escaped = b"".join(bodies)
        if not _plain_bodies(escaped) and not _BODIES.fullmatch(b"\x00".join(bodies)):
            return None
        if not escaped.isascii():
            try:
                escaped.decode()
            except UnicodeDecodeError:
                return None
        return TextRun(escaped, taken - bodies.count(b""), data[size + len(self._tail) :])

    def _fits(self, payload: bytes) -> bool:
        return (
            len(payload) >= self._frame
            and payload.startswith(self._before)
            and payload.endswith(self._after)
        )


def _plain_bodies(escaped: bytes) -> bool:
    """Bodies without quotes, backslashes or control characters are valid, whatever their
    boundaries: checked at C speed before the exact, slower pattern."""
    return (
        _QUOTE not in escaped
        and _BACKSLASH not in escaped
        and len(escaped.translate(None, _CONTROL)) == len(escaped)
    )
