"""Split reply text with inline ``<think>...</think>`` into reasoning and answer, incrementally.

Rules, chosen so that reasoning never leaks into the answer and nothing waits longer than
it must:

* Reasoning comes first. ``<think>`` opens a reasoning section only while no answer text
  has been emitted; once the answer has begun, ``<think>`` is ordinary text (a model
  explaining the tag must not lose the rest of its answer to a thinking block).
* Inside reasoning, ``</think>`` closes it. A ``<think>`` right at the start of a section
  (only whitespace before it) is a duplicate opening and is dropped: with
  ``starts_in_reasoning=True`` the prompt opened the section, yet some models open it again.
* A stray ``</think>`` (no section open, none closed yet, no ``<think>`` in the answer)
  means the chat template put ``<think>`` in the prompt (Qwen3 thinking variants,
  DeepSeek-R1): the tag is dropped and what follows is the answer. Text already emitted
  before it cannot be recalled in a stream, so the caller should pass
  ``starts_in_reasoning=True`` for such models; ``split_think``, which sees the whole text,
  detects the case exactly. After a section has closed, a later ``</think>`` is ordinary
  text.
* Whitespace at the start of a reasoning section and right after ``</think>`` (models write
  ``<think>\\n`` and ``</think>\\n\\n``) is dropped, so ``<think>\\n\\n</think>`` yields no
  thinking at all. Whitespace at the very start of the reply is held until it is known
  whether reasoning follows (then dropped) or answer text (then kept).
* Only a suffix that may begin a tag that is live in the current state (``<thi``, ``</th``)
  is held back between feeds; everything else is emitted at once. Consecutive pieces of one
  kind within a feed are merged.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Kind", "Piece", "ThinkSplitter", "opened_by_prompt", "split_think"]

Kind = Literal["thinking", "text"]
Piece = tuple[Kind, str]

OPEN = "<think>"
CLOSE = "</think>"
_BOTH = (OPEN, CLOSE)
_CLOSE_ONLY = (CLOSE,)
_OPEN_ONLY = (OPEN,)
_NONE: tuple[str, ...] = ()


class ThinkSplitter:
    """``feed(text) -> [(kind, text)]`` and ``finish()``; see the module docstring for the rules."""

    __slots__ = ("_closed", "_held", "_reasoning", "_started", "_strip", "_ws")

    def __init__(self, starts_in_reasoning: bool = False) -> None:
        self._reasoning = starts_in_reasoning
        self._strip = starts_in_reasoning  # drop leading whitespace of the next piece
        self._started = False  # answer text has been emitted
        self._closed = False  # a reasoning section has ended
        self._held = ""  # possible start of a tag
        self._ws = ""  # whitespace at the start of the reply, not yet assigned

    @property
    def passes_text(self) -> bool:
        """Whether text without ``<`` goes out now, unchanged, as answer text."""
        return self._started and not (self._reasoning or self._held or self._strip)

    def feed(self, text: str) -> list[Piece]:
        """Consume ``text``; return the pieces that are certain now."""
        out: list[Piece] = []
        if not self._held and "<" not in text:
            # Every tag starts with "<": nothing to find and nothing to hold back.
            self._emit(out, text)
            return out
        buf = self._held + text if self._held else text
        pos = 0
        while True:
            tags = self._tags()
            at, tag = _find_first(buf, pos, tags)
            if at < 0:
                break
            self._emit(out, buf[pos:at])
            self._on_tag(out, tag)
            pos = at + len(tag)
        held_at = _held_start(buf, pos, tags)
        self._emit(out, buf[pos:held_at])
        if held_at < len(buf) and self._tags() != tags:
            # The answer began just now; the held text may no longer start a live tag.
            pos, held_at = held_at, _held_start(buf, held_at, self._tags())
            self._emit(out, buf[pos:held_at])
        self._held = buf[held_at:]
        return out

    def finish(self) -> list[Piece]:
        """End of reply: release what was held back (it did not become a tag)."""
        out: list[Piece] = []
        held, self._held = self._held, ""
        self._emit(out, held)
        if self._ws:
            out.append(("text", self._ws))
            self._ws = ""
        return out

    def _tags(self) -> tuple[str, ...]:
        if self._reasoning:
            return _BOTH if self._strip else _CLOSE_ONLY
        if self._closed:
            return _NONE if self._started else _OPEN_ONLY
        return _BOTH

    def _on_tag(self, out: list[Piece], tag: str) -> None:
        if tag not in self._tags():  # the text before it made it ordinary text
            self._emit(out, tag)
        elif tag == CLOSE:
            self._reasoning = False
            self._closed = self._strip = True
            self._ws = ""
        elif self._started:
            # ``<think>`` named in the answer: a later ``</think>`` belongs to it, not to a
            # section the prompt opened.
            self._emit(out, tag)
            self._closed = True
        elif not self._reasoning:
            self._reasoning = self._strip = True
            self._ws = ""

    def _emit(self, out: list[Piece], piece: str) -> None:
        if not piece:
            return
        if self._strip:
            piece = piece.lstrip()
            if not piece:
                return
            self._strip = False
        if self._reasoning:
            _append(out, "thinking", piece)
        elif self._started:
            _append(out, "text", piece)
        elif piece.isspace():
            self._ws += piece
        else:
            self._started = True
            _append(out, "text", self._ws + piece)
            self._ws = ""


def _append(out: list[Piece], kind: Kind, piece: str) -> None:
    if out and out[-1][0] == kind:
        out[-1] = (kind, out[-1][1] + piece)
    else:
        out.append((kind, piece))


def _find_first(buf: str, pos: int, tags: tuple[str, ...]) -> tuple[int, str]:
    best, best_tag = -1, ""
    for tag in tags:
        at = buf.find(tag, pos)
        if at >= 0 and (best < 0 or at < best):
            best, best_tag = at, tag
    return best, best_tag


def _held_start(buf: str, pos: int, tags: tuple[str, ...]) -> int:
    """Where the suffix that may still grow into one of ``tags`` begins (``len(buf)`` if none)."""
    if not tags:
        return len(buf)
    longest = max(len(tag) for tag in tags)
    # Tags contain "<" only at their start, so only the last "<" can begin one.
    lt = buf.rfind("<", max(pos, len(buf) - longest + 1))
    if lt >= 0 and any(tag.startswith(buf[lt:]) for tag in tags):
        return lt
    return len(buf)


def opened_by_prompt(text: str) -> bool:
    """A whole reply with a ``</think>`` and no ``<think>`` before it started inside reasoning."""
    close = text.find(CLOSE)
    return close >= 0 and text.find(OPEN, 0, close) < 0


def split_think(text: str) -> tuple[str, str]:
    """Whole-text split into ``(reasoning, answer)``.

    Seeing all of the text, it tells a reply that started inside a prompt-opened section
    (a ``</think>`` with no ``<think>`` before it) from one that did not.
    """
    splitter = ThinkSplitter(starts_in_reasoning=opened_by_prompt(text))
    parts: dict[Kind, list[str]] = {"thinking": [], "text": []}
    for kind, piece in splitter.feed(text) + splitter.finish():
        parts[kind].append(piece)
    return "".join(parts["thinking"]), "".join(parts["text"])
