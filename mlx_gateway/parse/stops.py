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

from array import array

__all__ = ["StopSequenceCutter", "StopSequenceWatcher", "resolve_stop_sequence"]


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

    Each sequence is followed by its own Knuth-Morris-Pratt automaton, so memory is linear in
    the sequences' total length and every character of output is looked at a bounded number
    of times per sequence. (Held-back text used to be checked against the set of all prefixes
    of every sequence: one 40,000-character sequence made 800 million characters of them.)
    """

    __slots__ = ("_held", "_matched", "_matchers")

    def __init__(self, stop_sequences: list[str]) -> None:
        # Built on every answer, nearly always without sequences: that case costs nothing.
        sequences = _clean(stop_sequences) if stop_sequences else ()
        self._matchers = [_Automaton(sequence) for sequence in sequences]
        self._held = ""
        self._matched: str | None = None

    @property
    def matched(self) -> str | None:
        return self._matched

    @property
    def watching(self) -> bool:
        """Whether any text may still be held back or cut (there are sequences to look for)."""
        return bool(self._matchers)

    def feed(self, text: str) -> tuple[str, str | None]:
        if self._matched is not None:
            return "", self._matched
        if not self._matchers:
            return text, None
        held = self._held
        end, sequence = self._first_match(text)
        if sequence is not None:
            self._held, self._matched = "", sequence
            return (held + text[:end])[: len(held) + end - len(sequence)], sequence
        # What may still become a stop sequence is the longest partial match of any of them.
        hold = max(matcher.state for matcher in self._matchers)
        buf = held + text if held else text
        self._held = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], None

    def finish(self) -> str:
        """End of output without a match: the held text was not a stop sequence after all."""
        held, self._held = self._held, ""
        return held

    def _first_match(self, text: str) -> tuple[int, str | None]:
        """Where in `text` the first whole match ends; of matches ending there, the longest."""
        best_end, best = len(text) + 1, ""
        for matcher in self._matchers:
            end = matcher.advance(text)
            if end >= 0 and (end, -len(matcher.sequence)) < (best_end, -len(best)):
                best_end, best = end, matcher.sequence
        return best_end, best or None


class _Automaton:
    """One stop sequence's Knuth-Morris-Pratt matcher: `state` is how many of its leading
    characters the output read so far ends with."""

    __slots__ = ("_fallback", "sequence", "state")

    def __init__(self, sequence: str) -> None:
        self.sequence = sequence
        self._fallback = _failure_table(sequence)
        self.state = 0

    def advance(self, text: str) -> int:
        """Reads `text`; returns the index just past the first whole match in it, or -1."""
        sequence, fallback, state = self.sequence, self._fallback, self.state
        first, whole, at, end = sequence[0], len(sequence), 0, len(text)
        while at < end:
            if not state:  # nothing matched yet: skip to the next first character at C speed
                at = text.find(first, at)
                if at < 0:
                    break
            else:
                while state and sequence[state] != text[at]:
                    state = fallback[state - 1]
                if sequence[state] != text[at]:
                    at += 1
                    continue
            state += 1
            at += 1
            if state == whole:
                self.state = state
                return at
        self.state = state
        return -1


def _failure_table(sequence: str) -> array[int]:
    """For each prefix of `sequence`, the length of its longest proper prefix that is also
    its suffix: where matching resumes after a mismatch."""
    table = array("i", bytes(4 * len(sequence)))
    length = 0
    for at in range(1, len(sequence)):
        while length and sequence[at] != sequence[length]:
            length = table[length - 1]
        if sequence[at] == sequence[length]:
            length += 1
        table[at] = length
    return table
