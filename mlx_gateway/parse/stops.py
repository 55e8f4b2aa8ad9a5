"""Which stop sequence ended a reply, and cutting a reply at a stop sequence ourselves.

Anthropic reports ``stop_reason: "stop_sequence"`` with the matched ``stop_sequence``;
OpenAI-compatible servers only say ``finish_reason: "stop"``, which also means end-of-turn,
and (OpenAI semantics) leave the stop text out of the output. What each backend gives us:

* vLLM: ``choices[0].stop_reason`` is the matched stop string (an int for a stop token,
  null for EOS). Exact; used first by ``resolve_stop_sequence``.
* mlx_lm.server (read in mlx-lm 0.32.2, ``server.py``/``generate.py``): generation stops on
  a *token-level* match: each stop word is tokenized once (``make_stop_sequences``) and an
  Aho-Corasick automaton over token ids ends generation when the model produces exactly that
  token sequence; the final token is not decoded. Independently, its ``TextStateMachine``
  gets every stop word as a self-transition, so each occurrence is stripped from the text,
  held-back partial matches included, and the held buffer is discarded on
  ``finish_reason == "stop"``. Consequences: the stop text never reaches us, EOS and a stop
  word produce the same ``finish_reason`` and the same text, and nothing in the response
  says which word matched. Worse, a stop word that the model spells with other tokens is
  silently deleted from the middle of the text while generation goes on.
* llama.cpp, Ollama, LM Studio strip the matched text as well and report only a reason in
  their OpenAI-compatible responses (llama.cpp names the word, ``stopping_word``, only on
  its native ``/completion`` endpoint).

So from a stripping backend the matched sequence cannot be determined; the honest answer is
``None`` (end_turn). A backend that keeps the stop text in its output (or one that was not
given the stop sequences) lets ``StopSequenceWatcher`` see it at the end of the output.

The exact strategy for every backend is for the gateway to detect stop sequences itself in
the streamed text with ``StopSequenceCutter``: it forwards text up to the first match, holds
back only a suffix that may still become a stop sequence, and reports the match, after which
the caller ends the reply (``stop_reason: "stop_sequence"``) and closes the upstream
request. Passing the sequences to the backend as well saves the tokens generated until the
upstream request is closed, but with a stripping backend the cutter then never sees a match,
so the response falls back to ``resolve_stop_sequence``; with mlx_lm.server it also brings
the mid-text deletion above. The cutter is therefore worth most when the backend is *not*
given the stop sequences (or reports the match, like vLLM), and it is harmless when it is.

Matching follows generation order: the match that *ends* first wins (a backend checking
after every token stops there); of matches ending at the same place, the longest wins, so
no part of any stop sequence is forwarded.
"""

from __future__ import annotations

__all__ = ["StopSequenceCutter", "StopSequenceWatcher", "resolve_stop_sequence"]


_EMPTY: frozenset[str] = frozenset()


def _clean(stop_sequences: list[str]) -> tuple[str, ...]:
    # An empty stop sequence would match everywhere; servers ignore it, so do we.
    return tuple(dict.fromkeys(s for s in stop_sequences if s))


def _longest_suffix_match(text: str, sequences: tuple[str, ...]) -> str | None:
    found = [s for s in sequences if text.endswith(s)]
    return max(found, key=len) if found else None


class StopSequenceWatcher:
    """Keeps the last ``max(len(s)) - 1`` characters of the output (plus the newest feed).

    ``matched()`` names the stop sequence the output ends with, for backends that leave it in.
    """

    __slots__ = ("_keep", "_sequences", "_tail")

    def __init__(self, stop_sequences: list[str]) -> None:
        self._sequences = _clean(stop_sequences)
        self._keep = max((len(s) for s in self._sequences), default=0)
        self._tail = ""

    @property
    def tail(self) -> str:
        """The end of the output, long enough to hold any stop sequence."""
        return self._tail

    def feed(self, text: str) -> None:
        if not self._keep or not text:
            return
        if len(text) >= self._keep:
            self._tail = text[-self._keep :]
        else:
            self._tail = (self._tail + text)[-self._keep :]

    def matched(self) -> str | None:
        return _longest_suffix_match(self._tail, self._sequences)


def resolve_stop_sequence(
    stop_sequences: list[str],
    finish_reason: str | None,
    backend_stop_reason: object,
    output_tail: str,
) -> str | None:
    """The stop sequence that ended the reply, or None when none did or it is unknowable.

    ``backend_stop_reason`` is vLLM's ``choices[0].stop_reason`` (any JSON value; only a
    string naming one of ``stop_sequences`` counts). ``output_tail`` is the end of the
    output (``StopSequenceWatcher.tail``), which names the match only when the backend kept
    the stop text. See the module docstring for why None is often the only honest answer.
    """
    if finish_reason != "stop" or not stop_sequences:
        return None
    sequences = _clean(stop_sequences)
    if isinstance(backend_stop_reason, str) and backend_stop_reason in sequences:
        return backend_stop_reason
    return _longest_suffix_match(output_tail, sequences)


class StopSequenceCutter:
    """``feed(text) -> (text_to_emit, matched)``: cuts the output at the first stop sequence.

    Once a sequence has matched, every later feed returns ``("", matched)``.
    """

    __slots__ = ("_held", "_longest", "_matched", "_prefixes", "_sequences")

    def __init__(self, stop_sequences: list[str]) -> None:
        # Built on every answer, nearly always without sequences: that case costs nothing.
        sequences = _clean(stop_sequences) if stop_sequences else ()
        self._sequences = sequences
        self._prefixes = (
            frozenset(s[:i] for s in sequences for i in range(1, len(s))) if sequences else _EMPTY
        )
        self._longest = max(map(len, sequences)) if sequences else 0
        self._held = ""
        self._matched: str | None = None

    @property
    def matched(self) -> str | None:
        return self._matched

    @property
    def watching(self) -> bool:
        """Whether any text may still be held back or cut (there are sequences to look for)."""
        return bool(self._sequences)

    def feed(self, text: str) -> tuple[str, str | None]:
        if self._matched is not None:
            return "", self._matched
        if not self._sequences:
            return text, None
        buf = self._held + text if self._held else text
        cut, seq = self._first_match(buf)
        if seq is not None:
            self._held, self._matched = "", seq
            return buf[:cut], seq
        hold = self._hold_start(buf)
        self._held = buf[hold:]
        return buf[:hold], None

    def finish(self) -> str:
        """End of output without a match: the held text was not a stop sequence after all."""
        held, self._held = self._held, ""
        return held

    def _first_match(self, buf: str) -> tuple[int, str | None]:
        best_end, best_start, best = len(buf) + 1, 0, None
        for seq in self._sequences:
            start = buf.find(seq)
            end = start + len(seq)
            if start >= 0 and (end < best_end or (end == best_end and start < best_start)):
                best_end, best_start, best = end, start, seq
        return best_start, best

    def _hold_start(self, buf: str) -> int:
        # The held text is a proper prefix of a sequence, so it holds no whole match and
        # the search above stays bounded by the feed plus the longest sequence.
        for start in range(max(0, len(buf) - self._longest + 1), len(buf)):
            if buf[start:] in self._prefixes:
                return start
        return len(buf)
