"""Tool calls written as text: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

Models served without a server-side tool parser (Qwen, Hermes and their fine-tunes) put their
calls in the reply text. ``TextToolCallExtractor`` turns that text into events, incrementally:

* Outside a tag, text passes through at once; only a suffix that may begin ``<tool_call>``
  is held back. Whitespace right after ``</tool_call>`` is dropped, so the newlines between
  and after calls do not become text.
* Inside a tag the body is buffered only until its head, ``{"name": "<name>", "arguments":``
  (or ``"parameters"``), is known and the value starts with ``{``. Then ``ToolCallStart`` goes
  out and the arguments stream as ``ToolCallArgs`` fragments while ``jsonscan.ArgsScanner``
  follows them: it finds where the arguments object ends (the wrapper's closing ``}`` is
  dropped), releases only prefixes that can still be closed into valid JSON, and closes the
  fragments into one JSON object when the call is cut short (the tag closes early, the reply
  ends) or the JSON breaks; see jsonscan.py.
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

from mlx_gateway.parse.jsonscan import ArgsScanner, held_start, load_lenient, object_json

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
    return name.strip(), object_json(args)


def _parse_calls(body: str) -> list[tuple[str, str]]:
    loaded = load_lenient(body)
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
        self._args = ArgsScanner(CLOSE)
        self._count = 0  # calls started
        self._strip = False  # drop leading whitespace of the next text

    @property
    def passes_text(self) -> bool:
        """Whether text without ``<`` goes out now, unchanged, as text."""
        return self._mode == _TEXT and not (self._carry or self._strip)

    def feed(self, text: str) -> list[TextToolCallEvent]:
        out: list[TextToolCallEvent] = []
        if self._mode == _TEXT and not self._carry and "<" not in text:
            self._text(out, text)  # no tag can start in it: the common case, kept cheap
            return out
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
            self._whole(out, body[: held_start(body, CLOSE)], closed=False)
        return out

    def _step_text(self, text: str, out: list[TextToolCallEvent]) -> str | None:
        s = self._carry + text if self._carry else text
        at = s.find(OPEN)
        if at < 0:
            held = held_start(s, OPEN)
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
            self._args, self._mode = ArgsScanner(CLOSE), _ARGS_MODE
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
            held = held_start(s, CLOSE)
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
