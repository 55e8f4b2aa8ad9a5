"""The JSON scanner behind streamed tool-call arguments written as text (textcalls.py).

``ArgsScanner`` follows an arguments object as it streams in, from just after its ``{``. It knows
where the object ends (what follows it is dropped), treats the closing tag inside a JSON string
as content, escapes raw control characters inside strings and turns Python's
``True``/``False``/``None`` into JSON. It releases text only up to the last point where the prefix
can still be closed into valid JSON (inside a string value, after a complete value or an opening
bracket), so a key, a colon, a comma or an unfinished number waits for the next feed. If the
arguments are cut short or the JSON breaks, ``complete()`` closes the fragments from that last
point: their concatenation is always one JSON object. JSON that breaks before anything but ``{``
went out (single quotes: a Python dict) is kept and repaired whole instead.

``load_lenient`` and ``object_json`` read whole values, with ``json_repair`` as the fallback.
"""

from __future__ import annotations

import json
import re

import json_repair

__all__ = ["ArgsScanner", "held_start", "load_lenient", "object_json"]


def held_start(buf: str, tag: str) -> int:
    """Where a suffix that may still grow into ``tag`` begins (``len(buf)`` if none)."""
    # The tag holds "<" only at its start, so only the last "<" can begin one.
    lt = buf.rfind("<", max(0, len(buf) - len(tag) + 1))
    return lt if lt >= 0 and tag.startswith(buf[lt:]) else len(buf)


_WS_RUN = re.compile(r"[ \t\n\r]+")
_STRING_STOP = re.compile(r'["\\\x00-\x1f]')
_SCALAR_RUN = re.compile(r'[^ \t\n\r,:\[\]{}"<]*')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_HEX_PREFIX = re.compile(r"[0-9a-fA-F]{0,3}")
_LITERALS = {"true": "true", "false": "false", "null": "null"}
_LITERALS |= {"True": "true", "False": "false", "None": "null"}
_SIMPLE_ESCAPES = frozenset('"\\/bfnrt')
_CONTROL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}

# What the scanner expects next; after the ones in _SAFE, closing the open strings and
# brackets yields valid JSON.
_VALUE, _VALUE_OR_END, _KEY, _KEY_OR_END, _COLON, _AFTER, _DONE = range(7)
_SAFE = frozenset({_VALUE_OR_END, _KEY_OR_END, _AFTER, _DONE})
_VALUE_STATES = frozenset({_VALUE, _VALUE_OR_END})


class ArgsScanner:
    """Follows the arguments object, from just after its ``{``, and hands out only prefixes
    that can still be closed into valid JSON."""

    __slots__ = (
        "_broken",
        "_carry",
        "_close_tag",
        "_committed_in_string",
        "_emitted",
        "_expect",
        "_in_string",
        "_is_key",
        "_pending",
        "_raw",
        "_scalar",
        "_stack",
    )

    def __init__(self, close_tag: str) -> None:
        self._close_tag = close_tag  # ends the arguments wherever it is outside a string
        self._stack = ["}"]  # the closing bracket of each open container
        self._expect = _KEY_OR_END
        self._in_string = self._is_key = False
        self._scalar = ""
        self._pending: list[str] = []  # scanned text after the last safe point
        self._emitted = ["{"]  # released during the current feed
        self._committed_in_string = False
        self._broken = False
        self._carry = ""  # an unfinished escape or a possible start of the closing tag
        # All text seen, kept only while nothing but "{" has been released: JSON that breaks
        # that early (a Python dict, say) can still be repaired whole.
        self._raw: list[str] | None = ["{"]

    def feed(self, text: str) -> tuple[str, str | None]:
        """Scan ``text``; return the releasable fragment and, after the closing tag, the rest."""
        if self._raw is not None:
            self._raw.append(text)
        s = self._carry + text if self._carry else text
        self._carry = ""
        i, n = 0, len(s)
        while i < n:
            if self._in_string:
                i = self._string(s, i)
            elif self._broken or self._expect == _DONE:
                return self._after_args(s, i)
            elif self._scalar:
                i = self._more_scalar(s, i)
            elif s[i] == "<":
                if s.startswith(self._close_tag, i):
                    return self._closed_at(s, i)
                if not self._close_tag.startswith(s[i:]):
                    self._broken = True
                    continue
                self._carry = s[i:]
                break
            else:
                i = self._token(s, i)
            self._commit()
        return self._take(), None

    def complete(self) -> str:
        """The closing text that makes everything released so far one valid JSON object."""
        self._carry = ""
        if self._broken and self._raw is not None:
            raw = "".join(self._raw)
            return self._take() + object_json(raw[: held_start(raw, self._close_tag)])[1:]
        if not self._broken:
            if self._scalar:
                self._end_scalar()
            if self._in_string and not self._is_key:
                self._pending.append('"')
                self._in_string, self._expect = False, _AFTER
            self._commit()
        # Brackets only open or close at safe points, so the stack is the committed one.
        closer = '"' if self._committed_in_string else ""
        return self._take() + closer + "".join(reversed(self._stack))

    def _closed_at(self, s: str, at: int) -> tuple[str, str]:
        rest = s[at + len(self._close_tag) :]
        if self._raw is not None:
            raw = "".join(self._raw)
            self._raw = [raw[: len(raw) - len(rest) - len(self._close_tag)]]
        return self._take(), rest

    def _take(self) -> str:
        out = "".join(self._emitted)
        self._emitted.clear()
        return out

    def _commit(self) -> None:
        safe = not self._is_key if self._in_string else self._expect in _SAFE and not self._scalar
        if safe and not self._broken:
            if self._raw is not None and "".join(self._pending).strip():
                self._raw = None
            self._emitted += self._pending
            self._pending.clear()
            self._committed_in_string = self._in_string

    def _after_args(self, s: str, i: int) -> tuple[str, str | None]:
        # Whatever follows the arguments (the wrapper's "}") is not part of them.
        at = s.find(self._close_tag, i)
        if at >= 0:
            return self._closed_at(s, at)
        held = held_start(s, self._close_tag)
        self._carry = s[max(held, i) :]
        return self._take(), None

    def _string(self, s: str, i: int) -> int:
        stop = _STRING_STOP.search(s, i)
        end = stop.start() if stop else len(s)
        if end > i:
            self._pending.append(s[i:end])
        if stop is None:
            return end
        char = s[end]
        if char == '"':
            self._pending.append('"')
            self._in_string = False
            self._expect = _COLON if self._is_key else _AFTER
            return end + 1
        if char == "\\":
            return self._escape(s, end)
        self._pending.append(_CONTROL_ESCAPES.get(char) or f"\\u{ord(char):04x}")
        return end + 1

    def _escape(self, s: str, at: int) -> int:
        kind = s[at + 1 : at + 2]
        if kind == "u":
            digits = s[at + 2 : at + 6]
            if _HEX4.fullmatch(digits):
                self._pending.append(s[at : at + 6])
                return at + 6
            if len(digits) < 4 and _HEX_PREFIX.fullmatch(digits):
                self._carry = s[at:]
                return len(s)
        elif kind in _SIMPLE_ESCAPES and kind:
            self._pending.append(s[at : at + 2])
            return at + 2
        elif not kind:
            self._carry = s[at:]
            return len(s)
        # An invalid escape: keep the backslash as a character.
        self._pending.append("\\\\")
        return at + 1

    def _more_scalar(self, s: str, i: int) -> int:
        run = _SCALAR_RUN.match(s, i)
        end = run.end() if run else i
        self._scalar += s[i:end]
        if end < len(s):
            self._end_scalar()
        return end

    def _end_scalar(self) -> None:
        scalar, self._scalar = self._scalar, ""
        value = _LITERALS.get(scalar) or (scalar if _NUMBER.fullmatch(scalar) else None)
        if value is None:
            self._broken = True
        else:
            self._pending.append(value)
            self._expect = _AFTER

    def _token(self, s: str, i: int) -> int:
        ws = _WS_RUN.match(s, i)
        if ws:
            self._pending.append(ws.group())
            return ws.end()
        handler = _STRUCTURE.get(s[i])
        if handler is None:
            if self._expect in _VALUE_STATES:
                return self._more_scalar(s, i)
        elif handler(self, s[i]):
            return i + 1
        self._broken = True
        return i

    def _open(self, char: str) -> bool:
        if self._expect not in _VALUE_STATES:
            return False
        self._pending.append(char)
        self._stack.append("}" if char == "{" else "]")
        self._expect = _KEY_OR_END if char == "{" else _VALUE_OR_END
        return True

    def _close(self, char: str) -> bool:
        empty_ok = _KEY_OR_END if char == "}" else _VALUE_OR_END
        if not self._stack or self._stack[-1] != char or self._expect not in (_AFTER, empty_ok):
            return False
        self._pending.append(char)
        self._stack.pop()
        self._expect = _AFTER if self._stack else _DONE
        return True

    def _comma(self, char: str) -> bool:
        if self._expect != _AFTER:
            return False
        self._pending.append(char)
        self._expect = _KEY if self._stack[-1] == "}" else _VALUE
        return True

    def _colon(self, char: str) -> bool:
        if self._expect != _COLON:
            return False
        self._pending.append(char)
        self._expect = _VALUE
        return True

    def _quote(self, char: str) -> bool:
        if self._expect in (_KEY, _KEY_OR_END):
            self._is_key = True
        elif self._expect in _VALUE_STATES:
            self._is_key = False
        else:
            return False
        self._pending.append(char)
        self._in_string = True
        return True


_STRUCTURE = {
    "{": ArgsScanner._open,
    "[": ArgsScanner._open,
    "}": ArgsScanner._close,
    "]": ArgsScanner._close,
    ",": ArgsScanner._comma,
    ":": ArgsScanner._colon,
    '"': ArgsScanner._quote,
}


# --- whole values ---------------------------------------------------------------------------


def _reject_constant(name: str) -> object:
    raise ValueError(name)  # NaN and Infinity are not JSON


def load_lenient(text: str) -> object:
    """JSON, else what json_repair makes of it; None for nothing or absurd nesting."""
    text = text.strip()
    if not text:
        return None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        pass
    except RecursionError:  # absurd nesting: not a tool call
        return None
    try:
        return json_repair.loads(text)
    except RecursionError:
        return None


def object_json(value: object) -> str:
    """A tool input as JSON text: a JSON object (text is parsed leniently), else ``{}``."""
    if isinstance(value, str):
        value = load_lenient(value)
    if not isinstance(value, dict):
        # Missing, or something no input schema accepts: tool inputs are objects.
        return "{}"
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return "{}"
