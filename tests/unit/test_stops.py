"""Stop sequences: the watcher, resolve_stop_sequence and the cutter."""

from __future__ import annotations

import tracemalloc
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlx_gateway.parse.stops import StopSequenceCutter, StopSequenceWatcher, resolve_stop_sequence

# --- watcher -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stops", "chunks", "expected"),
    [
        (["END"], ["hello END"], "END"),
        (["END"], ["hello EN", "D"], "END"),
        (["END"], ["hello E", "N", "D"], "END"),
        (["END"], ["END hello"], None),
        (["END"], [], None),
        (["END", "D"], ["xEND"], "END"),  # the longest of those that fit
        (["a", "ba"], ["cba"], "ba"),
        ([], ["anything"], None),
        ([""], ["anything"], None),
        (["\n\n"], ["para\n", "\n"], "\n\n"),
    ],
)
def test_watcher(stops: list[str], chunks: list[str], expected: str | None) -> None:
    watcher = StopSequenceWatcher(stops)
    for chunk in chunks:
        watcher.feed(chunk)
    assert watcher.matched() == expected


def test_watcher_memory_is_bounded() -> None:
    watcher = StopSequenceWatcher(["STOP", "xy"])
    for _ in range(1000):
        watcher.feed("some text ")
    assert len(watcher.tail) <= 4
    watcher.feed("ST")
    watcher.feed("OP")
    assert watcher.tail == "STOP"


@given(st.lists(st.text(alphabet="abS", max_size=6), max_size=10))
def test_watcher_matches_endswith(chunks: list[str]) -> None:
    stops = ["SS", "aS", "b"]
    watcher = StopSequenceWatcher(stops)
    for chunk in chunks:
        watcher.feed(chunk)
    whole = "".join(chunks)
    fits = [s for s in stops if whole.endswith(s)]
    assert watcher.matched() == (max(fits, key=len) if fits else None)


# --- resolve_stop_sequence -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("stops", "finish", "backend", "tail", "expected"),
    [
        (["END"], "stop", "END", "", "END"),  # vLLM names it
        (["END", "X"], "stop", "X", "END", "X"),  # the backend's word wins
        (["END"], "stop", None, "", None),  # EOS or stripped: unknowable
        (["END"], "stop", 151645, "", None),  # vLLM: a stop token id
        (["END"], "stop", "OTHER", "", None),  # not one we asked for
        (["END"], "stop", None, "text END", "END"),  # the backend kept it
        (["END"], "length", "END", "END", None),
        (["END"], "tool_calls", None, "END", None),
        (["END"], None, None, "END", None),
        ([], "stop", "END", "END", None),
        ([""], "stop", "", "", None),
    ],
)
def test_resolve(
    stops: list[str], finish: str | None, backend: object, tail: str, expected: str | None
) -> None:
    assert resolve_stop_sequence(stops, finish, backend, tail) == expected


# --- cutter ---------------------------------------------------------------------------------


def cut(stops: list[str], chunks: list[str]) -> tuple[str, str | None]:
    cutter = StopSequenceCutter(stops)
    out: list[str] = []
    matched = None
    for chunk in chunks:
        text, matched = cutter.feed(chunk)
        out.append(text)
    if matched is None:
        out.append(cutter.finish())
    return "".join(out), matched


CUT_CASES: list[tuple[list[str], str, tuple[str, str | None]]] = [
    (["END"], "hello END world", ("hello ", "END")),
    (["END"], "hello world", ("hello world", None)),
    (["END"], "hello EN", ("hello EN", None)),
    (["END"], "ENEND", ("EN", "END")),
    (["END"], "EEND", ("E", "END")),
    (["abcd", "bc"], "xabcd", ("xa", "bc")),  # "bc" completes first
    (["abc", "bc"], "xabc", ("x", "abc")),  # same end: the longest
    (["bc", "abc"], "xabc", ("x", "abc")),
    (["\n\nHuman:"], "Hi\n\nHuman: next", ("Hi", "\n\nHuman:")),
    (["aa"], "aaaa", ("", "aa")),
    (["ab", "b"], "ab", ("", "ab")),
    (["é😀"], "xé😀y", ("x", "é😀")),
    ([], "anything", ("anything", None)),
    ([""], "anything", ("anything", None)),
    (["x"], "", ("", None)),
]

CUT_IDS = [f"{stops}-{text!r}" for stops, text, _ in CUT_CASES]


@pytest.mark.parametrize(("stops", "text", "expected"), CUT_CASES, ids=CUT_IDS)
def test_cutter_whole(stops: list[str], text: str, expected: tuple[str, str | None]) -> None:
    assert cut(stops, [text]) == expected


@pytest.mark.parametrize(("stops", "text", "expected"), CUT_CASES, ids=CUT_IDS)
def test_cutter_every_split(stops: list[str], text: str, expected: tuple[str, str | None]) -> None:
    for i in range(len(text) + 1):
        assert cut(stops, [text[:i], text[i:]]) == expected, i


@pytest.mark.parametrize(("stops", "text", "expected"), CUT_CASES, ids=CUT_IDS)
def test_cutter_char_by_char(stops: list[str], text: str, expected: tuple[str, str | None]) -> None:
    assert cut(stops, list(text)) == expected


def test_cutter_holds_only_possible_prefixes() -> None:
    cutter = StopSequenceCutter(["STOP"])
    assert cutter.feed("abc S") == ("abc ", None)
    assert cutter.feed("T") == ("", None)
    assert cutter.feed("x") == ("STx", None)
    assert cutter.feed("STO") == ("", None)
    assert cutter.feed("P and more") == ("", "STOP")
    assert cutter.feed("later") == ("", "STOP")
    assert cutter.matched == "STOP"
    assert cutter.finish() == ""


def test_cutter_finish_releases_held_text() -> None:
    cutter = StopSequenceCutter(["STOP"])
    assert cutter.feed("ST") == ("", None)
    assert cutter.finish() == "ST"
    assert cutter.matched is None


def reference_cut(stops: list[str], text: str) -> tuple[str, str | None]:
    """What a backend checking after every character does."""
    for end in range(1, len(text) + 1):
        fits = [s for s in stops if s and text[:end].endswith(s)]
        if fits:
            seq = max(fits, key=len)
            return text[: end - len(seq)], seq
    return text, None


STOP_LISTS = st.lists(st.text(alphabet="abc", min_size=1, max_size=4), min_size=1, max_size=3)


@given(STOP_LISTS, st.text(alphabet="abcd", max_size=30), st.data())
def test_cutter_matches_reference_on_random_splits(
    stops: list[str], text: str, data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    chunks = [text[a:b] for a, b in pairwise([0, *cuts, len(text)])]
    assert cut(stops, chunks) == reference_cut(stops, text)


@given(STOP_LISTS, st.lists(st.text(alphabet="abcd", max_size=8), max_size=10))
def test_cutter_holds_back_only_a_stop_prefix(stops: list[str], chunks: list[str]) -> None:
    cutter = StopSequenceCutter(stops)
    fed, emitted = "", ""
    for chunk in chunks:
        text, matched = cutter.feed(chunk)
        fed += chunk
        emitted += text
        if matched is not None:
            return
        assert fed.startswith(emitted)
        prefixes = {s[:i] for s in stops for i in range(1, len(s))}
        needed = max((p for p in prefixes if fed.endswith(p)), key=len, default="")
        assert fed[len(emitted) :] == needed


def test_cutter_memory_and_work_are_linear_in_a_long_sequence() -> None:
    """One 40,000-character sequence once cost 800 million characters of prefixes."""
    sequence = "a" * 39_999 + "b"
    tracemalloc.start()
    try:
        cutter = StopSequenceCutter([sequence])
        emitted = [cutter.feed("a" * 1_000) for _ in range(60)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024
    assert "".join(text for text, _ in emitted) == "a" * 20_001
    assert cutter.feed("b") == ("", sequence)


@given(st.lists(st.text(alphabet="ab", min_size=1, max_size=12), min_size=1, max_size=3))
def test_cutter_on_periodic_sequences(stops: list[str]) -> None:
    """Sequences that overlap themselves exercise the automaton's fallbacks."""
    text = "ab" * 10 + "aab" * 5 + "b" * 3
    for size in (1, 2, 5):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        assert cut(stops, chunks) == reference_cut(stops, text)
