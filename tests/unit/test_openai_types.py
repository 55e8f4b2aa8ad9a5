"""OpenAI wire types: backend answers decoded in one pass, backend error bodies, chat requests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlx_gateway.backends.upstream import error_message_from_body
from mlx_gateway.errors import BadBackendResponse, InvalidRequest
from mlx_gateway.openai.types import decode_chat_request
from mlx_gateway.parse.chat import decode_chunk, decode_completion

ERROR_BODIES: list[tuple[str, bytes, str]] = [
    ("mlx_lm string error", b'{"error": "boom"}', "boom"),
    ("openai shape", b'{"error": {"message": "bad", "type": "invalid_request_error",'
                     b' "param": null, "code": null}}', "bad"),
    ("llama.cpp shape", b'{"error": {"code": 400, "message": "the request exceeds the'
                        b' available context size", "type": "exceed_context_size_error"}}',
     "the request exceeds the available context size"),
    ("fastapi detail string", b'{"detail": "nope"}', "nope"),
    ("fastapi detail list", b'{"detail": [{"loc": ["body"], "msg": "x"}]}',
     '[{"loc":["body"],"msg":"x"}]'),
    ("top-level message", b'{"message": "m"}', "m"),
    ("error object without message", b'{"error": {"code": 5}}', '{"code":5}'),
    ("error wins over detail", b'{"error": "e", "detail": "d"}', "e"),
    ("unknown object", b'{"other": 1}', '{"other": 1}'),
    ("plain text", b"Internal Server Error", "Internal Server Error"),
    ("html", b"<html><body>502 Bad Gateway</body></html>\n",
     "<html><body>502 Bad Gateway</body></html>"),
    ("text with spaces stripped", b"  upstream timeout \r\n", "upstream timeout"),
    ("empty", b"", ""),
    ("json array", b"[1, 2]", "[1, 2]"),
    ("json string", b'"just a string"', '"just a string"'),
    ("invalid utf-8", b"\xff\xfe bad", "\ufffd\ufffd bad"),
    ("non-ascii message", '{"error": "modèle introuvable"}'.encode(), "modèle introuvable"),
]


@pytest.mark.parametrize(("raw", "message"), [c[1:] for c in ERROR_BODIES],
                         ids=[c[0] for c in ERROR_BODIES])
def test_error_message_from_body(raw: bytes, message: str) -> None:
    assert error_message_from_body(raw) == message


def test_long_text_bodies_are_cut() -> None:
    assert error_message_from_body(b"x" * 10_000) == "x" * 2000


# ---- completions and chunks ------------------------------------------------------------------


def test_completion_with_every_field_servers_send() -> None:
    raw = json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "system_fingerprint": "fp",
        "choices": [{
            "index": 0, "logprobs": None, "finish_reason": "stop", "stop_reason": "###",
            "message": {
                "role": "assistant", "content": "hi", "reasoning_content": "r1",
                "reasoning": "r2", "refusal": None,
                "tool_calls": [{"id": "c", "type": "function", "index": 0,
                                "function": {"name": "f", "arguments": '{"a": 1}'}}],
            },
        }],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                  "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 1}},
        "timings": {"prompt_ms": 1.0},
    }).encode()
    completion = decode_completion(raw)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.stop_reason == "###"
    assert choice.message.content == "hi"
    assert (choice.message.reasoning_content, choice.message.reasoning) == ("r1", "r2")
    assert choice.message.tool_calls is not None
    function = choice.message.tool_calls[0].function
    assert function is not None
    assert function.arguments == '{"a": 1}'
    assert completion.usage is not None
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 2


@pytest.mark.parametrize("stop_reason", [151645, "###", None])
def test_vllm_stop_reason_any_shape(stop_reason: Any) -> None:
    raw = json.dumps({"choices": [{"message": {"content": "x"}, "finish_reason": "stop",
                                   "stop_reason": stop_reason}]}).encode()
    assert decode_completion(raw).choices[0].stop_reason == stop_reason


def test_arguments_as_an_object() -> None:
    raw = json.dumps({"choices": [{"message": {"tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": {"a": [1]}}}
    ]}}]}).encode()
    calls = decode_completion(raw).choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function is not None
    assert calls[0].function.arguments == {"a": [1]}


MINIMAL_COMPLETIONS: list[tuple[str, bytes]] = [
    ("empty object", b"{}"),
    ("no usage", b'{"choices": [{"message": {"content": "x"}}]}'),
    ("no message", b'{"choices": [{"finish_reason": "stop"}]}'),
    ("null content", b'{"choices": [{"message": {"content": null}}]}'),
]


@pytest.mark.parametrize("raw", [c[1] for c in MINIMAL_COMPLETIONS],
                         ids=[c[0] for c in MINIMAL_COMPLETIONS])
def test_minimal_completions_decode(raw: bytes) -> None:
    decode_completion(raw)


BAD_COMPLETIONS: list[tuple[str, bytes]] = [
    ("not json", b"<html>"),
    ("an array", b"[]"),
    ("choices not a list", b'{"choices": {}}'),
    ("content a number", b'{"choices": [{"message": {"content": 5}}]}'),
    ("prompt_tokens a string", b'{"usage": {"prompt_tokens": "3"}}'),
]


@pytest.mark.parametrize("raw", [c[1] for c in BAD_COMPLETIONS],
                         ids=[c[0] for c in BAD_COMPLETIONS])
def test_bad_completions_are_bad_backend_responses(raw: bytes) -> None:
    with pytest.raises(BadBackendResponse, match="not a chat completion"):
        decode_completion(raw)


BAD_CHUNKS: list[tuple[str, bytes]] = [
    ("not json", b"<html>"),
    ("an array", b"[]"),
    ("choices not a list", b'{"choices": {}}'),
    ("content a number", b'{"choices": [{"delta": {"content": 5}}]}'),
    ("tool_calls an object", b'{"choices": [{"delta": {"tool_calls": {}}}]}'),
    ("prompt_tokens a string", b'{"usage": {"prompt_tokens": "3"}}'),
]


@pytest.mark.parametrize("raw", [c[1] for c in BAD_CHUNKS], ids=[c[0] for c in BAD_CHUNKS])
def test_bad_chunks_are_bad_backend_responses(raw: bytes) -> None:
    with pytest.raises(BadBackendResponse, match="not a chat completion chunk"):
        decode_chunk(raw)


def test_chunk_shapes() -> None:
    usage_only = decode_chunk(
        b'{"object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 1,'
        b' "completion_tokens": 2, "total_tokens": 3}}'
    )
    assert usage_only.choices == []
    assert usage_only.usage is not None
    assert usage_only.usage.completion_tokens == 2
    delta = decode_chunk('{"choices": [{"delta": {"content": "é"}}]}').choices[0].delta
    assert delta.content == "é"
    empty = decode_chunk(b'{"choices": [{"index": 0, "delta": {}, "finish_reason": null}]}')
    assert empty.choices[0].delta.content is None


# ---- OpenAI chat requests from clients -------------------------------------------------------

CHAT_ERRORS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "request body is empty; expected a JSON object"),
    ("not json", b"{", "request body is not valid JSON"),
    ("an array", b"[]", "request body must be a JSON object"),
    ("no messages", b'{"model": "m"}', "messages: expected a non-empty array"),
    ("empty messages", b'{"messages": []}', "messages: expected a non-empty array"),
    ("model a number", b'{"model": 1, "messages": [{}]}', "model: expected a string"),
    ("stream a string", b'{"messages": [{}], "stream": "yes"}', "stream: expected a boolean"),
]


@pytest.mark.parametrize(("raw", "message"), [c[1:] for c in CHAT_ERRORS],
                         ids=[c[0] for c in CHAT_ERRORS])
def test_chat_request_errors(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_chat_request(raw)
    assert caught.value.message.startswith(message)


def test_chat_request_is_kept_whole() -> None:
    request = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}],
               "stream": True, "anything": {"new": 1}}
    assert decode_chat_request(json.dumps(request).encode()) == request
