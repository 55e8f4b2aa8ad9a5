"""A backend's event stream relayed byte for byte, in whole events, with its end judged.

The OpenAI endpoint sends the backend's stream on unchanged. What it must not do is make a cut
off stream look whole: an event cut in half would reach the client glued to whatever comes
next, and a `[DONE]` added after a stream that broke off would tell the client the answer is
complete. So bytes go on only up to the last event boundary of what has arrived, and the
stream counts as whole only when a finish reason or the end marker came.
"""

from __future__ import annotations

import re

__all__ = ["EventRelay"]

# A finish reason that is not null; a string value is all servers send.
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"')
_DONE = b"data: [DONE]"


class EventRelay:
    """`feed(piece) -> bytes to send`, then `failure()` at the end of the stream."""

    __slots__ = ("_held", "finished", "saw_done")

    def __init__(self) -> None:
        self._held = b""
        self.finished = False
        self.saw_done = False

    def feed(self, piece: bytes) -> bytes:
        data = self._held + piece if self._held else piece
        cut = _boundary(data)
        self._held = data[cut:]
        whole = data[:cut]
        if whole:
            if not self.finished and _FINISH.search(whole) is not None:
                self.finished = True
            if whole.rstrip().endswith(_DONE):
                self.saw_done = True
        return whole

    def failure(self) -> str | None:
        """Why the stream that ended cannot count as a whole answer, or None if it can."""
        rest = self._held.strip()
        if rest == _DONE:  # the end marker without its blank line
            self.saw_done = True
        elif rest:
            return "the backend stream ended inside an event"
        if self.finished or self.saw_done:
            return None
        return "the backend stream ended before the answer was complete"


def _boundary(data: bytes) -> int:
    """Where the last whole event of `data` ends (0 when none does)."""
    ends = [(data.rfind(b"\n\n"), 2)]
    if data.find(b"\r") >= 0:  # servers may end lines with CR LF (or CR alone)
        ends += [(data.rfind(b"\r\n\r\n"), 4), (data.rfind(b"\r\r"), 2)]
    return max((at + size for at, size in ends if at >= 0), default=0)
