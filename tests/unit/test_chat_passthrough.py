"""OpenAI chat requests are forwarded with only their top level decoded: checked like before,
every other byte sent on as the client wrote it."""

from __future__ import annotations

import json

import msgspec
import pytest

from mlx_gateway.anthropic.types import decode_messages_request
from mlx_gateway.errors import InvalidRequest
from mlx_gateway.openai.types import decode_chat_request, raw_json, read_chat_request
from tests.unit.test_openai_types import CHAT_ERRORS

MORE_ERRORS = [
    ("messages not an array", b'{"messages": {"role": "user"}}', "messages: expected"),
    ("messages null", b'{"messages": null}', "messages: expected a non-empty array"),
    ("model null", b'{"model": null, "messages": [{}]}', "model: expected a string"),
    ("stream null", b'{"messages": [{}], "stream": null}', "stream: expected a boolean"),
    ("broken inside", b'{"messages": [{"a": }]}', "request body is not valid JSON"),
    ("bad utf-8 inside", b'{"messages": [{"a": "\xff"}]}', "request body is not valid JSON"),
    ("trailing junk", b'{"messages": [{}]} x', "request body is not valid JSON"),
]


@pytest.mark.parametrize(
    ("raw", "message"),
    [case[1:] for case in CHAT_ERRORS + MORE_ERRORS],
    ids=[case[0] for case in CHAT_ERRORS + MORE_ERRORS],
)
def test_errors_are_the_full_decoders(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        read_chat_request(raw)
    assert caught.value.message.startswith(message)
    with pytest.raises(InvalidRequest) as full:
        decode_chat_request(raw)
    assert full.value.message == caught.value.message


def test_values_go_out_byte_for_byte_with_only_the_model_replaced() -> None:
    body = (
        b'{"model": "gpt-x", "messages": [{"role": "user", "content": "caf\xc3\xa9 \\u00e9 1e2"}],'
        b' "temperature": 0.50, "tools": [ {"type": "function"} ], "stream": true}'
    )
    chat = read_chat_request(body)
    assert (chat.model, chat.stream) == ("gpt-x", True)
    chat.fields["model"] = raw_json("local")
    sent = msgspec.json.encode(chat.fields)
    assert sent == (
        b'{"model":"local","messages":[{"role": "user", "content": "caf\xc3\xa9 \\u00e9 1e2"}],'
        b'"temperature":0.50,"tools":[ {"type": "function"} ],"stream":true}'
    )
    assert json.loads(sent) == {**json.loads(body), "model": "local"}


def test_defaults_when_model_and_stream_are_absent() -> None:
    chat = read_chat_request(b'{"messages": [{"role": "user", "content": "hi"}]}')
    assert (chat.model, chat.stream) == ("", False)
    assert list(chat.fields) == ["messages"]


def test_bad_utf8_in_an_anthropic_request_is_a_400_not_a_crash() -> None:
    body = b'{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "\xff"}]}'
    with pytest.raises(InvalidRequest, match="request body is not valid JSON"):
        decode_messages_request(body)
