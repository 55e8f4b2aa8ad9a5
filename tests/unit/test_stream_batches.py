"""Chunks that arrive in one read are translated as a batch: runs of plain text or reasoning
leave as one delta each, and everything else must be exactly what feeding them one by one gives.
The backend bytes of such a read are decoded as one JSON array, with the same errors as before."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_gateway.anthropic.answer import assemble_message
from mlx_gateway.anthropic.stream import PING, StreamTranslator
from mlx_gateway.errors import BadBackendResponse
from mlx_gateway.parse.chat import ChatCompletionChunk
from mlx_gateway.parse.chunkreader import ChunkReader
from mlx_gateway.server.streaming import encode_events
from tests.support.anthropic_stream import accumulate, assert_well_formed, parse_sse
from tests.unit.test_stream import (
    chunk,
    chunkings,
    deltas,
    replies,
    text_chunks,
    tool_delta,
    translator,
    usage_chunk,
)

Event = dict[str, Any]


def one_by_one(chunks: list[ChatCompletionChunk], **options: Any) -> list[Event]:
    stream = translator(**options)
    events = stream.start()
    for item in chunks:
        events += stream.feed(item)
    return events + stream.finish()


def in_batches(chunks: list[ChatCompletionChunk], cuts: list[int], **options: Any) -> list[Event]:
    stream = translator(**options)
    events = stream.start()
    bounds = [0, *sorted(cuts), len(chunks)]
    for start, end in pairwise(bounds):
        events += stream.feed_batch(chunks[start:end])
    events += stream.finish()
    assert_well_formed(events)
    return events


def test_a_run_of_text_after_the_first_piece_is_one_delta() -> None:
    chunks = text_chunks(["Hel", "lo", " wor", "ld"])
    events = in_batches(chunks, [])
    # The answer's first text goes alone through the check for an opening <think>.
    assert deltas(events, "text_delta") == ["Hel", "lo world"]
    assert accumulate(events) == accumulate(one_by_one(chunks))


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_a_run_of_reasoning_is_one_thinking_delta(field: str) -> None:
    chunks = [chunk(**{field: piece}) for piece in ["Let", " me", " think"]]
    chunks += text_chunks(["Yes"])
    events = in_batches(chunks, [])
    assert deltas(events, "thinking_delta") == ["Let me think"]
    assert accumulate(events) == accumulate(one_by_one(chunks))


def test_a_tag_or_a_tool_call_ends_the_run() -> None:
    chunks = [
        chunk("a"),
        chunk("b"),
        chunk("c<"),
        chunk("d"),
        chunk(tool_calls=[tool_delta(0, id_="call_1", name="f", arguments="{}")]),
        chunk(finish_reason="tool_calls"),
    ]
    events = in_batches(chunks, [])
    assert deltas(events, "text_delta") == deltas(one_by_one(chunks), "text_delta")
    assert accumulate(events) == accumulate(one_by_one(chunks))


def test_output_pieces_are_counted_per_chunk_when_the_backend_gives_no_usage() -> None:
    events = in_batches(text_chunks(["a", "b", "c", "d"], usage=None), [])
    assert accumulate(events)["usage"]["output_tokens"] == 4


@pytest.mark.parametrize("cuts", [[], [2], [3], [4]])
def test_reasoning_inside_a_text_tool_call_follows_the_call(cuts: list[int]) -> None:
    """A server with a reasoning parser but no tool parser may send reasoning while the model
    writes a call as text: the call's block stays whole, the reasoning becomes the next block."""
    chunks = [
        chunk('<tool_call>{"name": "f", "arguments": {"a"'),
        chunk(reasoning_content="wait"),
        chunk(reasoning_content=", think"),
        chunk(": 1}}</tool_call>"),
        chunk(finish_reason="tool_calls"),
    ]
    message = accumulate(in_batches(chunks, cuts))
    assert [block["type"] for block in message["content"]] == ["tool_use", "thinking"]
    assert message["content"][0]["input"] == {"a": 1}
    assert message["content"][1]["thinking"] == "wait, think"
    assert message == accumulate(one_by_one(chunks))


def test_reasoning_held_by_a_call_cut_short_comes_out_at_the_end() -> None:
    chunks = [chunk('<tool_call>{"name": "f", "arguments": {"a"'), chunk(reasoning="hm")]
    chunks.append(chunk(finish_reason="length"))
    message = accumulate(in_batches(chunks, []))
    assert [block["type"] for block in message["content"]] == ["tool_use", "thinking"]
    assert message["stop_reason"] == "max_tokens"


def test_stop_sequences_are_watched_inside_a_batch() -> None:
    chunks = text_chunks(["one ", "two ", "ST", "OP three"])
    stream = translator(stop_sequences=["STOP"])
    events = stream.start() + stream.feed_batch(chunks)
    assert stream.stopped
    events += stream.finish()
    message = accumulate(events)
    assert message["content"] == [{"type": "text", "text": "one two "}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "STOP")


CHUNK_KINDS = st.sampled_from(["reasoning", "reasoning_content", "empty"])


@st.composite
def mixed_streams(draw: st.DrawFn) -> list[ChatCompletionChunk]:
    """Text (inline tags included), reasoning in either field, empty deltas, then tool calls."""
    content = draw(replies())
    chunks = [chunk(piece) for piece in draw(chunkings(content))]
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(CHUNK_KINDS)
        spot = draw(st.integers(0, len(chunks)))
        if kind.startswith("reasoning"):
            chunks.insert(spot, chunk(**{kind: draw(st.sampled_from(["x", " y", "\n"]))}))
        elif kind == "empty":
            chunks.insert(spot, chunk(""))
    if draw(st.booleans()):
        chunks.append(chunk(tool_calls=[tool_delta(0, id_="call_1", name="f")]))
        chunks += [chunk(tool_calls=[tool_delta(0, arguments=a)]) for a in ['{"a"', ": 1}"]]
    chunks.append(chunk(finish_reason=draw(st.sampled_from(["stop", "length", "tool_calls"]))))
    if draw(st.booleans()):
        chunks.append(usage_chunk())
    return chunks


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_batching_gives_the_same_message_as_one_by_one(data: st.DataObject) -> None:
    chunks = data.draw(mixed_streams())
    cuts = data.draw(st.lists(st.integers(0, len(chunks)), max_size=6))
    options: dict[str, Any] = data.draw(
        st.sampled_from([{}, {"starts_in_reasoning": True}, {"stop_sequences": ["y\n"]}])
    )
    assert accumulate(in_batches(chunks, cuts, **options)) == accumulate(
        one_by_one(chunks, **options)
    )


# ---- backend bytes to events ------------------------------------------------------------------


def sse(*payloads: Any) -> bytes:
    return b"".join(
        b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n"
        for p in payloads
    )


def wire_chunk(content: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}


def translate_reads(*reads: bytes, learn_from: int = 2, **options: Any) -> list[Event]:
    """The events for backend bytes that came in these reads, as the client reads them;
    templates are learned from short runs too, so that tests reach that path."""
    stream: StreamTranslator = translator(**options)
    reader = ChunkReader(stream, learn_from)
    events = stream.start()
    for read in reads:
        events += reader.feed(read)
    return parse_sse(encode_events([*events, *reader.flush(), *stream.finish()]))


def test_a_read_ending_with_done_is_translated_whole() -> None:
    first = sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    rest = sse(wire_chunk("a"), wire_chunk("b"), wire_chunk("c"), b"[DONE]")
    assert deltas(translate_reads(first, rest), "text_delta") == ["a", "bc"]


def test_a_keepalive_between_chunks_becomes_a_ping_in_its_place() -> None:
    reads = sse(wire_chunk("a")) + b": keepalive\n\n" + sse(wire_chunk("b"))
    events = translate_reads(sse(wire_chunk("")), reads)
    kinds = [e["type"] for e in events if e["type"] in {"ping", "content_block_delta"}]
    assert kinds == ["ping", "content_block_delta", "ping", "content_block_delta"]
    assert PING in events


@pytest.mark.parametrize(
    "bad",
    [
        b'{"choices": 3}',  # not a chunk
        b"{not json",
        json.dumps(wire_chunk("x")).encode() + b"," + json.dumps(wire_chunk("y")).encode(),
    ],
    ids=["wrong shape", "not json", "two objects in one event"],
)
def test_a_bad_chunk_in_a_run_is_named(bad: bytes) -> None:
    reads = (sse(wire_chunk("")), sse(wire_chunk("a"), bad, wire_chunk("b")))
    with pytest.raises(BadBackendResponse, match="not a chat completion chunk"):
        translate_reads(*reads)


# ---- runs of plain text that fit the stream's template (textruns.py) --------------------------


def test_a_run_that_fits_the_template_is_one_delta_as_it_came() -> None:
    texts = ["Hel", "lo", ' "wor', "ld\\", "\n", "\u00e9", "", "!"]
    first = sse(wire_chunk(""))
    reads = (sse(*[wire_chunk(t) for t in texts[:2]]), sse(*[wire_chunk(t) for t in texts[2:]]))
    events = translate_reads(first, *reads)
    assert deltas(events, "text_delta") == ["Hel", "lo", ' "world\\\n\u00e9!']
    assert accumulate(events)["usage"]["output_tokens"] == 7


def test_escaped_angle_brackets_take_the_decoding_path() -> None:
    """Some servers write < as \\u003c: the tag checks must still see it."""
    calls = sse(wire_chunk("a"), wire_chunk('{"name": "f", "arguments": {}}</tool_call>'))
    body = sse(wire_chunk("Hi"), wire_chunk(" there"), wire_chunk("<tool_call>")) + calls
    escaped = body.replace(b"<", b"\\u003c")
    message = accumulate(translate_reads(sse(wire_chunk("")), escaped))
    assert message == accumulate(translate_reads(sse(wire_chunk("")), body))
    assert [block["type"] for block in message["content"]] == ["text", "tool_use"]


def encoders() -> st.SearchStrategy[Any]:
    """How servers write JSON: compact or spaced, raw UTF-8 or \\u escapes, < escaped or not."""
    compact = st.just(lambda value: json.dumps(value, separators=(",", ":"), ensure_ascii=False))
    spaced = st.just(json.dumps)
    go_like = st.just(lambda value: json.dumps(value).replace("<", "\\u003c"))
    return compact | spaced | go_like


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_bytes_and_reads_give_the_same_message_as_one_by_one(data: st.DataObject) -> None:
    chunks = data.draw(mixed_streams())
    encode = data.draw(encoders())
    body = b"".join(
        b"data: " + encode(msgspec.to_builtins(item)).encode() + b"\n\n" for item in chunks
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    reads = [body[a:b] for a, b in pairwise([0, *cuts, len(body)])]
    options: dict[str, Any] = data.draw(
        st.sampled_from([{}, {"starts_in_reasoning": True}, {"stop_sequences": ["y\n"]}])
    )
    events = translate_reads(*reads, **options)
    assert_well_formed(events)
    assert accumulate(events) == accumulate(one_by_one(chunks, **options))


def test_a_whole_answer_is_assembled_from_texts_that_were_not_decoded() -> None:
    stream = translator()
    reader = ChunkReader(stream, learn_from=2)
    events = stream.start() + reader.feed(sse(wire_chunk("")))
    events += reader.feed(sse(wire_chunk("a"), wire_chunk('"b'), wire_chunk("c\u00e9")))
    events += reader.flush() + stream.finish()
    assert any(isinstance(e.get("delta", {}).get("text"), msgspec.Raw) for e in events)
    assert assemble_message(events)["content"] == [{"type": "text", "text": 'a"bc\u00e9'}]


@pytest.mark.parametrize("count", [7, 8])
def test_no_template_is_learned_from_a_run_too_short_to_repay_it(count: int) -> None:
    """Decoded, a run of text is one delta; with a template learned from its first chunk, that
    chunk is one and the rest, not decoded, another."""
    texts = [f"t{index}" for index in range(count)]
    events = translate_reads(sse(wire_chunk("Hi")), sse(*map(wire_chunk, texts)), learn_from=8)
    learned = ["t0", "".join(texts[1:])]
    assert deltas(events, "text_delta") == ["Hi", *(learned if count == 8 else ["".join(texts)])]


def test_a_template_is_learned_past_a_role_chunk_in_the_same_read() -> None:
    role = {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
    stream = translator()
    reader = ChunkReader(stream, learn_from=2)
    events = stream.start() + reader.feed(sse(role, *map(wire_chunk, ["a", "b", "c"])))
    texts = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
    assert texts[0] == "a"  # decoded, and the template learned from it
    assert isinstance(texts[1], msgspec.Raw)
    assert bytes(texts[1]) == b'"bc"'
