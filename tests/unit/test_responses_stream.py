"""The Responses stream machine: event order and shape, every chunk boundary, and the final
response equal to the whole answer's, whatever the chunking."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_gateway.errors import BackendFailed, PromptTooLong
from mlx_gateway.parse.chat import ChatCompletionChunk, decode_completion
from mlx_gateway.parse.chunkreader import ChunkReader
from mlx_gateway.responses.stream import (
    PING,
    ResponsesStream,
    custom_input,
    encode_events,
    starts_in_reasoning,
    whole_response,
)
from tests.unit.test_stream import chunk, chunkings, replies, text_chunks, tool_delta

Json = dict[str, Any]
USAGE = {"prompt_tokens": 30, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 4}}
PATCH = "*** Begin Patch\n*** Add File: a.txt\n+hello \"quoted\"\n*** End Patch\n"
TERMINAL = {"response.completed", "response.incomplete", "response.failed"}


def machine(**options: Any) -> ResponsesStream:
    return ResponsesStream(model="m", response_id="resp_abc", created_at=7, **options)


def run(chunks: Iterable[ChatCompletionChunk], **options: Any) -> list[Json]:
    stream = machine(**options)
    events = stream.start()
    for item in chunks:
        events += stream.feed(item)
    events += stream.finish()
    check_events(events)
    assert events[-1]["response"] == stream.response
    return events


def whole(
    content: str | None, finish_reason: str = "stop", usage: Json = USAGE, **options: Any
) -> Json:
    body = {"choices": [{"message": {"content": content}, "finish_reason": finish_reason}],
            "usage": usage}  # fmt: skip
    completion = decode_completion(json.dumps(body).encode())
    stream = machine(starts_in_reasoning=starts_in_reasoning(completion), **options)
    return whole_response(completion, stream)


def check_events(events: list[Json]) -> None:
    """The Responses API's order: created, in_progress, then per item added / its events /
    done with the whole item, then one terminal event carrying the items done."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] in TERMINAL
    assert all(e["type"] not in TERMINAL for e in events[:-1])
    items: list[Json] = []
    open_item: Json | None = None
    for event in events[2:-1]:
        kind = event["type"]
        if kind == "response.output_item.added":
            assert open_item is None
            assert event["output_index"] == len(items)
            open_item = event["item"]
        elif kind == "response.output_item.done":
            assert open_item is not None
            assert event["item"]["id"] == open_item["id"]
            items.append(event["item"])
            open_item = None
        else:
            assert open_item is not None
            assert event["item_id"] == open_item["id"], event
            assert event["output_index"] == len(items)
    assert open_item is None or events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["output"] == items
    for item in items:
        check_item_deltas(events, item)


def check_item_deltas(events: list[Json], item: Json) -> None:
    """The deltas of an item add up to what its done event and the item carry."""
    mine = [e for e in events if e.get("item_id") == item["id"]]
    joined = "".join(e["delta"] for e in mine if e["type"].endswith(".delta"))
    if item["type"] in ("message", "reasoning"):
        assert joined == item["content"][0]["text"]
    elif item["type"] == "function_call":
        assert joined == item["arguments"]
        json.loads(item["arguments"])
    else:
        assert joined == item["input"]


def output(events_or_response: list[Json] | Json) -> list[Json]:
    response = (
        events_or_response[-1]["response"]
        if isinstance(events_or_response, list)
        else events_or_response
    )
    return list(response["output"])


def kinds(items: list[Json]) -> list[str]:
    return [item["type"] for item in items]


def text_of(items: list[Json]) -> str:
    return "".join(i["content"][0]["text"] for i in items if i["type"] == "message")


# ---- shapes -----------------------------------------------------------------------------------


def test_a_plain_answer_is_one_message_and_completes_with_usage() -> None:
    events = run(text_chunks(["Hel", "lo"], usage=USAGE))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed",
    ]  # fmt: skip
    response = events[-1]["response"]
    assert response["status"] == "completed"
    assert response["output"] == [{
        "type": "message", "id": "msg_abc_0", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": "Hello", "annotations": []}],
    }]  # fmt: skip
    assert response["usage"] == {
        "input_tokens": 30, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 39,
    }  # fmt: skip


USAGE_DETAILS = [
    ({"prompt_tokens": 5, "completion_tokens": 3}, 0, 0),
    ({"prompt_tokens": 5, "completion_tokens": 3, "prompt_tokens_details": None,
      "completion_tokens_details": None}, 0, 0),
    ({"prompt_tokens": 50, "completion_tokens": 30, "prompt_tokens_details": {"cached_tokens": 48},
      "completion_tokens_details": {"reasoning_tokens": 21}}, 48, 21),
    ({"prompt_tokens": 5, "completion_tokens": 3,
      "completion_tokens_details": {"reasoning_tokens": None, "accepted_prediction_tokens": 0}},
     0, 0),
]  # fmt: skip


@pytest.mark.parametrize(("usage", "cached", "reasoning"), USAGE_DETAILS)
@pytest.mark.parametrize("streamed", [True, False])
def test_cached_and_reasoning_tokens_come_from_the_backends_usage(
    usage: Json, cached: int, reasoning: int, streamed: bool
) -> None:
    if streamed:
        response = run(text_chunks(["Hi"], usage=usage))[-1]["response"]
    else:
        response = whole("Hi", usage=usage)
    details = response["usage"]
    assert details["input_tokens"] == usage["prompt_tokens"]
    assert details["output_tokens"] == usage["completion_tokens"]
    assert details["input_tokens_details"] == {"cached_tokens": cached}
    assert details["output_tokens_details"] == {"reasoning_tokens": reasoning}


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_fields_become_a_reasoning_item_never_text(field: str) -> None:
    chunks = [chunk(**{field: "let me"}), chunk(**{field: " think"}), *text_chunks(["Yes."])]
    items = output(run(chunks))
    assert kinds(items) == ["reasoning", "message"]
    assert items[0]["content"] == [{"type": "reasoning_text", "text": "let me think"}]
    assert items[0]["summary"] == [{"type": "summary_text", "text": "let me think"}]
    assert text_of(items) == "Yes."


def test_inline_think_tags_split_anywhere_stay_out_of_the_text() -> None:
    content = "<think>plan</think>\n\nAnswer"
    for at in range(len(content) + 1):
        items = output(run(text_chunks([content[:at], content[at:]])))
        assert kinds(items) == ["reasoning", "message"]
        assert text_of(items) == "Answer"
        assert "plan" not in text_of(items)


def test_tool_call_deltas_become_a_function_call_with_streamed_arguments() -> None:
    chunks = [
        chunk(tool_calls=[tool_delta(0, id_="call_1", name="exec_command", arguments='{"cmd"')]),
        chunk(tool_calls=[tool_delta(0, arguments=': "ls"}')]),
        chunk(finish_reason="tool_calls"),
    ]
    events = run(chunks)
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert deltas == ['{"cmd"', ': "ls"}']
    assert output(events) == [{
        "type": "function_call", "id": "fc_abc_0", "status": "completed", "call_id": "call_1",
        "name": "exec_command", "arguments": '{"cmd": "ls"}',
    }]  # fmt: skip


def test_parallel_calls_are_consecutive_items() -> None:
    chunks = [
        chunk(tool_calls=[tool_delta(0, id_="a", name="f", arguments="{}")]),
        chunk(tool_calls=[tool_delta(1, id_="b", name="g", arguments='{"x": 1}')]),
        chunk(finish_reason="tool_calls"),
    ]
    items = output(run(chunks))
    assert [(i["call_id"], i["name"]) for i in items] == [("a", "f"), ("b", "g")]


def test_calls_written_as_text_become_function_calls_with_made_up_ids() -> None:
    content = 'Sure.<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>'
    items = output(run(text_chunks([content])))
    assert kinds(items) == ["message", "function_call"]
    assert items[1]["call_id"] == "call_abc_1"
    assert json.loads(items[1]["arguments"]) == {"a": 1}


@pytest.mark.parametrize(
    "arguments",
    [json.dumps({"input": PATCH}), json.dumps({"patch": PATCH}), PATCH],
    ids=["the input argument", "another single string", "raw text"],
)
def test_a_custom_tool_call_carries_the_raw_input(arguments: str) -> None:
    chunks = [
        chunk(tool_calls=[tool_delta(0, id_="c", name="apply_patch", arguments=arguments)]),
        chunk(finish_reason="tool_calls"),
    ]
    events = run(chunks, custom_tools=frozenset({"apply_patch"}))
    assert output(events) == [{
        "type": "custom_tool_call", "id": "ctc_abc_0", "status": "completed", "call_id": "c",
        "name": "apply_patch", "input": PATCH,
    }]  # fmt: skip
    assert not [e for e in events if e["type"].startswith("response.function_call")]


def test_arguments_cut_by_the_limit_are_closed_and_the_answer_is_incomplete() -> None:
    chunks = [
        chunk(tool_calls=[tool_delta(0, id_="c", name="f", arguments='{"path": "a.t')]),
        chunk(finish_reason="length"),
    ]
    events = run(chunks)
    assert events[-1]["type"] == "response.incomplete"
    response = events[-1]["response"]
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert json.loads(response["output"][0]["arguments"]) == {"path": "a.t"}


def test_a_stream_without_a_finish_reason_fails_instead_of_completing() -> None:
    events = run([chunk("partial")])
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"


@pytest.mark.parametrize(
    ("error", "code"),
    [(BackendFailed(500, "boom"), "server_error"),
     (PromptTooLong("prompt is too long: 9 tokens > 8 maximum"), "context_length_exceeded")],
)  # fmt: skip
def test_a_failure_after_the_200_is_response_failed(error: Any, code: str) -> None:
    stream = machine()
    events = stream.start() + stream.feed_batch(text_chunks(["Hi"])[:1]) + stream.fail(error)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"] == {"code": code, "message": error.message}
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_a_keepalive_is_a_comment_and_takes_no_sequence_number() -> None:
    stream = machine()
    events = stream.start()
    reader = ChunkReader(stream)
    events += reader.feed(b": keepalive\n\n")
    assert events[-1] is PING
    assert encode_events([PING]) == b": ping\n\n"
    assert b"event: response.created\ndata: {" in encode_events(events[:1])


def test_custom_input_reads_what_models_write() -> None:
    assert custom_input('{"input": "x", "other": 1}') == "x"
    assert custom_input('"just a string"') == "just a string"
    assert custom_input("{not json") == "{not json"


# ---- every boundary ---------------------------------------------------------------------------

REPLY = (
    "<think>plan it</think>\n\nI will run it."
    '<tool_call>{"name": "exec_command", "arguments": {"cmd": "echo é > f"}}</tool_call>'
    '<tool_call>{"name": "apply_patch", "arguments": {"input": "*** Begin Patch\\n"}}</tool_call>'
)


def wire(content: str) -> bytes:
    body = {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def test_every_byte_boundary_of_the_backend_stream_gives_the_same_response() -> None:
    data = b"".join(wire(REPLY[at : at + 7]) for at in range(0, len(REPLY), 7))
    data += b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n'
    data += b"data: [DONE]\n\n"
    custom = frozenset({"apply_patch"})
    expected = output(whole(REPLY, "tool_calls", custom_tools=custom))
    for at in range(len(data) + 1):
        stream = machine(custom_tools=custom)
        reader = ChunkReader(stream, learn_from=2)
        events = stream.start() + reader.feed(data[:at]) + reader.feed(data[at:])
        events += reader.flush() + stream.finish()
        check_events([e for e in events if e is not PING])
        assert output(events) == expected
    assert kinds(expected) == ["reasoning", "message", "function_call", "custom_tool_call"]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_chunking_gives_the_whole_answers_response(data: st.DataObject) -> None:
    content = data.draw(replies())
    pieces = data.draw(chunkings(content))
    streamed = run(text_chunks(pieces, usage=USAGE))[-1]["response"]
    expected = whole(content)
    assert without_ids(streamed["output"]) == without_ids(expected["output"])
    for item in streamed["output"]:
        if item["type"] == "message":
            assert "<think>" not in item["content"][0]["text"]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_any_batching_gives_the_same_response_as_one_by_one(data: st.DataObject) -> None:
    content = data.draw(replies())
    chunks = text_chunks(data.draw(chunkings(content)), usage=USAGE)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(chunks)), max_size=4)))
    stream = machine()
    events = stream.start()
    for a, b in zip([0, *cuts], [*cuts, len(chunks)], strict=True):
        events += stream.feed_batch(chunks[a:b])
    events += stream.finish()
    check_events(events)
    assert without_ids(output(events)) == without_ids(output(run(chunks)))


def without_ids(items: list[Json]) -> list[Json]:
    return [{k: v for k, v in item.items() if k not in ("id", "call_id")} for item in items]
