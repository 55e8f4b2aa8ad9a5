"""The template of a stream's plain text chunks: learned from one decoded chunk, then used to cut
runs apart without decoding them (mlx_gateway/textruns.py)."""

from __future__ import annotations

import json

import pytest

from mlx_gateway.sse import DataRun
from mlx_gateway.textruns import TextTemplate

MLX_STYLE = (
    '{"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, '
    '"delta": {"role": "assistant", "content": %s}, "logprobs": null, "finish_reason": null}]}'
)


def event(text: str, template: str = MLX_STYLE) -> bytes:
    return (template % json.dumps(text)).encode()


def raw(*payloads: bytes) -> bytes:
    return b"".join(b"data: " + payload + b"\n\n" for payload in payloads)


def run(*payloads: bytes) -> DataRun:
    return DataRun(raw(*payloads), len(payloads))


def learned(text: str = "Hi") -> TextTemplate:
    template = TextTemplate.learn(event(text), text)
    assert template is not None
    return template


def test_a_run_is_cut_into_its_texts_as_they_came() -> None:
    texts = ["a", 'say "x"', "back\\slash", "\n", "é", "", "\u2028"]
    split = learned().split(run(*[event(t) for t in texts]))
    assert split is not None
    assert split.escaped == b"".join(json.dumps(t).encode()[1:-1] for t in texts)
    assert (split.pieces, split.rest) == (6, None)


def test_the_events_after_the_run_are_handed_back() -> None:
    finish = b'{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}'
    split = learned().split(run(event("a"), event("b"), finish, b"[DONE]"))
    assert split is not None
    assert (split.escaped, split.pieces, split.rest) == (b"ab", 2, run(finish, b"[DONE]"))


@pytest.mark.parametrize(
    ("payloads", "why"),
    [
        ([b'{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}'], "another"),
        ([event("a", MLX_STYLE.replace('"c1"', '"c2"'))], "another id"),
        ([MLX_STYLE.replace("%s", '"a\\x"').encode()], "a bad escape"),
        ([MLX_STYLE.replace("%s", '"a","role":"b"').encode()], "a quote that is not escaped"),
        ([MLX_STYLE.replace("%s", '"a\\"').encode()], "a trailing backslash"),
        ([(MLX_STYLE % '"\xff"').encode("latin-1")], "not UTF-8"),
        ([event("a"), MLX_STYLE.replace("%s", '"b\tc"').encode()], "a raw control character"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_anything_else_is_left_to_the_decoder(payloads: list[bytes], why: str) -> None:
    assert learned().split(run(*payloads)) is None, why


def test_a_run_whose_last_event_is_cut_short_is_left_to_the_decoder() -> None:
    assert learned().split(DataRun(raw(event("a"))[:-2], 1)) is None


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (event("Hi"), "Ho"),  # the key holds another text
        (b'{"a": {"content": "Hi"}, "b": {"content": "Hi"}}', "Hi"),  # two keys
        (b'{"choices": []}', "Hi"),  # no key
        (b'{"content": "Hi', "Hi"),  # the string never ends
        (b'{"content": "\xff"}', "Hi"),  # not UTF-8
    ],
)
def test_nothing_is_learned_from_a_chunk_that_does_not_show_its_text_once(
    payload: bytes, text: str
) -> None:
    assert TextTemplate.learn(payload, text) is None


def test_a_key_written_inside_a_text_is_not_a_key() -> None:
    text = '{"content": "x"}'
    template = TextTemplate.learn(event(text), text)
    assert template is not None
    split = template.split(run(event("y")))
    assert split is not None
    assert split.escaped == b"y"
