"""The template of a stream's plain text chunks: learned from one decoded chunk, then used to cut
runs apart without decoding them (mlx_gateway/textruns.py)."""

from __future__ import annotations

import json

import pytest

from mlx_gateway.parse.textruns import TextTemplate

MLX_STYLE = (
    '{"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, '
    '"delta": {"role": "assistant", "content": %s}, "logprobs": null, "finish_reason": null}]}'
)


def event(text: str, template: str = MLX_STYLE) -> bytes:
    return (template % json.dumps(text)).encode()


def raw(*payloads: bytes) -> bytes:
    return b"".join(b"data: " + payload + b"\n\n" for payload in payloads)


def learned(text: str = "Hi") -> TextTemplate:
    template = TextTemplate.learn(event(text), text)
    assert template is not None
    return template


def test_a_run_is_cut_into_its_texts_as_they_came() -> None:
    texts = ["a", 'say "x"', "back\\slash", "\n", "é", "", "\u2028"]
    split = learned().split(raw(*[event(t) for t in texts]))
    assert split is not None
    assert split.escaped == b"".join(json.dumps(t).encode()[1:-1] for t in texts)
    assert (split.pieces, split.rest) == (6, b"")


def test_the_events_after_the_run_are_handed_back() -> None:
    finish = b'{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}'
    split = learned().split(raw(event("a"), event("b"), finish, b"[DONE]"))
    assert split is not None
    assert (split.escaped, split.pieces, split.rest) == (b"ab", 2, raw(finish, b"[DONE]"))


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
    assert learned().split(raw(*payloads)) is None, why


def test_an_event_the_read_cut_off_is_handed_back() -> None:
    whole = raw(event("a"), event("b"))
    assert learned().split(whole[: len(raw(event("a"))) - 1]) is None  # the only event
    for cut in (len(whole) - 2, len(whole) - 1, len(whole) - 10, len(raw(event("a"))) + 10):
        split = learned().split(whole[:cut])
        assert split is not None
        assert (split.escaped, split.rest) == (b"a", whole[len(raw(event("a"))) : cut])


def test_events_that_fit_after_one_that_does_not_are_left_to_the_decoder() -> None:
    other = b'{"choices": [{"index": 0, "delta": {"tool_calls": []}, "finish_reason": null}]}'
    assert learned().split(raw(event("a"), other, event("b"))) is None


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
    split = template.split(raw(event("y")))
    assert split is not None
    assert split.escaped == b"y"
