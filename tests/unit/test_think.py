"""ThinkSplitter and split_think: rules, every split position, random splits."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlx_gateway.parse.think import Kind, Piece, ThinkSplitter, split_think


def run(chunks: list[str], starts_in_reasoning: bool = False) -> list[Piece]:
    splitter = ThinkSplitter(starts_in_reasoning=starts_in_reasoning)
    out: list[Piece] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    return merged(out + splitter.finish())


def merged(pieces: list[Piece]) -> list[Piece]:
    out: list[Piece] = []
    for kind, text in pieces:
        assert text, "no empty pieces"
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + text)
        else:
            out.append((kind, text))
    return out


T: Kind = "thinking"
A: Kind = "text"

CASES: list[tuple[str, str, bool, list[Piece]]] = [
    ("plain", "Hello world", False, [(A, "Hello world")]),
    ("empty", "", False, []),
    ("think then answer", "<think>hmm</think>Hi", False, [(T, "hmm"), (A, "Hi")]),
    (
        "qwen newlines",
        "<think>\nLet me see.\n</think>\n\nThe answer.",
        False,
        [(T, "Let me see.\n"), (A, "The answer.")],
    ),
    ("empty think", "<think></think>Hi", False, [(A, "Hi")]),
    ("whitespace think", "<think>\n\n</think>\n\nHi", False, [(A, "Hi")]),
    ("only thinking", "<think>abc", False, [(T, "abc")]),
    ("only tags", "<think></think>", False, []),
    ("leading whitespace then think", "\n\n<think>x</think>y", False, [(T, "x"), (A, "y")]),
    ("leading whitespace kept for answer", "  Hi", False, [(A, "  Hi")]),
    ("whitespace-only reply kept", " \n", False, [(A, " \n")]),
    ("think after answer is text", "Hi <think>x</think>", False, [(A, "Hi <think>x</think>")]),
    ("stray close at start", "</think>\n\nHi", False, [(A, "Hi")]),
    ("stray close after whitespace", "\n</think>Hi", False, [(A, "Hi")]),
    ("stray close after text", "reason</think>\n\nHi", False, [(A, "reasonHi")]),
    ("second close is text", "<think>a</think>b</think>c", False, [(T, "a"), (A, "b</think>c")]),
    ("close after stray close is text", "</think>b</think>", False, [(A, "b</think>")]),
    ("reopen before answer", "<think>a</think><think>b</think>c", False, [(T, "ab"), (A, "c")]),
    (
        "open inside reasoning is text",
        "<think>a<think>b</think>c",
        False,
        [(T, "a<think>b"), (A, "c")],
    ),
    ("almost a tag", "a <thinking> b", False, [(A, "a <thinking> b")]),
    ("almost a tag first", "<thinking>x", False, [(A, "<thinking>x")]),
    ("lone lt", "a < b", False, [(A, "a < b")]),
    ("unfinished tag at end", "Hi <thi", False, [(A, "Hi <thi")]),
    ("unfinished close at end", "<think>a</thi", False, [(T, "a</thi")]),
    ("unfinished open at start", "<thi", False, [(A, "<thi")]),
    ("in reasoning", "hmm</think>\n\nHi", True, [(T, "hmm"), (A, "Hi")]),
    ("in reasoning, leading ws", "\nhmm\n</think>Hi", True, [(T, "hmm\n"), (A, "Hi")]),
    ("in reasoning, duplicate open", "\n<think>\nhmm</think>Hi", True, [(T, "hmm"), (A, "Hi")]),
    ("in reasoning, late open is text", "a<think>b</think>c", True, [(T, "a<think>b"), (A, "c")]),
    ("in reasoning, never closed", "all thoughts", True, [(T, "all thoughts")]),
    ("in reasoning, empty", "</think>Hi", True, [(A, "Hi")]),
    ("in reasoning, nothing", "", True, []),
    ("unicode", "<think>é😀</think>ü", False, [(T, "é😀"), (A, "ü")]),
    ("lt before tag", "<<think>x</think>", False, [(A, "<<think>x</think>")]),
    ("lt then tag in reasoning", "<think>a<</think>b", False, [(T, "a<"), (A, "b")]),
]

IDS = [c[0] for c in CASES]
PARAMS = [c[1:] for c in CASES]


@pytest.mark.parametrize(("text", "in_reasoning", "expected"), PARAMS, ids=IDS)
def test_whole(text: str, in_reasoning: bool, expected: list[Piece]) -> None:
    assert run([text], in_reasoning) == expected


@pytest.mark.parametrize(("text", "in_reasoning", "expected"), PARAMS, ids=IDS)
def test_every_split_position(text: str, in_reasoning: bool, expected: list[Piece]) -> None:
    for i in range(len(text) + 1):
        assert run([text[:i], text[i:]], in_reasoning) == expected, i


@pytest.mark.parametrize(("text", "in_reasoning", "expected"), PARAMS, ids=IDS)
def test_character_by_character(text: str, in_reasoning: bool, expected: list[Piece]) -> None:
    assert run(list(text), in_reasoning) == expected


def test_emits_immediately_and_holds_only_tag_prefixes() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("<think>abc") == [(T, "abc")]
    assert splitter.feed("def</th") == [(T, "def")]
    assert splitter.feed("ink>\n") == []
    assert splitter.feed("\nAns<") == [(A, "Ans<")]  # no tag can start here any more
    assert splitter.feed("think>") == [(A, "think>")]
    assert splitter.finish() == []


def test_holds_close_prefix_while_a_stray_close_is_possible() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("Ans </thi") == [(A, "Ans ")]
    assert splitter.feed("nk>rest") == [(A, "rest")]


def test_leading_whitespace_waits_for_kind() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("\n") == []
    assert splitter.feed(" ") == []
    assert splitter.feed("x") == [(A, "\n x")]


def test_feed_merges_same_kind() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("<think>a<think>b") == [(T, "a<think>b")]


def test_finish_twice() -> None:
    splitter = ThinkSplitter()
    splitter.feed("x <thi")
    assert splitter.finish() == [(A, "<thi")]
    assert splitter.finish() == []


SPLIT_CASES: list[tuple[str, tuple[str, str]]] = [
    ("Hello", ("", "Hello")),
    ("<think>a</think>\n\nb", ("a", "b")),
    ("reasoning\n</think>\n\nanswer", ("reasoning\n", "answer")),  # prompt opened the block
    ("\n\nreasoning</think>answer", ("reasoning", "answer")),
    ("<think>a</think>b</think>c", ("a", "b</think>c")),
    ("<think>unfinished", ("unfinished", "")),
    ("", ("", "")),
]


@pytest.mark.parametrize(("text", "expected"), SPLIT_CASES)
def test_split_think(text: str, expected: tuple[str, str]) -> None:
    assert split_think(text) == expected


ALPHABET = st.sampled_from(
    ["<think>", "</think>", "<", "/", "t", "h", "i", "nk", ">", " ", "\n", "a", "é"]
)


@given(st.lists(ALPHABET, max_size=25).map("".join), st.booleans(), st.data())
def test_random_splits_match_whole_feed(text: str, in_reasoning: bool, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    bounds = [0, *cuts, len(text)]
    chunks = [text[a:b] for a, b in pairwise(bounds)]
    assert run(chunks, in_reasoning) == run([text], in_reasoning)


@given(st.lists(ALPHABET, max_size=25).map("".join), st.booleans())
def test_nothing_lost_but_tags_and_whitespace(text: str, in_reasoning: bool) -> None:
    out = "".join(piece for _, piece in run([text], in_reasoning))
    assert without_tags_and_space(out) == without_tags_and_space(text)


def without_tags_and_space(text: str) -> str:
    text = "".join(text.split())
    while "<think>" in text or "</think>" in text:
        text = text.replace("<think>", "").replace("</think>", "")
    return text


@given(st.text(alphabet=st.characters(blacklist_characters="<"), max_size=40))
def test_text_without_tags_passes_through(text: str) -> None:
    splitter = ThinkSplitter()
    out = splitter.feed(text)
    assert merged(out + splitter.finish()) == ([(A, text)] if text else [])
    if text and not text.isspace():
        assert out == [(A, text)]
