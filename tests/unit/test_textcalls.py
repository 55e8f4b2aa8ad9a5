"""Text tool calls: table cases, every split position, streaming behaviour, random input."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_gateway.parse.textcalls import (
    TextPiece,
    TextToolCallEvent,
    TextToolCallExtractor,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    extract_text_tool_calls,
)

Calls = list[tuple[str, Any]]


def run(chunks: list[str]) -> list[TextToolCallEvent]:
    extractor = TextToolCallExtractor()
    out: list[TextToolCallEvent] = []
    for chunk in chunks:
        out += extractor.feed(chunk)
    return out + extractor.finish()


def summarize(events: list[TextToolCallEvent]) -> tuple[str, list[tuple[str, str]]]:
    """Text and (name, arguments) per call, checking the event grammar on the way."""
    text: list[str] = []
    calls: list[tuple[str, list[str]]] = []
    open_call: int | None = None
    for event in events:
        if isinstance(event, TextPiece):
            assert open_call is None
            assert event.text
            text.append(event.text)
        elif isinstance(event, ToolCallStart):
            assert open_call is None
            assert event.index == len(calls)
            open_call = event.index
            calls.append((event.name, []))
        elif isinstance(event, ToolCallArgs):
            assert event.index == open_call
            assert event.fragment
            calls[-1][1].append(event.fragment)
        else:
            assert isinstance(event, ToolCallEnd)
            assert event.index == open_call
            open_call = None
    assert open_call is None
    result = [(name, "".join(parts)) for name, parts in calls]
    for _, args in result:
        assert isinstance(json.loads(args), dict), args
    return "".join(text), result


def decoded(summary: tuple[str, list[tuple[str, str]]]) -> tuple[str, Calls]:
    text, calls = summary
    return text, [(name, json.loads(args)) for name, args in calls]


def call(name: str, args: str) -> str:
    return f'<tool_call>{{"name": "{name}", "arguments": {args}}}</tool_call>'


CASES: list[tuple[str, str, str, Calls]] = [
    ("no calls", "Just text.", "Just text.", []),
    ("empty", "", "", []),
    (
        "one call",
        call("get_weather", '{"city": "Paris"}'),
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "text before",
        "Let me check.\n\n" + call("f", '{"a": 1}'),
        "Let me check.\n\n",
        [("f", {"a": 1})],
    ),
    (
        "qwen layout",
        '<tool_call>\n{"name": "f", "arguments": {"a": [1, 2.5, -3e2, true, false, null]}}\n'
        "</tool_call>",
        "",
        [("f", {"a": [1, 2.5, -300.0, True, False, None]})],
    ),
    (
        "two calls and text between",
        call("a", "{}") + "\n" + call("b", '{"x": {"y": []}}') + "\nDone.",
        "Done.",
        [("a", {}), ("b", {"x": {"y": []}})],
    ),
    (
        "text between kept",
        call("a", "{}") + " and " + call("b", "{}"),
        "and ",
        [("a", {}), ("b", {})],
    ),
    (
        "parameters key",
        '<tool_call>{"name": "f", "parameters": {"q": "x"}}</tool_call>',
        "",
        [("f", {"q": "x"})],
    ),
    (
        "arguments as a JSON string",
        '<tool_call>{"name": "f", "arguments": "{\\"q\\": 1}"}</tool_call>',
        "",
        [("f", {"q": 1})],
    ),
    (
        "arguments before name",
        '<tool_call>{"arguments": {"q": 1}, "name": "f"}</tool_call>',
        "",
        [("f", {"q": 1})],
    ),
    ("missing arguments", '<tool_call>{"name": "f"}</tool_call>', "", [("f", {})]),
    ("null arguments", '<tool_call>{"name": "f", "arguments": null}</tool_call>', "", [("f", {})]),
    ("list arguments", '<tool_call>{"name": "f", "arguments": [1]}</tool_call>', "", [("f", {})]),
    (
        "openai wrapper",
        '<tool_call>{"type": "function", "function": {"name": "f", "arguments": "{}"}}</tool_call>',
        "",
        [("f", {})],
    ),
    (
        "list of calls",
        '<tool_call>[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]'
        "</tool_call>",
        "",
        [("a", {}), ("b", {"x": 1})],
    ),
    (
        "closing tag inside a string",
        call("w", '{"content": "a </tool_call> b"}'),
        "",
        [("w", {"content": "a </tool_call> b"})],
    ),
    (
        "escapes",
        call("w", r'{"s": "q\" b\\ u\u00e9 n\n t\t s\/"}'),
        "",
        [("w", {"s": 'q" b\\ ué n\n t\t s/'})],
    ),
    ("raw newline in a string", call("w", '{"s": "a\nb\tc"}'), "", [("w", {"s": "a\nb\tc"})]),
    (
        "python literals",
        call("f", '{"a": True, "b": False, "c": None}'),
        "",
        [("f", {"a": True, "b": False, "c": None})],
    ),
    ("single quotes repaired", call("f", "{'city': 'Paris'}"), "", [("f", {"city": "Paris"})]),
    (
        "single-quoted value repaired",
        call("f", "{\"city\": 'Paris'}"),
        "",
        [("f", {"city": "Paris"})],
    ),
    (
        "late break keeps what is valid",
        call("f", '{"a": 1, "b": undefined}'),
        "",
        [("f", {"a": 1})],
    ),
    ("trailing comma", call("f", '{"a": 1,}'), "", [("f", {"a": 1})]),
    (
        "missing wrapper brace",
        '<tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>',
        "",
        [("f", {"a": 1})],
    ),
    (
        "broken body repaired",
        "<tool_call>{'name': 'f', 'arguments': {'a': 1}}</tool_call>",
        "",
        [("f", {"a": 1})],
    ),
    ("not a call", "<tool_call>hello</tool_call> x", "<tool_call>hello</tool_call> x", []),
    ("empty tag", "<tool_call></tool_call>", "<tool_call></tool_call>", []),
    ("unterminated head", '<tool_call>{"name": "f", "argu', "", [("f", {})]),
    (
        "unterminated args",
        '<tool_call>{"name": "f", "arguments": {"a": "xy',
        "",
        [("f", {"a": "xy"})],
    ),
    (
        "unterminated after comma",
        '<tool_call>{"name": "f", "arguments": {"a": 1, "b',
        "",
        [("f", {"a": 1})],
    ),
    (
        "unterminated in number",
        '<tool_call>{"name": "f", "arguments": {"a": 12',
        "",
        [("f", {"a": 12})],
    ),
    (
        "unterminated in escape",
        '<tool_call>{"name": "f", "arguments": {"a": "x\\u00',
        "",
        [("f", {"a": "x"})],
    ),
    (
        "unterminated nested",
        '<tool_call>{"name": "f", "arguments": {"a": [{"b": [1',
        "",
        [("f", {"a": [{"b": [1]}]})],
    ),
    ("unterminated garbage", "<tool_call>hello", "<tool_call>hello", []),
    ("unterminated nothing", "<tool_call>", "<tool_call>", []),
    ("unterminated whole body", '<tool_call>{"arguments": {}, "name": "f"}', "", [("f", {})]),
    ("tag cut in half", "text <tool_ca", "text <tool_ca", []),
    ("lone lt", "a < b <", "a < b <", []),
    ("close tag outside a call", "a </tool_call> b", "a </tool_call> b", []),
    (
        "closing tag right after args",
        call("f", "{}")[: -len("}</tool_call>")] + "</tool_call>",
        "",
        [("f", {})],
    ),
    (
        "early close inside args",
        '<tool_call>{"name": "f", "arguments": {"a": 1, </tool_call>after',
        "after",
        [("f", {"a": 1})],
    ),
    (
        "name with escapes",
        '<tool_call>{"name": "f\\u0031", "arguments": {}}</tool_call>',
        "",
        [("f1", {})],
    ),
    (
        "empty name is not a call",
        '<tool_call>{"name": "", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "", "arguments": {}}</tool_call>',
        [],
    ),
    ("extra wrapper keys dropped", call("f", '{"a": 1}, "id": 3'), "", [("f", {"a": 1})]),
    (
        "unicode",
        "é " + call("f", '{"s": "😀ü"}') + " ü",
        "é ü",
        [("f", {"s": "😀ü"})],
    ),
]

IDS = [c[0] for c in CASES]
PARAMS = [c[1:] for c in CASES]


@pytest.mark.parametrize(("text", "expected_text", "expected_calls"), PARAMS, ids=IDS)
def test_whole(text: str, expected_text: str, expected_calls: Calls) -> None:
    assert decoded(summarize(run([text]))) == (expected_text, expected_calls)


@pytest.mark.parametrize(("text", "expected_text", "expected_calls"), PARAMS, ids=IDS)
def test_every_split_position(text: str, expected_text: str, expected_calls: Calls) -> None:
    whole = summarize(run([text]))
    for i in range(len(text) + 1):
        assert summarize(run([text[:i], text[i:]])) == whole, i


@pytest.mark.parametrize(("text", "expected_text", "expected_calls"), PARAMS, ids=IDS)
def test_character_by_character(text: str, expected_text: str, expected_calls: Calls) -> None:
    assert summarize(run(list(text))) == summarize(run([text]))


@pytest.mark.parametrize(("text", "expected_text", "expected_calls"), PARAMS, ids=IDS)
def test_extract_helper(text: str, expected_text: str, expected_calls: Calls) -> None:
    remaining, calls = extract_text_tool_calls(text)
    assert remaining == expected_text
    assert [(name, json.loads(args)) for name, args in calls] == expected_calls


def test_arguments_stream_before_the_tag_closes() -> None:
    extractor = TextToolCallExtractor()
    assert extractor.feed("Sure. <tool") == [TextPiece("Sure. ")]
    assert extractor.feed('_call>{"name": "write", "argu') == []
    assert extractor.feed('ments": {"path": "a.py", "content": "line 1\\n') == [
        ToolCallStart(0, "write"),
        ToolCallArgs(0, '{"path": "a.py", "content": "line 1\\n'),
    ]
    assert extractor.feed("line 2") == [ToolCallArgs(0, "line 2")]
    assert extractor.feed('", "mode": ') == [ToolCallArgs(0, '"')]  # a key waits for its value
    assert extractor.feed("12") == []  # a number may go on
    assert extractor.feed("}") == [ToolCallArgs(0, ', "mode": 12}')]
    assert extractor.feed("}\n</tool_call>\n\nDone") == [ToolCallEnd(0), TextPiece("Done")]
    assert extractor.finish() == []


def test_name_first_body_streams_immediately_after_head() -> None:
    extractor = TextToolCallExtractor()
    assert extractor.feed('<tool_call>{"name": "f", "arguments": ') == []
    assert extractor.feed("{") == [ToolCallStart(0, "f"), ToolCallArgs(0, "{")]


def test_whole_body_fallback_waits_for_close() -> None:
    extractor = TextToolCallExtractor()
    assert extractor.feed('<tool_call>{"arguments": {"a": 1}, ') == []
    assert extractor.feed('"name": "f"}</tool_') == []
    assert extractor.feed("call>") == [
        ToolCallStart(0, "f"),
        ToolCallArgs(0, '{"a": 1}'),
        ToolCallEnd(0),
    ]


def test_text_is_not_held_without_reason() -> None:
    extractor = TextToolCallExtractor()
    assert extractor.feed("a <b> c <") == [TextPiece("a <b> c ")]
    assert extractor.feed("x") == [TextPiece("<x")]


def test_finish_twice() -> None:
    extractor = TextToolCallExtractor()
    extractor.feed('<tool_call>{"name": "f", "arguments": {"a": "b')
    assert extractor.finish() == [ToolCallArgs(0, '"}'), ToolCallEnd(0)]
    assert extractor.finish() == []


@pytest.mark.parametrize(
    "body", ["[" * 100_000, '{"a":' * 100_000, '{"name": "f", "arguments": [' * 50_000]
)
def test_absurd_nesting_is_text_not_a_crash(body: str) -> None:
    text = f"<tool_call>{body}</tool_call>"
    assert extract_text_tool_calls(text) == (text, [])


def test_deep_streamed_arguments_stay_valid() -> None:
    text = '<tool_call>{"name": "f", "arguments": ' + '{"a": [' * 5000 + "</tool_call>"
    remaining, [(name, args)] = extract_text_tool_calls(text)
    assert (remaining, name) == ("", "f")
    assert args == '{"a": [' * 5000 + "]}" * 5000


def test_many_calls_in_one_feed() -> None:
    text = "".join(call(f"f{i}", f'{{"i": {i}}}') for i in range(20))
    _, calls = extract_text_tool_calls(text)
    assert calls == [(f"f{i}", f'{{"i": {i}}}') for i in range(20)]


# --- properties -----------------------------------------------------------------------------

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
ARGS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5)
NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]{0,15}", fullmatch=True)
PLAIN = st.text(alphabet=st.characters(blacklist_characters="<"), max_size=20)


def chunked(text: str, cuts: list[int]) -> list[str]:
    return [text[a:b] for a, b in pairwise([0, *sorted(cuts), len(text)])]


@settings(max_examples=300)
@given(
    st.lists(st.tuples(PLAIN, NAMES, ARGS, st.sampled_from([None, 2]), st.booleans()), max_size=3),
    PLAIN,
    st.data(),
)
def test_valid_calls_round_trip(
    calls: list[tuple[str, str, dict[str, Any], int | None, bool]],
    tail: str,
    data: st.DataObject,
) -> None:
    text = ""
    for before, name, args, indent, ascii_only in calls:
        body = json.dumps({"name": name, "arguments": args}, indent=indent, ensure_ascii=ascii_only)
        text += f"{before}<tool_call>\n{body}\n</tool_call>"
    text += tail
    # Whitespace right after a call is dropped.
    texts = [before for before, *_ in calls] + [tail]
    expected_text = texts[0] + "".join(t.lstrip() for t in texts[1:])
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=8))
    got = decoded(summarize(run(chunked(text, cuts))))
    assert got == (expected_text, [(name, args) for _, name, args, _, _ in calls])


TOKENS = st.sampled_from(
    [
        "<tool_call>",
        "</tool_call>",
        "{",
        "}",
        "[",
        "]",
        '"name"',
        '"arguments"',
        '"f"',
        '"a"',
        ":",
        ",",
        " ",
        "\n",
        "1",
        "-",
        ".",
        "True",
        "null",
        '"',
        "\\",
        "'",
        "x",
        "<",
        "u",
        "é",
    ]
)


@settings(max_examples=500)
@given(st.lists(TOKENS, max_size=40).map("".join), st.data())
def test_random_input_any_split_same_result_and_valid_json(text: str, data: st.DataObject) -> None:
    whole = summarize(run([text]))  # also checks event grammar and that arguments are objects
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=8))
    assert summarize(run(chunked(text, cuts))) == whole


@given(PLAIN, st.data())
def test_plain_text_passes_through(text: str, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=5))
    events = run(chunked(text, cuts))
    assert summarize(events) == (text, [])
