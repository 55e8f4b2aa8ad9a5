"""Tool calls written as text: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

Models served without a server-side tool parser (Qwen, Hermes and their fine-tunes) put their
calls in the reply text. ``TextToolCallExtractor`` turns that text into events, incrementally:

* Outside a tag, text passes through at once; only a suffix that may begin ``<tool_call>``
  is held back. Whitespace right after ``</tool_call>`` is dropped, so the newlines between
  and after calls do not become text.
* Inside a tag the body is buffered only until its head, ``{"name": "<name>", "arguments":``
  (or ``"parameters"``), is known and the value starts with ``{``. Then ``ToolCallStart`` goes
  out and the arguments stream as ``ToolCallArgs`` fragments while a small JSON scanner follows
  them. The scanner knows where the arguments object ends (the wrapper's closing ``}`` is
  dropped), treats ``</tool_call>`` inside a JSON string as content, escapes raw control
  characters inside strings and turns Python's ``True``/``False``/``None`` into JSON. It
  releases text only up to the last point where the prefix can still be closed into valid
  JSON (inside a string value, after a complete value or an opening bracket), so a key, a
  colon, a comma or an unfinished number waits for the next feed. If the call is cut short
  (the tag closes early, the reply ends) or the JSON breaks, the rest is dropped and the
  fragments are closed from that last point: their concatenation is always one JSON object.
  JSON that breaks before anything but ``{`` went out (single quotes: a Python dict) is kept
  and repaired whole at the end instead.
* A body that does not fit the head shape (``"arguments"`` before ``"name"``, arguments as a
  JSON string, an OpenAI-style ``{"function": ...}`` wrapper, a list of calls, broken JSON)
  is buffered until the first ``</tool_call>`` and parsed whole, with ``json_repair`` when it
  is not valid JSON. Each call found becomes Start + one Args (``{}`` when arguments are
  missing or not an object) + End; a body with no call in it goes back out as text, tags
  included. The same happens to a tag still open when the reply ends.

Within one feed consecutive text pieces, and consecutive argument fragments, are merged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final

import json_repair

__all__ = [
    "TextPiece",
    "TextToolCallEvent",
    "TextToolCallExtractor",
    "ToolCallArgs",
    "ToolCallEnd",
    "ToolCallStart",
    "extract_text_tool_calls",
]

OPEN: Final = "<tool_call>"
CLOSE: Final = "</tool_call>"


@dataclass(slots=True)
class TextPiece:
    text: str


@dataclass(slots=True)
class ToolCallStart:
    index: int  # calls are numbered from 0 within one reply
    name: str


@dataclass(slots=True)
class ToolCallArgs:
    index: int
    fragment: str


@dataclass(slots=True)
class ToolCallEnd:
    index: int


TextToolCallEvent = TextPiece | ToolCallStart | ToolCallArgs | ToolCallEnd


def _held_start(buf: str, tag: str) -> int:
    """Where a suffix that may still grow into ``tag`` begins (``len(buf)`` if none)."""
    # Both tags hold "<" only at their start, so only the last "<" can begin one.
    lt = buf.rfind("<", max(0, len(buf) - len(tag) + 1))
    return lt if lt >= 0 and tag.startswith(buf[lt:]) else len(buf)


# --- the streamed arguments ----------------------------------------------------------------

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


class _ArgsJson:
    """Follows the arguments object, from just after its ``{``, and hands out only prefixes
    that can still be closed into valid JSON."""

    __slots__ = (
        "_broken",
        "_carry",
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

    def __init__(self) -> None:
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
                if s.startswith(CLOSE, i):
                    return self._closed_at(s, i)
                if not CLOSE.startswith(s[i:]):
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
            return self._take() + _args_json(raw[: _held_start(raw, CLOSE)])[1:]
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
        rest = s[at + len(CLOSE) :]
        if self._raw is not None:
            raw = "".join(self._raw)
            self._raw = [raw[: len(raw) - len(rest) - len(CLOSE)]]
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
        at = s.find(CLOSE, i)
        if at >= 0:
            return self._closed_at(s, at)
        held = _held_start(s, CLOSE)
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
    "{": _ArgsJson._open,
    "[": _ArgsJson._open,
    "}": _ArgsJson._close,
    "]": _ArgsJson._close,
    ",": _ArgsJson._comma,
    ":": _ArgsJson._colon,
    '"': _ArgsJson._quote,
}


# --- the head of a tag body ----------------------------------------------------------------

_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_WS_OPT = re.compile(r"[ \t\n\r]*")
_NAME_KEY = ("name",)
_ARGS_KEYS = ("arguments", "parameters")
_NAME_VALUE = ()  # any string
# The head, one token at a time: a character, or a string (with the keys it may be).
_HEAD: tuple[str | tuple[str, ...], ...] = ("{", _NAME_KEY, ":", _NAME_VALUE, ",", _ARGS_KEYS, ":")

_INCOMPLETE, _MISMATCH, _CLOSED, _STREAM = range(4)


def _decode_string(raw: str) -> str:
    try:
        value = json.loads(f'"{raw}"')
    except ValueError:
        return raw
    return value if isinstance(value, str) else raw


def _parse_head(buf: str) -> tuple[int, str, int]:
    """``(status, name, position)``: ``_STREAM`` with the arguments' ``{`` at ``position``,
    ``_CLOSED`` with the closing tag there, or ``_INCOMPLETE`` / ``_MISMATCH``."""
    pos, name = 0, ""
    for want in (*_HEAD, None):
        ws = _WS_OPT.match(buf, pos)
        pos = ws.end() if ws else pos
        if len(buf) - pos < len(CLOSE) and CLOSE.startswith(buf[pos:]):
            return _INCOMPLETE, name, pos
        if buf.startswith(CLOSE, pos):
            return _CLOSED, name, pos
        if want is None:
            return (_STREAM if buf[pos] == "{" and name else _MISMATCH), name, pos
        if isinstance(want, str):
            if buf[pos] != want:
                return _MISMATCH, name, pos
            pos += 1
            continue
        string = _STRING.match(buf, pos)
        if string is None:
            return (_INCOMPLETE if buf[pos] == '"' else _MISMATCH), name, pos
        value = _decode_string(string.group(1))
        if want and value not in want:
            return _MISMATCH, name, pos
        name = name if want else value.strip()
        pos = string.end()
    raise AssertionError("unreachable")  # pragma: no cover


# --- whole bodies ---------------------------------------------------------------------------


def _reject_constant(name: str) -> object:
    raise ValueError(name)  # NaN and Infinity are not JSON


def _load(text: str) -> object:
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


def _args_json(value: object) -> str:
    if isinstance(value, str):
        value = _load(value)
    if not isinstance(value, dict):
        # Missing, or something no input schema accepts: tool inputs are objects.
        return "{}"
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return "{}"


def _call_of(item: object) -> tuple[str, str] | None:
    if not isinstance(item, dict):
        return None
    function = item.get("function")
    if isinstance(function, dict) and "name" in function:
        item = function
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    args = item["arguments"] if "arguments" in item else item.get("parameters")
    return name.strip(), _args_json(args)


def _parse_calls(body: str) -> list[tuple[str, str]]:
    loaded = _load(body)
    items = loaded if isinstance(loaded, list) else [loaded]
    return [call for call in map(_call_of, items) if call is not None]


# --- the extractor ----------------------------------------------------------------------------

_TEXT, _HEAD_MODE, _ARGS_MODE, _WHOLE_MODE = range(4)


class TextToolCallExtractor:
    """``feed(text) -> [event]`` and ``finish()``; see the module docstring for the design."""

    __slots__ = ("_args", "_body", "_carry", "_count", "_head", "_mode", "_strip")

    def __init__(self) -> None:
        self._mode = _TEXT
        self._carry = ""  # a possible start of a tag
        self._head = ""  # the body so far while its head is unknown
        self._body: list[str] = []  # the body of a call parsed whole
        self._args = _ArgsJson()
        self._count = 0  # calls started
        self._strip = False  # drop leading whitespace of the next text

    def feed(self, text: str) -> list[TextToolCallEvent]:
        out: list[TextToolCallEvent] = []
        rest: str | None = text
        while rest is not None:
            rest = _STEPS[self._mode](self, rest, out)
        return out

    def finish(self) -> list[TextToolCallEvent]:
        """End of reply: release held text and settle a tag that never closed."""
        out: list[TextToolCallEvent] = []
        carry, self._carry = self._carry, ""
        if self._mode == _TEXT:
            self._text(out, carry)
        elif self._mode == _ARGS_MODE:
            self._args_fragment(out, self._args.complete())
            self._end_call(out)
        else:
            body = self._head if self._mode == _HEAD_MODE else "".join(self._body) + carry
            self._whole(out, body[: _held_start(body, CLOSE)], closed=False)
        return out

    def _step_text(self, text: str, out: list[TextToolCallEvent]) -> str | None:
        s = self._carry + text if self._carry else text
        at = s.find(OPEN)
        if at < 0:
            held = _held_start(s, OPEN)
            self._text(out, s[:held])
            self._carry = s[held:]
            return None
        self._text(out, s[:at])
        self._carry, self._head, self._mode = "", "", _HEAD_MODE
        return s[at + len(OPEN) :]

    def _step_head(self, text: str, out: list[TextToolCallEvent]) -> str | None:
        self._head += text
        status, name, pos = _parse_head(self._head)
        if status == _INCOMPLETE:
            return None
        head, self._head = self._head, ""
        if status == _STREAM:
            out.append(ToolCallStart(self._count, name))
            self._args, self._mode = _ArgsJson(), _ARGS_MODE
            return head[pos + 1 :]
        if status == _CLOSED:
            self._whole(out, head[:pos], closed=True)
            return head[pos + len(CLOSE) :]
        self._body, self._mode = [], _WHOLE_MODE
        return head

    def _step_args(self, text: str, out: list[TextToolCallEvent]) -> str | None:
        fragment, rest = self._args.feed(text)
        self._args_fragment(out, fragment)
        if rest is not None:
            self._args_fragment(out, self._args.complete())
            self._end_call(out)
        return rest

    def _step_whole(self, text: str, out: list[TextToolCallEvent]) -> str | None:
        s = self._carry + text if self._carry else text
        self._carry = ""
        at = s.find(CLOSE)
        if at < 0:
            held = _held_start(s, CLOSE)
            self._body.append(s[:held])
            self._carry = s[held:]
            return None
        self._body.append(s[:at])
        self._whole(out, "".join(self._body), closed=True)
        self._body = []
        return s[at + len(CLOSE) :]

    def _whole(self, out: list[TextToolCallEvent], body: str, *, closed: bool) -> None:
        self._mode = _TEXT
        calls = _parse_calls(body)
        if not calls:
            self._text(out, OPEN + body + (CLOSE if closed else ""))
            return
        for name, args in calls:
            out.append(ToolCallStart(self._count, name))
            self._args_fragment(out, args)
            self._end_call(out)

    def _end_call(self, out: list[TextToolCallEvent]) -> None:
        out.append(ToolCallEnd(self._count))
        self._count += 1
        self._mode, self._strip = _TEXT, True

    def _args_fragment(self, out: list[TextToolCallEvent], fragment: str) -> None:
        if not fragment:
            return
        last = out[-1] if out else None
        if isinstance(last, ToolCallArgs):
            out[-1] = ToolCallArgs(last.index, last.fragment + fragment)
        else:
            out.append(ToolCallArgs(self._count, fragment))

    def _text(self, out: list[TextToolCallEvent], text: str) -> None:
        if self._strip:
            text = text.lstrip()
            self._strip = not text
        if not text:
            return
        last = out[-1] if out else None
        if isinstance(last, TextPiece):
            out[-1] = TextPiece(last.text + text)
        else:
            out.append(TextPiece(text))


_STEPS = {
    _TEXT: TextToolCallExtractor._step_text,
    _HEAD_MODE: TextToolCallExtractor._step_head,
    _ARGS_MODE: TextToolCallExtractor._step_args,
    _WHOLE_MODE: TextToolCallExtractor._step_whole,
}


def extract_text_tool_calls(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Whole-text extraction: ``(remaining text, [(name, arguments JSON)])``."""
    extractor = TextToolCallExtractor()
    pieces: list[str] = []
    calls: list[tuple[str, list[str]]] = []
    for event in extractor.feed(text) + extractor.finish():
        if isinstance(event, TextPiece):
            pieces.append(event.text)
        elif isinstance(event, ToolCallStart):
            calls.append((event.name, []))
        elif isinstance(event, ToolCallArgs):
            calls[-1][1].append(event.fragment)
    return "".join(pieces), [(name, "".join(args)) for name, args in calls]
