"""The streaming translator over chunk sequences, and the stream checker it is held to.

Every stream built here goes through `assert_well_formed`; where a non-streaming answer exists
for the same completion, the accumulated stream must equal it, whatever the chunking.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_gateway.anthropic.answer import to_anthropic_message
from mlx_gateway.anthropic.stream import StreamTranslator
from mlx_gateway.errors import (
    BackendFailed,
    BackendUnavailable,
    BadBackendResponse,
    GatewayError,
)
from mlx_gateway.parse.chat import ChatCompletionChunk, decode_chunk, decode_completion
from tests.support.anthropic_stream import (
    StreamFailed,
    accumulate,
    assert_well_formed,
    parse_sse,
)
from tests.unit.usage import usage_of

Json = dict[str, Any]
Event = dict[str, Any]

MODEL = "claude-x"
MSG_ID = "msg_0123456789abcdef"
SIGNATURE = f"mlxgw-{MSG_ID}"
ESTIMATED_INPUT = 17
USAGE: Json = {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}
USAGE_OUT: Json = usage_of(40, 9)
UUID = "9f1c2e4a-7b3d-4c5e-8f6a-1b2c3d4e5f60"

# ---- builders --------------------------------------------------------------------------------


def chunk(
    content: str | None = None,
    *,
    finish_reason: str | None = None,
    usage: Json | None = None,
    no_choices: bool = False,
    obj: str = "chat.completion.chunk",
    **delta_fields: Any,
) -> ChatCompletionChunk:
    """A backend chunk, built as JSON and decoded by the real decoder."""
    body: Json = {"id": "chatcmpl-1", "object": obj, "created": 1, "model": "m", "choices": []}
    if not no_choices:
        delta: Json = {**delta_fields}
        if content is not None:
            delta["content"] = content
        body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        if "stop_reason" in delta:
            body["choices"][0]["stop_reason"] = delta.pop("stop_reason")
    if usage is not None:
        body["usage"] = usage
    return decode_chunk(json.dumps(body).encode())


def usage_chunk(usage: Json = USAGE, obj: str = "chat.completion.chunk") -> ChatCompletionChunk:
    return chunk(no_choices=True, usage=usage, obj=obj)


def tool_delta(
    index: int | None,
    *,
    id_: str | None = None,
    name: str | None = None,
    arguments: str | Json | None = None,
) -> Json:
    function: Json = {}
    if name is not None:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    call: Json = {"function": function}
    if index is not None:
        call["index"] = index
    if id_ is not None:
        call["id"] = id_
        call["type"] = "function"
    return call


def translator(**options: Any) -> StreamTranslator:
    return StreamTranslator(
        model=MODEL, message_id=MSG_ID, estimated_input_tokens=ESTIMATED_INPUT, **options
    )


def run(chunks: Iterable[ChatCompletionChunk], **options: Any) -> list[Event]:
    """Drives a translator like the async edge does; checks the stream on the way out."""
    stream = translator(**options)
    events = stream.start()
    for item in chunks:
        events += stream.feed(item)
    events += stream.finish()
    assert_well_formed(events)
    return events


def text_chunks(
    pieces: Iterable[str], finish_reason: str = "stop", usage: Json | None = USAGE
) -> list[ChatCompletionChunk]:
    """One chunk per piece, then the finish chunk, then a usage-only chunk."""
    chunks = [chunk(piece) for piece in pieces]
    chunks.append(chunk(finish_reason=finish_reason))
    if usage is not None:
        chunks.append(usage_chunk(usage))
    return chunks


def non_streaming(
    content: str | None,
    finish_reason: str = "stop",
    usage: Json | None = USAGE,
    **message_fields: Any,
) -> Json:
    body: Json = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message_fields},
                "finish_reason": finish_reason,
            }
        ]
    }
    if usage is not None:
        body["usage"] = usage
    completion = decode_completion(json.dumps(body).encode())
    return to_anthropic_message(completion, model=MODEL, message_id=MSG_ID, stop_sequences=None)


def without_generated_ids(message: Json) -> Json:
    """Generated tool ids differ in form between the two paths; they must only be unique."""
    out = copy.deepcopy(message)
    ids = [block["id"] for block in out["content"] if block["type"] == "tool_use"]
    assert len(set(ids)) == len(ids), f"tool ids not unique: {ids}"
    for block in out["content"]:
        if block["type"] == "tool_use":
            assert isinstance(block["id"], str)
            assert block["id"]
            block["id"] = "<id>"
    return out


def splits_in_two(text: str) -> list[list[str]]:
    return [[text[:at], text[at:]] for at in range(len(text) + 1)]


def per_character(text: str) -> list[str]:
    return list(text)


def deltas(events: list[Event], kind: str) -> list[str]:
    field = {"text_delta": "text", "thinking_delta": "thinking",
             "input_json_delta": "partial_json"}[kind]
    return [
        e["delta"][field]
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == kind
    ]


def block_types(events: list[Event]) -> list[str]:
    return [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]


# ---- the checker itself ----------------------------------------------------------------------


def start_event() -> Event:
    return {
        "type": "message_start",
        "message": {
            "id": MSG_ID, "type": "message", "role": "assistant", "model": MODEL,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 0},
        },
    }


def block(index: int, content_block: Json, *delta_list: Json) -> list[Event]:
    return [
        {"type": "content_block_start", "index": index, "content_block": content_block},
        *({"type": "content_block_delta", "index": index, "delta": d} for d in delta_list),
        {"type": "content_block_stop", "index": index},
    ]


def end_events(reason: str = "end_turn", sequence: str | None = None) -> list[Event]:
    return [
        {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
         "usage": {"output_tokens": 3}},
        {"type": "message_stop"},
    ]


THINKING_BLOCK = block(
    0,
    {"type": "thinking", "thinking": "", "signature": ""},
    {"type": "thinking_delta", "thinking": "hmm "},
    {"type": "thinking_delta", "thinking": "ok"},
    {"type": "signature_delta", "signature": "sig"},
)
TEXT_BLOCK = block(
    1, {"type": "text", "text": ""}, {"type": "text_delta", "text": "He"},
    {"type": "text_delta", "text": "llo"},
)
TOOL_BLOCK = block(
    2,
    {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {}},
    {"type": "input_json_delta", "partial_json": ""},
    {"type": "input_json_delta", "partial_json": '{"pa'},
    {"type": "input_json_delta", "partial_json": 'th": "a.py"}'},
)
FULL = [start_event(), {"type": "ping"}, *THINKING_BLOCK, *TEXT_BLOCK, *TOOL_BLOCK,
        *end_events("tool_use")]
ERROR_EVENT = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}


VALID_STREAMS: list[tuple[str, list[Event]]] = [
    ("no content", [start_event(), *end_events()]),
    ("thinking, text, tool_use", FULL),
    ("pings everywhere", [
        start_event(), {"type": "ping"}, *THINKING_BLOCK[:2], {"type": "ping"},
        *THINKING_BLOCK[2:], {"type": "ping"}, end_events()[0], {"type": "ping"},
        end_events()[1],
    ]),
    ("tool_use without fragments", [
        start_event(),
        *block(0, {"type": "tool_use", "id": "t", "name": "now", "input": {}}),
        *end_events("tool_use"),
    ]),
    ("stop sequence", [start_event(), *TEXT_BLOCK, *end_events("stop_sequence", "###")]),
    ("error right after start", [start_event(), ERROR_EVENT]),
    ("error inside a block", [start_event(), *TEXT_BLOCK[:2], ERROR_EVENT]),
    ("error inside tool arguments", [start_event(), *TOOL_BLOCK[:4], ERROR_EVENT]),
    *[(f"stop reason {r}", [start_event(), *end_events(r)])
      for r in ("end_turn", "max_tokens", "tool_use", "refusal", "pause_turn")],
]


def renumber(events: list[Event]) -> list[Event]:
    """Give the blocks of a hand-built stream indices 0, 1, 2... in order."""
    out, index = [], -1
    for event in copy.deepcopy(events):
        if event["type"] == "content_block_start":
            index += 1
        if "index" in event:
            event["index"] = index
        out.append(event)
    return out


@pytest.mark.parametrize("events", [renumber(c[1]) for c in VALID_STREAMS],
                         ids=[c[0] for c in VALID_STREAMS])
def test_checker_accepts(events: list[Event]) -> None:
    assert_well_formed(events)


def mutate(change: Callable[[list[Event]], object]) -> list[Event]:
    events = copy.deepcopy(FULL)
    change(events)
    return events


def _set(path: list[Any], value: Any) -> Callable[[list[Event]], None]:
    def change(events: list[Event]) -> None:
        target: Any = events
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


STOP0 = FULL.index(THINKING_BLOCK[-1])
SIG = FULL.index(THINKING_BLOCK[-2])
TOOL_START = FULL.index(TOOL_BLOCK[0])
TOOL_LAST = FULL.index(TOOL_BLOCK[-2])
DELTA_AT = len(FULL) - 2

INVALID_STREAMS: list[tuple[str, list[Event], str]] = [
    ("empty", [], "empty stream"),
    ("ping first", [{"type": "ping"}, *FULL], "first event"),
    ("no message_start", FULL[1:], "first event"),
    ("message id missing", mutate(_set([0, "message", "id"], "")), "message.id"),
    ("message type", mutate(_set([0, "message", "type"], "msg")), "message.type"),
    ("message role", mutate(_set([0, "message", "role"], "user")), "role"),
    ("message content not empty", mutate(_set([0, "message", "content"], [{}])), "content"),
    ("message stop_reason set", mutate(_set([0, "message", "stop_reason"], "end_turn")),
     "stop_reason"),
    ("input_tokens missing", mutate(_set([0, "message", "usage"], {})), "input_tokens"),
    ("input_tokens a string", mutate(_set([0, "message", "usage", "input_tokens"], "5")),
     "input_tokens"),
    ("no message_stop", FULL[:-1], "must end"),
    ("no message_delta", FULL[:-2] + FULL[-1:], "without a message_delta"),
    ("two message_deltas", FULL[:-1] + FULL[-2:], "more than one"),
    ("event after message_stop", [*FULL, {"type": "ping"}], "nothing may follow"),
    ("unknown event", [FULL[0], {"type": "content_block"}, *FULL[1:]], "unknown"),
    ("index starts at 1", [FULL[0], *block(1, {"type": "text", "text": ""}), *end_events()],
     "block index 0"),
    ("index skipped", [FULL[0], *block(0, {"type": "text", "text": ""}),
                       *block(2, {"type": "text", "text": ""}), *end_events()], "index 1"),
    ("two blocks open", [FULL[0], *block(0, {"type": "text", "text": ""})[:1],
                         *block(1, {"type": "text", "text": ""}), *end_events()],
     "already open"),
    ("delta without block", [FULL[0], TEXT_BLOCK[1], *end_events()], "no open block"),
    ("stop without block", [FULL[0], TEXT_BLOCK[-1], *end_events()], "no open block"),
    ("delta for another index", mutate(_set([3, "index"], 1)), "not the open block"),
    ("stop for another index", mutate(_set([STOP0, "index"], 1)), "not the open block"),
    ("text delta in thinking", mutate(_set([3, "delta"], {"type": "text_delta", "text": "x"})),
     "in a thinking block"),
    ("thinking without signature", FULL[:SIG] + FULL[SIG + 1:], "signature_delta"),
    ("two signatures", FULL[:SIG] + FULL[SIG:SIG + 1] * 2 + FULL[SIG + 1:], "last delta"),
    ("delta after signature", [*FULL[:SIG + 1], FULL[3], *FULL[SIG + 1:]], "last delta"),
    ("thinking block starts with text", mutate(_set([2, "content_block", "thinking"], "x")),
     "thinking ''"),
    ("tool_use without name", mutate(_set([TOOL_START, "content_block", "name"], "")), "name"),
    ("tool_use without id", mutate(_set([TOOL_START, "content_block", "id"], None)), "id"),
    ("tool_use with input", mutate(_set([TOOL_START, "content_block", "input"], {"a": 1})),
     "input {}"),
    ("tool json broken", mutate(_set([TOOL_LAST, "delta", "partial_json"], 'th": "a.py"')),
     "not JSON"),
    ("tool json an array", [FULL[0], *block(0, {"type": "tool_use", "id": "t", "name": "n",
                                                "input": {}},
                                            {"type": "input_json_delta", "partial_json": "[]"}),
                            *end_events("tool_use")], "not a JSON object"),
    ("partial_json not a string", mutate(_set([TOOL_LAST, "delta", "partial_json"], {})),
     "must be a string"),
    ("unknown block type", [FULL[0], *block(0, {"type": "image"}), *end_events()],
     "content block type"),
    ("message_delta with a block open", FULL[:TOOL_LAST + 1] + FULL[-2:], "is open"),
    ("bad stop reason", mutate(_set([DELTA_AT, "delta", "stop_reason"], "stop")),
     "not an Anthropic one"),
    ("stop_sequence without the reason", mutate(_set([DELTA_AT, "delta", "stop_sequence"], "#")),
     "stop_sequence set"),
    ("stop_sequence reason without the sequence",
     [FULL[0], *end_events("stop_sequence", None)], "stop_sequence missing"),
    ("output_tokens missing", mutate(_set([DELTA_AT, "usage"], {})), "output_tokens"),
    ("error after message_delta", [*FULL[:-1], ERROR_EVENT], "error after message_delta"),
    ("error without message", [FULL[0], {"type": "error", "error": {"type": "x"}}],
     "error.message"),
    ("block after message_delta", [FULL[0], *end_events()[:1], *block(0, {"type": "text",
                                                                          "text": ""}),
                                   end_events()[1]], "after message_delta"),
]


@pytest.mark.parametrize(("events", "why"), [c[1:] for c in INVALID_STREAMS],
                         ids=[c[0] for c in INVALID_STREAMS])
def test_checker_rejects(events: list[Event], why: str) -> None:
    with pytest.raises(AssertionError, match=why):
        assert_well_formed(events)


def test_accumulate_rebuilds_the_final_message() -> None:
    events = copy.deepcopy(FULL)
    events[-2]["usage"] = {"input_tokens": None, "output_tokens": 12,
                           "cache_read_input_tokens": 4}
    assert accumulate(events) == {
        "id": MSG_ID, "type": "message", "role": "assistant", "model": MODEL,
        "content": [
            {"type": "thinking", "thinking": "hmm ok", "signature": "sig"},
            {"type": "text", "text": "Hello"},
            {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a.py"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 12, "cache_read_input_tokens": 4},
    }
    assert events == [*FULL[:-2], events[-2], FULL[-1]]  # not mutated


def test_accumulate_raises_on_a_failed_stream() -> None:
    with pytest.raises(StreamFailed) as caught:
        accumulate(renumber([start_event(), *TEXT_BLOCK[:2], ERROR_EVENT]))
    assert caught.value.error == ERROR_EVENT["error"]


def sse(events: list[Event], names: list[str] | None = None, end: str = "\n") -> bytes:
    out = []
    for i, event in enumerate(events):
        name = names[i] if names else event["type"]
        out.append(f"event: {name}{end}data: {json.dumps(event)}{end}{end}")
    return "".join(out).encode()


def test_parse_sse_round_trip() -> None:
    assert parse_sse(sse(FULL)) == FULL


@pytest.mark.parametrize("end", ["\r\n", "\r"])
def test_parse_sse_other_line_ends(end: str) -> None:
    assert parse_sse(sse(FULL, end=end)) == FULL


def test_parse_sse_ignores_comments_and_joins_data_lines() -> None:
    raw = (b": keepalive\n\nevent: ping\ndata: {"
           b'\ndata: "type": "ping"}\n\n: bye\n')
    assert parse_sse(raw) == [{"type": "ping"}]


SSE_ERRORS: list[tuple[str, bytes, str]] = [
    ("event name differs", sse(FULL, names=["message_start", "message_delta"] + [
        e["type"] for e in FULL[2:]]), "data type"),
    ("DONE", sse(FULL) + b"data: [DONE]\n\n", r"\[DONE\]"),
    ("no event line", b'data: {"type": "ping"}\n\n', "no event: line"),
    ("unterminated event", b'event: ping\ndata: {"type": "ping"}\n', "unterminated"),
    ("cut mid-line", b'event: ping\ndata: {"type": "pi', "middle of a line"),
    ("not an object", b"event: ping\ndata: [1]\n\n", "not a JSON object"),
]


@pytest.mark.parametrize(("raw", "why"), [c[1:] for c in SSE_ERRORS],
                         ids=[c[0] for c in SSE_ERRORS])
def test_parse_sse_rejects(raw: bytes, why: str) -> None:
    with pytest.raises(AssertionError, match=why):
        parse_sse(raw)


# ---- the envelope ----------------------------------------------------------------------------


def test_start_announces_the_message_and_the_estimate() -> None:
    events = translator().start()
    assert events[0] == {
        "type": "message_start",
        "message": {
            "id": MSG_ID, "type": "message", "role": "assistant", "model": MODEL,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": ESTIMATED_INPUT, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 0},
        },
    }
    assert all(e["type"] == "ping" for e in events[1:])


def test_no_content_at_all() -> None:
    events = run([chunk(finish_reason="stop"), usage_chunk()])
    assert [e["type"] for e in events if e["type"] != "ping"] == [
        "message_start", "message_delta", "message_stop"
    ]
    assert events[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2]["usage"] == USAGE_OUT


def test_a_stream_that_just_ends() -> None:
    events = run([])
    assert accumulate(events)["content"] == []
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


EMPTY_CHUNKS: list[tuple[str, ChatCompletionChunk]] = [
    ("role only", chunk(role="assistant")),
    ("empty content", chunk("")),
    ("null content", decode_chunk(b'{"choices": [{"index": 0, "delta": {"content": null}}]}')),
    ("empty reasoning_content", chunk(reasoning_content="")),
    ("empty reasoning", chunk(reasoning="")),
    ("null tool_calls", chunk(tool_calls=None)),
    ("empty tool_calls", chunk(tool_calls=[])),
    ("no choices", chunk(no_choices=True)),
    ("usage only", usage_chunk()),
    ("usage only, object chat.completion", usage_chunk(obj="chat.completion")),
    ("finish reason only", chunk(finish_reason="stop")),
]


@pytest.mark.parametrize("empty", [c[1] for c in EMPTY_CHUNKS], ids=[c[0] for c in EMPTY_CHUNKS])
def test_empty_deltas_produce_no_events(empty: ChatCompletionChunk) -> None:
    stream = translator()
    stream.start()
    assert stream.feed(empty) == []
    assert stream.feed(chunk("Hi")) != []
    assert stream.feed(empty) == []


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"),
     (None, "end_turn")],
)
def test_finish_reason(finish_reason: str | None, stop_reason: str) -> None:
    chunks = [chunk("Hi"), chunk(finish_reason=finish_reason)] if finish_reason else [chunk("Hi")]
    events = run(chunks)
    assert events[-2]["delta"] == {"stop_reason": stop_reason, "stop_sequence": None}


# ---- usage -----------------------------------------------------------------------------------

USAGE_SHAPES: list[tuple[str, list[ChatCompletionChunk], Json]] = [
    ("usage chunk with no choices", [chunk("Hi"), chunk(finish_reason="stop"), usage_chunk()],
     USAGE_OUT),
    ("usage chunk says chat.completion (mlx_lm)",
     [chunk("Hi"), chunk(finish_reason="stop"), usage_chunk(obj="chat.completion")], USAGE_OUT),
    ("usage on the finish chunk", [chunk("Hi"), chunk(finish_reason="stop", usage=USAGE)],
     USAGE_OUT),
    ("usage with cached tokens",
     [chunk("Hi", finish_reason="stop"),
      usage_chunk({**USAGE, "prompt_tokens_details": {"cached_tokens": 30}})],
     usage_of(10, 9, cached=30)),
    ("usage missing: estimated", [chunk("Hi"), chunk(" there"), chunk(finish_reason="stop")],
     usage_of(ESTIMATED_INPUT, 2)),
]


@pytest.mark.parametrize(("chunks", "usage"), [c[1:] for c in USAGE_SHAPES],
                         ids=[c[0] for c in USAGE_SHAPES])
def test_usage(chunks: list[ChatCompletionChunk], usage: Json) -> None:
    events = run(chunks)
    assert events[-2]["usage"] == usage
    message = accumulate(events)
    assert message["content"][-1]["text"].startswith("Hi")
    assert message["usage"]["output_tokens"] == usage["output_tokens"]


def test_content_and_finish_reason_in_one_chunk() -> None:
    events = run([chunk("Hello!", finish_reason="stop", usage=USAGE)])
    assert accumulate(events) == non_streaming("Hello!")


# ---- text ------------------------------------------------------------------------------------

TEXTS = [
    "Hello, world!",
    "line one\nline two\n\n  indented",
    "a < b > c && x <tool y",
    "naïve café \u2013 日本語 ✓ 🙂",
    "  leading and trailing  ",
    "<",
]


@pytest.mark.parametrize("text", TEXTS)
def test_text_every_split_in_two_equals_the_non_streaming_answer(text: str) -> None:
    expected = non_streaming(text)
    for pieces in splits_in_two(text):
        assert accumulate(run(text_chunks(pieces))) == expected, pieces


@pytest.mark.parametrize("text", TEXTS)
def test_text_per_character_equals_the_non_streaming_answer(text: str) -> None:
    assert accumulate(run(text_chunks(per_character(text)))) == non_streaming(text)


def test_text_goes_out_as_it_arrives() -> None:
    stream = translator()
    stream.start()
    first = stream.feed(chunk("Hello"))
    assert first[0]["type"] == "content_block_start"
    assert deltas(first, "text_delta") == ["Hello"]
    assert deltas(stream.feed(chunk(", world")), "text_delta") == [", world"]


# ---- reasoning -------------------------------------------------------------------------------

REASONING_FIELDS = ["reasoning_content", "reasoning"]


def reasoning(field: str, text: str) -> Json:
    return {field: text}


@pytest.mark.parametrize("field", REASONING_FIELDS)
def test_reasoning_field_becomes_a_thinking_block_first(field: str) -> None:
    chunks = [
        chunk(**reasoning(field, "Let me ")),
        chunk(**reasoning(field, "think.")),
        chunk("The answer"),
        chunk(" is 4."),
        chunk(finish_reason="stop"),
        usage_chunk(),
    ]
    events = run(chunks)
    assert block_types(events) == ["thinking", "text"]
    assert deltas(events, "thinking_delta") == ["Let me ", "think."]
    assert accumulate(events) == non_streaming(
        "The answer is 4.", **reasoning(field, "Let me think.")
    )


@pytest.mark.parametrize("field", REASONING_FIELDS)
def test_reasoning_and_content_in_one_chunk(field: str) -> None:
    events = run([chunk("4", finish_reason="stop", usage=USAGE, **reasoning(field, "2+2"))])
    assert accumulate(events) == non_streaming("4", **reasoning(field, "2+2"))


def test_reasoning_only() -> None:
    events = run([chunk(reasoning="hmm"), chunk(finish_reason="stop"), usage_chunk()])
    assert accumulate(events)["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": SIGNATURE}
    ]


INLINE_THINK = [
    "<think>Two and two.</think>The answer is 4.",
    "<think>\nTwo and two.\n</think>\n\nThe answer is 4.",
    "<think>\n\n</think>\n\nNo reasoning here.",
    "<think>a < b, so </thin is not a tag</think>ok",
    "\n<think>x</think>y",
]


@pytest.mark.parametrize("content", INLINE_THINK)
def test_inline_think_split_at_every_position(content: str) -> None:
    expected = non_streaming(content)
    for pieces in splits_in_two(content):
        events = run(text_chunks(pieces))
        assert accumulate(events) == expected, pieces
        assert "think>" not in "".join(deltas(events, "text_delta"))


@pytest.mark.parametrize("content", INLINE_THINK)
def test_inline_think_per_character(content: str) -> None:
    events = run(text_chunks(per_character(content)))
    assert accumulate(events) == non_streaming(content)
    assert "think>" not in "".join(deltas(events, "text_delta"))


def test_inline_think_gives_thinking_then_text() -> None:
    events = run(text_chunks(per_character(INLINE_THINK[1])))
    assert block_types(events) == ["thinking", "text"]
    message = accumulate(events)
    assert message["content"][0]["thinking"] == "Two and two.\n"
    assert message["content"][1]["text"] == "The answer is 4."


def test_prompt_opened_think_section() -> None:
    """Qwen3 thinking templates open `<think>` in the prompt; the caller says so."""
    content = "Two and two.\n</think>\n\nThe answer is 4."
    expected = non_streaming(content)
    for pieces in splits_in_two(content):
        events = run(text_chunks(pieces), starts_in_reasoning=True)
        assert accumulate(events) == expected, pieces


# ---- structured tool calls -------------------------------------------------------------------

ARGS = '{"path": "src/a.py", "lines": [1, 2], "note": "é \\"q\\""}'


def test_tool_call_arguments_in_one_character_fragments_go_out_as_they_arrive() -> None:
    stream = translator()
    events = stream.start()
    first = stream.feed(chunk(tool_calls=[tool_delta(0, id_="call_1", name="read",
                                                     arguments="")]))
    assert [e["type"] for e in first] == ["content_block_start"]
    assert first[0]["content_block"] == {
        "type": "tool_use", "id": "call_1", "name": "read", "input": {}
    }
    events += first
    for char in ARGS:
        out = stream.feed(chunk(tool_calls=[tool_delta(0, arguments=char)]))
        assert out == [{"type": "content_block_delta", "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": char}}]
        events += out
    events += stream.feed(chunk(finish_reason="tool_calls"))
    events += stream.feed(usage_chunk())
    events += stream.finish()
    assert_well_formed(events)
    message = accumulate(events)
    assert message["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "read", "input": json.loads(ARGS)}
    ]
    assert message["stop_reason"] == "tool_use"


def test_id_and_name_only_in_the_first_fragment() -> None:
    chunks = [
        chunk(tool_calls=[tool_delta(0, id_="call_1", name="read")]),
        chunk(tool_calls=[tool_delta(0, arguments='{"path"')]),
        chunk(tool_calls=[tool_delta(0, arguments=': "a"}')]),
        chunk(finish_reason="tool_calls"),
        usage_chunk(),
    ]
    message = accumulate(run(chunks))
    expected = non_streaming(
        None, "tool_calls",
        tool_calls=[{"id": "call_1", "type": "function",
                     "function": {"name": "read", "arguments": '{"path": "a"}'}}],
    )
    assert message == expected


def test_two_parallel_calls_are_consecutive_blocks() -> None:
    chunks = [
        chunk(tool_calls=[tool_delta(0, id_="call_a", name="read", arguments="")]),
        chunk(tool_calls=[tool_delta(0, arguments='{"path": ')]),
        chunk(tool_calls=[tool_delta(0, arguments='"a"}')]),
        chunk(tool_calls=[tool_delta(1, id_="call_b", name="grep", arguments='{"q"')]),
        chunk(tool_calls=[tool_delta(1, arguments=': "x"}')]),
        chunk(finish_reason="tool_calls"),
        usage_chunk(),
    ]
    events = run(chunks)
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [(s["index"], s["content_block"]["id"], s["content_block"]["name"])
            for s in starts] == [(0, "call_a", "read"), (1, "call_b", "grep")]
    assert accumulate(events)["content"] == [
        {"type": "tool_use", "id": "call_a", "name": "read", "input": {"path": "a"}},
        {"type": "tool_use", "id": "call_b", "name": "grep", "input": {"q": "x"}},
    ]


def test_two_calls_in_one_chunk() -> None:
    chunks = [
        chunk(tool_calls=[
            tool_delta(0, id_="call_a", name="read", arguments='{"path": "a"}'),
            tool_delta(1, id_="call_b", name="read", arguments='{"path": "b"}'),
        ], finish_reason="tool_calls"),
    ]
    content = accumulate(run(chunks))["content"]
    assert [(b["id"], b["input"]) for b in content] == [
        ("call_a", {"path": "a"}), ("call_b", {"path": "b"})
    ]


def test_whole_calls_without_index_in_one_chunk() -> None:
    chunks = [chunk(tool_calls=[
        tool_delta(None, id_="a", name="f", arguments="{}"),
        tool_delta(None, id_="b", name="g", arguments='{"x": 1}'),
    ], finish_reason="tool_calls")]
    content = accumulate(run(chunks))["content"]
    assert [(b["id"], b["name"], b["input"]) for b in content] == [
        ("a", "f", {}), ("b", "g", {"x": 1})
    ]


def test_whole_calls_without_index_in_separate_chunks_stay_separate() -> None:
    """Servers that omit `index` and send each call whole in its own chunk: a new id means a
    new call; gluing the arguments gives `{"a":1}{"b":2}`, which no client can parse."""
    chunks = [
        chunk(tool_calls=[tool_delta(None, id_="call_a", name="f", arguments='{"a": 1}')]),
        chunk(tool_calls=[tool_delta(None, id_="call_b", name="g", arguments='{"b": 2}')]),
        chunk(finish_reason="tool_calls"),
    ]
    content = accumulate(run(chunks))["content"]
    assert [(b["id"], b["name"], b["input"]) for b in content] == [
        ("call_a", "f", {"a": 1}), ("call_b", "g", {"b": 2})
    ]


def test_whole_calls_without_index_or_id_in_one_chunk_stay_separate() -> None:
    """A fragment that names a function starts a call; only a nameless one continues."""
    chunks = [chunk(tool_calls=[
        tool_delta(None, name="a", arguments="{}"),
        tool_delta(None, name="b", arguments='{"x": 1}'),
    ], finish_reason="tool_calls")]
    content = without_generated_ids(accumulate(run(chunks)))["content"]
    assert [(b["name"], b["input"]) for b in content] == [("a", {}), ("b", {"x": 1})]


def test_call_arguments_cut_short_are_closed_into_json() -> None:
    """The backend hit max_tokens inside the arguments: the fragments already sent must still
    concatenate to one JSON object, or the client's SDK fails to parse the block."""
    chunks = [
        chunk(tool_calls=[tool_delta(0, id_="c", name="write",
                                     arguments='{"path": "a.py", "text": "hel')]),
        chunk(finish_reason="length"),
    ]
    [block_] = accumulate(run(chunks))["content"]
    assert block_["name"] == "write"
    assert isinstance(block_["input"], dict)


TRUNCATED_CALLS: list[tuple[str, list[ChatCompletionChunk]]] = [
    ("structured", [chunk(tool_calls=[tool_delta(0, id_="c", name="write",
                                                 arguments='{"path": "a.py"')]),
                    chunk(tool_calls=[tool_delta(0, arguments="}")]),
                    chunk(finish_reason="length")]),
    ("text", text_chunks(['<tool_call>{"name": "write", "arguments": {"text": "abc'],
                         finish_reason="length")),
]


@pytest.mark.parametrize("chunks", [c[1] for c in TRUNCATED_CALLS],
                         ids=[c[0] for c in TRUNCATED_CALLS])
def test_max_tokens_wins_over_tool_use(chunks: list[ChatCompletionChunk]) -> None:
    """A reply cut by max_tokens is reported as such (as the Anthropic API does), so the client
    does not run a call whose input may be cut short (half a file for Write)."""
    message = accumulate(run(chunks))
    assert message["content"][-1]["type"] == "tool_use"
    assert message["stop_reason"] == "max_tokens"


def test_mlx_lm_whole_call_with_a_bare_uuid() -> None:
    """mlx_lm.server sends each call whole, in the last chunk, with a bare UUID as id."""
    call = {"function": {"name": "read", "arguments": '{"path": "a.py"}'},
            "type": "function", "id": UUID, "index": 0}
    chunks = [
        chunk(role="assistant", reasoning="Need the file."),
        chunk(role="assistant", tool_calls=[call], finish_reason="tool_calls"),
        usage_chunk(obj="chat.completion"),
    ]
    events = run(chunks)
    assert block_types(events) == ["thinking", "tool_use"]
    message = accumulate(events)
    assert message["content"][1] == {
        "type": "tool_use", "id": UUID, "name": "read", "input": {"path": "a.py"}
    }
    assert message == non_streaming(
        None, "tool_calls", reasoning="Need the file.", tool_calls=[call]
    )


def test_arguments_given_as_an_object() -> None:
    chunks = [chunk(tool_calls=[tool_delta(0, id_="c", name="f", arguments={"a": [1, "é"]})],
                    finish_reason="tool_calls")]
    assert accumulate(run(chunks))["content"][0]["input"] == {"a": [1, "é"]}


def test_call_without_arguments_has_empty_input() -> None:
    chunks = [chunk(tool_calls=[tool_delta(0, id_="c", name="now")]),
              chunk(finish_reason="tool_calls")]
    assert accumulate(run(chunks))["content"] == [
        {"type": "tool_use", "id": "c", "name": "now", "input": {}}
    ]


def test_call_without_id_gets_one() -> None:
    chunks = [chunk(tool_calls=[tool_delta(0, name="a", arguments="{}")]),
              chunk(tool_calls=[tool_delta(1, name="b", arguments="{}")]),
              chunk(finish_reason="tool_calls")]
    content = without_generated_ids(accumulate(run(chunks)))["content"]
    assert [b["name"] for b in content] == ["a", "b"]


def test_text_before_a_tool_call() -> None:
    call = tool_delta(0, id_="call_1", name="read", arguments='{"path": "a"}')
    chunks = [chunk("Let me "), chunk("look."), chunk(tool_calls=[call]),
              chunk(finish_reason="tool_calls"), usage_chunk()]
    events = run(chunks)
    assert block_types(events) == ["text", "tool_use"]
    assert accumulate(events) == non_streaming(
        "Let me look.", "tool_calls",
        tool_calls=[{"id": "call_1", "type": "function",
                     "function": {"name": "read", "arguments": '{"path": "a"}'}}],
    )


def test_reasoning_text_and_calls_in_order() -> None:
    chunks = [
        chunk(reasoning_content="plan"),
        chunk("Reading."),
        chunk(tool_calls=[tool_delta(0, id_="a", name="read", arguments='{"p": 1}')]),
        chunk(tool_calls=[tool_delta(1, id_="b", name="read", arguments='{"p": 2}')]),
        chunk(finish_reason="tool_calls"),
    ]
    events = run(chunks)
    assert block_types(events) == ["thinking", "text", "tool_use", "tool_use"]
    assert [e["index"] for e in events if e["type"] == "content_block_stop"] == [0, 1, 2, 3]


@pytest.mark.parametrize("finish_reason", ["tool_calls", "stop", None])
def test_any_tool_call_makes_the_stop_reason_tool_use(finish_reason: str | None) -> None:
    chunks = [chunk(tool_calls=[tool_delta(0, id_="a", name="f", arguments="{}")])]
    if finish_reason:
        chunks.append(chunk(finish_reason=finish_reason))
    assert run(chunks)[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


# ---- tool calls written as text --------------------------------------------------------------

TEXT_CALL = '<tool_call>\n{"name": "read", "arguments": {"path": "a.py", "n": [1, true]}}\n' \
            "</tool_call>"
TEXT_CALL_CONTENTS = [
    TEXT_CALL,
    "I'll read it.\n" + TEXT_CALL,
    TEXT_CALL + "\n" + TEXT_CALL.replace("a.py", "b.py"),
    "<think>Need a.py</think>\n\n" + TEXT_CALL,
    '<tool_call>{"name": "grep", "arguments": {"q": "</tool_call> in a string"}}</tool_call>',
    '<tool_call>{"arguments": {"q": 1}, "name": "grep"}</tool_call>',
    "Nothing to call: <tool_c and <tool_call",
]


@pytest.mark.parametrize("content", TEXT_CALL_CONTENTS)
def test_text_tool_calls_split_at_every_position(content: str) -> None:
    expected = without_generated_ids(non_streaming(content))
    for pieces in splits_in_two(content):
        events = run(text_chunks(pieces))
        assert without_generated_ids(accumulate(events)) == expected, pieces


def test_tool_call_tags_never_reach_the_text() -> None:
    for content in TEXT_CALL_CONTENTS[:-1]:
        for pieces in [*splits_in_two(content), per_character(content)]:
            text = "".join(deltas(run(text_chunks(pieces)), "text_delta"))
            assert "tool_call>" not in text, pieces


@pytest.mark.parametrize("content", TEXT_CALL_CONTENTS)
def test_text_tool_calls_per_character(content: str) -> None:
    events = run(text_chunks(per_character(content)))
    assert without_generated_ids(accumulate(events)) == without_generated_ids(
        non_streaming(content)
    )


def test_text_tool_call_gives_a_tool_use_block() -> None:
    events = run(text_chunks(["I'll read it.\n", TEXT_CALL]))
    assert block_types(events) == ["text", "tool_use"]
    message = accumulate(events)
    assert message["content"][1]["name"] == "read"
    assert message["content"][1]["input"] == {"path": "a.py", "n": [1, True]}
    assert message["stop_reason"] == "tool_use"


def test_text_tool_call_arguments_stream_before_the_call_closes() -> None:
    stream = translator()
    stream.start()
    events = stream.feed(chunk('<tool_call>{"name": "write", "arguments": {"text": "abc'))
    assert block_types(events) == ["tool_use"]
    assert "".join(deltas(events, "input_json_delta")).endswith("abc")
    more = stream.feed(chunk("def"))
    assert deltas(more, "input_json_delta") == ["def"]


def test_text_after_a_text_tool_call_matches_the_non_streaming_answer() -> None:
    """The two paths must agree on where text after a call goes."""
    content = "Before." + TEXT_CALL + "After."
    streamed = without_generated_ids(accumulate(run(text_chunks([content]))))
    assert streamed == without_generated_ids(non_streaming(content))


def test_text_tool_call_cut_by_length_still_parses() -> None:
    content = '<tool_call>{"name": "write", "arguments": {"text": "abc'
    events = run(text_chunks(per_character(content), finish_reason="length"))
    [block_] = accumulate(events)["content"]
    assert block_["name"] == "write"
    assert block_["input"] == {"text": "abc"}


# ---- stop sequences seen by the gateway ------------------------------------------------------


@pytest.mark.parametrize("pieces", splits_in_two("Count: 1, 2, 3###4, 5"))
def test_stop_sequence_cuts_the_text(pieces: list[str]) -> None:
    stream = translator(stop_sequences=["###"])
    events = stream.start()
    for piece in pieces:
        events += stream.feed(chunk(piece))
    assert stream.stopped
    events += stream.finish()
    assert_well_formed(events)
    message = accumulate(events)
    assert message["content"] == [{"type": "text", "text": "Count: 1, 2, 3"}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "###")


def test_held_stop_prefix_is_released_at_the_end() -> None:
    events = run(text_chunks(["answer #", "#"]), stop_sequences=["###"])
    message = accumulate(events)
    assert message["content"] == [{"type": "text", "text": "answer ##"}]
    assert message["stop_reason"] == "end_turn"


def test_vllm_reports_the_stop_sequence() -> None:
    chunks = [chunk("answer"), chunk(finish_reason="stop", stop_reason="END")]
    events = run(chunks, stop_sequences=["###", "END"])
    assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_vllm_stop_token_id_is_not_a_stop_sequence() -> None:
    chunks = [chunk("answer"), chunk(finish_reason="stop", stop_reason=151645)]
    events = run(chunks, stop_sequences=["###"])
    assert events[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


# ---- failure ---------------------------------------------------------------------------------

FAILURES: list[tuple[str, GatewayError, str]] = [
    ("unavailable", BackendUnavailable("connection reset"), "overloaded_error"),
    ("backend 5xx", BackendFailed(500, "oops"), "api_error"),
    ("bad chunk", BadBackendResponse("backend stream chunk is not ..."), "api_error"),
]


@pytest.mark.parametrize(("error", "error_type"), [c[1:] for c in FAILURES],
                         ids=[c[0] for c in FAILURES])
def test_fail_gives_a_single_error_event(error: GatewayError, error_type: str) -> None:
    stream = translator()
    events = stream.start() + stream.feed(chunk("partial ans"))
    failure = stream.fail(error)
    assert failure == [{"type": "error", "error": {"type": error_type, "message": error.message}}]
    assert_well_formed(events + failure)
    with pytest.raises(StreamFailed):
        accumulate(events + failure)


def test_fail_inside_tool_arguments_is_well_formed() -> None:
    stream = translator()
    events = stream.start()
    events += stream.feed(chunk(tool_calls=[tool_delta(0, id_="c", name="f", arguments='{"a')]))
    events += stream.fail(BackendUnavailable("timed out"))
    assert_well_formed(events)
    assert events[-1]["type"] == "error"


def test_translators_do_not_share_state() -> None:
    one, two = translator(), translator()
    one.start()
    two.start()
    one.feed(chunk("<think>secret"))
    events = two.feed(chunk("public"))
    assert block_types(events) == ["text"]
    assert deltas(events, "text_delta") == ["public"]


# ---- random chunkings ------------------------------------------------------------------------

PLAIN = st.lists(
    st.sampled_from([*"ab <>/{}\"'\n\té✓", "<t", "</", "<tool", "think"]), max_size=12
).map("".join).filter(
    lambda s: "<think>" not in s and "</think>" not in s and "<tool_call>" not in s
)
CALL = st.builds(
    lambda name, args: "<tool_call>" + json.dumps({"name": name, "arguments": args})
    + "</tool_call>",
    st.sampled_from(["read", "grep", "écrire"]),
    st.dictionaries(
        st.text(alphabet="abc_", min_size=1, max_size=4),
        st.none() | st.booleans() | st.integers(-5, 500) | st.text(max_size=6)
        | st.lists(st.integers(0, 9), max_size=3),
        max_size=3,
    ),
)
REASONING = st.text(alphabet=st.sampled_from(list("xy <>/\n")), max_size=10).filter(
    lambda s: "</think>" not in s and "<think>" not in s
)


@st.composite
def replies(draw: st.DrawFn) -> str:
    """A reply as models write it: optional inline reasoning, answer text, then calls."""
    think = draw(st.none() | REASONING)
    head = "" if think is None else f"<think>{think}</think>" + draw(st.sampled_from(["", "\n\n"]))
    text = draw(PLAIN)
    calls = draw(st.lists(CALL, max_size=2))
    return head + text + "\n".join(calls)


@st.composite
def chunkings(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(0, len(text)), max_size=8)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_chunking_equals_the_non_streaming_answer(data: st.DataObject) -> None:
    content = data.draw(replies())
    pieces = data.draw(chunkings(content))
    streamed = accumulate(run(text_chunks(pieces)))
    assert without_generated_ids(streamed) == without_generated_ids(non_streaming(content))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_tool_argument_fragmentation_is_forwarded_unchanged(data: st.DataObject) -> None:
    arguments = json.dumps(data.draw(st.dictionaries(st.text(max_size=4), st.text(max_size=8),
                                                     max_size=3)))
    fragments = data.draw(chunkings(arguments))
    chunks = [chunk(tool_calls=[tool_delta(0, id_="c", name="f")])]
    chunks += [chunk(tool_calls=[tool_delta(0, arguments=f)]) for f in fragments]
    events = run(chunks)
    assert deltas(events, "input_json_delta") == [f for f in fragments if f]
    assert accumulate(events)["content"][0]["input"] == json.loads(arguments)
