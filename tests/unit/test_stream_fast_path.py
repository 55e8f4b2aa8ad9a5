"""The fast paths for plain text (no ``<``, nothing held, no stop sequences) must give exactly
what the think splitter, the text tool-call extractor and the stop cutter would give: per chunk
of a stream, and for a whole answer written directly instead of through the state machine."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_gateway.anthropic import answer as answer_module
from mlx_gateway.anthropic.answer import is_plain_text, to_anthropic_message
from mlx_gateway.anthropic.stream import StreamTranslator
from mlx_gateway.parse.chat import decode_completion
from mlx_gateway.parse.think import ThinkSplitter
from tests.unit.test_stream import chunkings, replies, run, text_chunks

PLAIN_PIECES = ["Hello", " world", "\n\n", "  ", "x > y", "ok."]


def without_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(StreamTranslator, "_passes_text", lambda _self: False)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_reply_any_chunking_gives_the_same_events_as_the_layers(data: st.DataObject) -> None:
    content = data.draw(replies())
    pieces = data.draw(chunkings(content))
    options: dict[str, Any] = data.draw(
        st.sampled_from([{}, {"starts_in_reasoning": True}, {"stop_sequences": ["END"]}])
    )
    fast = run(text_chunks(pieces), **options)
    with pytest.MonkeyPatch.context() as patch:
        without_fast_path(patch)
        slow = run(text_chunks(pieces), **options)
    assert fast == slow


def test_plain_pieces_take_the_fast_path_once_the_answer_has_begun() -> None:
    stream = StreamTranslator(model="m", message_id="msg_1", estimated_input_tokens=1)
    assert not stream._passes_text()  # leading whitespace may still turn out to be reasoning's
    stream.start()
    for piece in PLAIN_PIECES:
        stream.feed(text_chunks([piece], usage=None)[0])
    assert stream._passes_text()


def test_watched_stop_sequences_never_take_the_fast_path() -> None:
    stream = StreamTranslator(
        model="m", message_id="msg_1", estimated_input_tokens=1, stop_sequences=["END"]
    )
    stream.start()
    for piece in PLAIN_PIECES:
        stream.feed(text_chunks([piece], usage=None)[0])
    assert not stream._passes_text()


@pytest.mark.parametrize("starts_in_reasoning", [False, True])
def test_think_splitter_without_a_tag_start_equals_its_general_path(
    starts_in_reasoning: bool,
) -> None:
    """Text without ``<`` skips the tag search; feeding it with a trailing ``<`` that turns out
    to be text (the general path) must give the same pieces."""
    for text in ["  ", "answer", "\n\nanswer  ", "a > b"]:
        fast = ThinkSplitter(starts_in_reasoning)
        general = ThinkSplitter(starts_in_reasoning)
        assert fast.feed(text) + fast.feed("<x") + fast.finish() == (
            general.feed(text + "<") + general.feed("x") + general.finish()
        )


# ---- whole answers: plain text is written directly -------------------------------------------

PLAIN_TEXT = st.text(
    st.characters(blacklist_characters="<", blacklist_categories=("Cs",)), max_size=30
) | st.sampled_from(["", " ", "\n\n", "  Hello  ", "a > b"])
FINISH = st.sampled_from(["stop", "length", "tool_calls", "content_filter", "weird", None])
USAGES = st.sampled_from(
    [
        None,
        {"prompt_tokens": 9, "completion_tokens": 4},
        {"prompt_tokens": 9, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 3}},
        {"prompt_tokens": 9, "completion_tokens": 4, "prompt_tokens_details": {}},
    ]
)


def completion(content: str | None, finish: str | None, usage: Any, **message: Any) -> Any:
    body = {
        "choices": [{"message": {"content": content, **message}, "finish_reason": finish}],
        "usage": usage,
    }
    return decode_completion(json.dumps(body).encode())


def whole(answer: Any, stop_sequences: list[str] | None = None) -> Any:
    return to_anthropic_message(
        answer, model="m", message_id="msg_1", stop_sequences=stop_sequences
    )


@settings(max_examples=300, deadline=None)
@given(st.none() | PLAIN_TEXT, FINISH, USAGES, st.sampled_from([None, []]))
def test_plain_text_answer_equals_the_state_machine(
    content: str | None, finish: str | None, usage: Any, stops: list[str] | None
) -> None:
    answer = completion(content, finish, usage)
    assert is_plain_text(answer.choices[0].message)
    direct = whole(answer, stops)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(answer_module, "is_plain_text", lambda _message: False)
        assert direct == whole(answer, stops)


@pytest.mark.parametrize(
    "message",
    [
        {"content": "a <think>b</think>"},
        {"content": "x", "reasoning": "r"},
        {"content": "x", "reasoning_content": "r"},
        {
            "content": None,
            "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
        },
    ],
)
def test_anything_but_plain_text_goes_through_the_state_machine(message: dict[str, Any]) -> None:
    answer = completion(finish="stop", usage=None, **message)
    assert not is_plain_text(answer.choices[0].message)
