"""SSE decoder and encoder: spec cases, every split position, random splits, round trips."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlx_gateway.parse.sse import (
    DONE,
    DataRun,
    SSEDecoder,
    SSEEvent,
    encode_comment,
    encode_data,
    encode_event,
)


def ev(data: str, event: str | None = None, id: str | None = None) -> SSEEvent:
    return SSEEvent(event, data, id)


def comment(text: str) -> SSEEvent:
    return SSEEvent(None, "", None, text)


def decode(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    out: list[SSEEvent] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out + decoder.flush()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


CASES: list[tuple[str, bytes, list[SSEEvent]]] = [
    ("lf", b"data: a\n\n", [ev("a")]),
    ("crlf", b"data: a\r\n\r\n", [ev("a")]),
    ("cr", b"data: a\r\r", [ev("a")]),
    ("mixed line ends", b"data: a\r\ndata: b\rdata: c\n\r\n", [ev("a\nb\nc")]),
    ("multi-line data", b"data: one\ndata: two\ndata:\n\n", [ev("one\ntwo\n")]),
    ("event and id", b"event: ping\nid: 7\ndata: {}\n\n", [ev("{}", "ping", "7")]),
    ("id carries over", b"id: 1\ndata: a\n\ndata: b\n\n", [ev("a", id="1"), ev("b", id="1")]),
    ("id with NUL ignored", b"id: a\0b\ndata: x\n\n", [ev("x")]),
    ("empty id resets", b"id: 1\ndata: a\n\nid\ndata: b\n\n", [ev("a", id="1"), ev("b", id="")]),
    ("one space stripped", b"data:  two spaces\n\n", [ev(" two spaces")]),
    ("no space", b"data:x\n\n", [ev("x")]),
    ("colon in value", b"data: a: b\n\n", [ev("a: b")]),
    ("field without colon", b"data\n\n", [ev("")]),
    ("unknown field ignored", b"foo: bar\ndata: x\n\n", [ev("x")]),
    ("no data, no event", b"event: x\n\n", []),
    ("event type resets", b"event: a\n\ndata: b\n\n", [ev("b")]),
    ("empty event name is default", b"event:\ndata: x\n\n", [ev("x")]),
    ("comment", b": keepalive 3/10\n\n", [comment("keepalive 3/10")]),
    ("comment without space", b":hi\n", [comment("hi")]),
    ("empty comment", b":\n", [comment("")]),
    ("comment before event", b": c\ndata: x\n\n", [comment("c"), ev("x")]),
    ("comment inside event", b"data: a\n: c\ndata: b\n\n", [comment("c"), ev("a\nb")]),
    ("bom stripped", b"\xef\xbb\xbfdata: x\n\n", [ev("x")]),
    ("utf-8", "data: héllo €😀\n\n".encode(), [ev("héllo €😀")]),
    ("invalid utf-8 replaced", b"data: \xff\n\n", [ev("\ufffd")]),
    ("trailing data flushed", b"data: last", [ev("last")]),
    ("trailing event flushed", b"data: a\ndata: b\n", [ev("a\nb")]),
    ("trailing cr flushed", b"data: a\r", [ev("a")]),
    ("done", DONE, [ev("[DONE]")]),
    (
        "openai stream",
        b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n',
        [ev('{"a":1}'), ev('{"b":2}'), ev("[DONE]")],
    ),
    ("blank lines only", b"\n\n\r\n\r", []),
    ("empty", b"", []),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_whole(data: bytes, expected: list[SSEEvent]) -> None:
    assert decode([data]) == expected


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_split_position(data: bytes, expected: list[SSEEvent]) -> None:
    for i in range(len(data) + 1):
        assert decode([data[:i], data[i:]]) == expected, i


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_byte_by_byte(data: bytes, expected: list[SSEEvent]) -> None:
    assert decode([data[i : i + 1] for i in range(len(data))]) == expected


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_pair_of_split_positions(data: bytes, expected: list[SSEEvent]) -> None:
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            assert decode([data[:i], data[i:j], data[j:]]) == expected, (i, j)


def test_crlf_split_across_feeds_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r") == [ev("a")]
    assert decoder.feed(b"\ndata: b\n\n") == [ev("b")]


def test_cr_then_empty_feed_then_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n\n") == [ev("a")]


def test_utf8_character_split_inside() -> None:
    data = "data: €😀\n\n".encode()
    for i in range(len(data)):
        decoder = SSEDecoder()
        out = decoder.feed(data[:i]) + decoder.feed(data[i:])
        assert out == [ev("€😀")]


def test_events_come_out_as_soon_as_dispatched() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\n") == [ev("a")]
    assert decoder.feed(b": ping\n") == [comment("ping")]


def test_retry() -> None:
    decoder = SSEDecoder()
    assert decoder.retry is None
    decoder.feed(b"retry: 3000\n\n")
    assert decoder.retry == 3000
    decoder.feed(b"retry: soon\nretry: -1\n\n")
    assert decoder.retry == 3000


def test_flush_resets() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a")
    assert decoder.flush() == [ev("a")]
    assert decoder.flush() == []
    assert decoder.feed(b"data: b\n\n") == [ev("b")]


def test_long_line_in_many_pieces() -> None:
    payload = b"x" * 100_000
    decoder = SSEDecoder()
    out: list[SSEEvent] = []
    for i in range(0, len(payload), 7):
        out += decoder.feed(payload[i : i + 7] if i else b"data: " + payload[:7])
    out += decoder.feed(b"\n\n")
    assert out == [ev("x" * 100_000)]


# --- runs of data-only events ---------------------------------------------------------------


def decode_runs(chunks: list[bytes]) -> list[SSEEvent]:
    """feed_runs with every DataRun expanded: must equal plain feed, whatever the splits."""
    decoder = SSEDecoder()
    out: list[SSEEvent] = []
    for chunk in chunks:
        for item in decoder.feed_runs(chunk):
            out += item.events() if isinstance(item, DataRun) else [item]
    return out + decoder.flush()


def runs_of(chunks: list[bytes]) -> list[SSEEvent | DataRun]:
    decoder = SSEDecoder()
    return [item for chunk in chunks for item in decoder.feed_runs(chunk)]


@pytest.mark.parametrize("data", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_runs_every_split_position(data: bytes) -> None:
    for i in range(len(data) + 1):
        for first in ([], [b"data: 0\n\n"]):  # a run can begin only after the first line
            chunks = [*first, data[:i], data[i:]]
            assert decode_runs(chunks) == decode(chunks), (first, i)


def test_a_read_of_data_events_is_one_run() -> None:
    items = runs_of([b"data: {}\n\n", b'data: {"a":1}\n\ndata: [DONE]\n\n'])
    assert items == [ev("{}"), DataRun(b'data: {"a":1}\n\ndata: [DONE]\n\n', 2)]
    run = items[1]
    assert isinstance(run, DataRun)
    assert run.joined(b",") == b'{"a":1},[DONE]'
    assert run.events() == [ev('{"a":1}'), ev("[DONE]")]


def test_a_run_stops_at_a_cut_event_which_completes_later() -> None:
    decoder = SSEDecoder()
    decoder.feed_runs(b"data: 0\n\n")
    assert decoder.feed_runs(b"data: a\n\ndata: b\n\ndata: c") == [
        DataRun(b"data: a\n\ndata: b\n\n", 2)
    ]
    assert decoder.feed_runs(b"d\n\n") == [ev("cd")]


@pytest.mark.parametrize(
    "read",
    [
        b"data: a\n\n: keepalive\n\n",  # a comment among them
        b"data: a\ndata: b\n\n",  # an event of two lines
        b"event: x\ndata: a\n\n",  # a named event
        b"data: a\r\n\r\n",  # other line ends
        b"data:a\n\n",  # no space after the colon
        b"data: a\n\n\ndata: b\n\n",  # a stray blank line
    ],
)
def test_anything_but_one_line_data_events_is_decoded_as_usual(read: bytes) -> None:
    decoder = SSEDecoder()
    decoder.feed_runs(b"data: 0\n\n")
    assert not any(isinstance(item, DataRun) for item in decoder.feed_runs(read))
    assert decode_runs([b"data: 0\n\n", read]) == decode([b"data: 0\n\n", read])


def test_no_run_in_the_middle_of_an_event() -> None:
    decoder = SSEDecoder()
    decoder.feed_runs(b"data: 0\n\nevent: x\n")
    assert decoder.feed_runs(b"data: a\n\n") == [SSEEvent("x", "a")]


def test_the_first_event_may_carry_a_byte_order_mark() -> None:
    read = b"\xef\xbb\xbfdata: a\n\ndata: b\n\ndata: c\n\n"
    assert runs_of([read]) == [ev("a"), DataRun(b"data: b\n\ndata: c\n\n", 2)]


def test_a_run_follows_the_end_of_an_event_cut_by_the_previous_read() -> None:
    decoder = SSEDecoder()
    decoder.feed_runs(b"data: 0\n\ndata: par")
    assert decoder.feed_runs(b"tial\n\ndata: a\n\ndata: b\n\n") == [
        ev("partial"),
        DataRun(b"data: a\n\ndata: b\n\n", 2),
    ]


@given(st.binary(max_size=200), st.data())
def test_runs_any_bytes_any_split_same_result(blob: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=8))
    assert decode_runs(split_at(blob, cuts)) == decode([blob])


@given(
    st.lists(st.sampled_from([b"data: x\n\n", b"data: {}\n\n", b": c\n\n", b"\n"]), max_size=30),
    st.data(),
)
def test_runs_of_stream_like_bytes_any_split_same_result(
    pieces: list[bytes], data: st.DataObject
) -> None:
    blob = b"".join(pieces)
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=8))
    assert decode_runs(split_at(blob, cuts)) == decode([blob])


# --- encoder -------------------------------------------------------------------------------


def test_encode_event() -> None:
    assert encode_event("ping", b'{"type":"ping"}') == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_encode_data() -> None:
    assert encode_data(b'{"a":1}') == b'data: {"a":1}\n\n'


def test_done() -> None:
    assert DONE == b"data: [DONE]\n\n"


def test_encode_comment() -> None:
    assert encode_comment("keepalive") == b": keepalive\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"


@pytest.mark.parametrize("payload", [b"a\nb", b"a\r\nb", b"a\rb", b"\n", b""])
def test_encode_multiline_payload_round_trips(payload: bytes) -> None:
    expected = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").decode()
    assert decode([encode_event("x", payload)]) == [ev(expected, "x")]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["event", "data", "comment"]),
            st.text(
                alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
                max_size=20,
            ),
        ),
        max_size=12,
    ),
    st.data(),
)
def test_round_trip_random_splits(items: list[tuple[str, str]], data: st.DataObject) -> None:
    wire = b""
    expected: list[SSEEvent] = []
    for kind, text in items:
        payload = text.encode()
        if kind == "event":
            wire += encode_event("e" + str(len(text)), payload)
            expected.append(ev(text, "e" + str(len(text))))
        elif kind == "data":
            wire += encode_data(payload)
            expected.append(ev(text))
        else:
            wire += encode_comment(text)
            expected.append(comment(text))
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=8))
    assert decode(split_at(wire, cuts)) == expected


@given(st.binary(max_size=200), st.data())
def test_any_bytes_any_split_same_result(blob: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=8))
    assert decode(split_at(blob, cuts)) == decode([blob])
