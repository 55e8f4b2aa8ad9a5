"""Malformed and out-of-bounds requests: each a 4xx in its protocol's shape, checked before any
work that grows with it, and never a 5xx; what the real APIs accept still goes through."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from mlx_gateway import limits
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.rawhttp import exchange, is_error_shape, request_bytes
from tests.support.scripted_backend import (
    Completion,
    RecordedRequest,
    Reply,
    ScriptedBackend,
    text_stream,
)

MESSAGES = "/v1/messages"
CHAT = "/v1/chat/completions"
HELLO: dict[str, Any] = {
    "model": "m",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "hi"}],
}
CHAT_HELLO: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def answer(request: RecordedRequest) -> Reply:
    return text_stream(["hello"]) if request.json().get("stream") else Completion()


@pytest.fixture(scope="module")
def backend() -> Iterator[ScriptedBackend]:
    with ScriptedBackend() as server:
        server.set_responder(answer)
        yield server


@pytest.fixture(scope="module")
def gateway(
    backend: ScriptedBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """One gateway for the module: every case here leaves it as it found it."""
    tmp = tmp_path_factory.mktemp("bad-input")
    with running_gateway(backend.url, "--body-timeout", "2", tmp_dir=tmp) as process:
        yield process


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


ANTHROPIC_CASES: list[tuple[str, bytes, int]] = [
    ("max_tokens a string", json.dumps({**HELLO, "max_tokens": "10"}).encode(), 400),
    ("max_tokens a float", json.dumps({**HELLO, "max_tokens": 10.0}).encode(), 400),
    ("max_tokens a boolean", json.dumps({**HELLO, "max_tokens": True}).encode(), 400),
    ("max_tokens negative", json.dumps({**HELLO, "max_tokens": -1}).encode(), 400),
    ("max_tokens huge", json.dumps({**HELLO, "max_tokens": 10**30}).encode(), 400),
    ("temperature above 1", json.dumps({**HELLO, "temperature": 1.5}).encode(), 400),
    ("temperature infinite", json.dumps(HELLO)[:-1].encode() + b', "temperature": 1e999}', 400),
    ("temperature NaN", json.dumps(HELLO)[:-1].encode() + b', "temperature": NaN}', 400),
    ("top_p negative", json.dumps({**HELLO, "top_p": -0.1}).encode(), 400),
    ("stream a string", json.dumps({**HELLO, "stream": "yes"}).encode(), 400),
    (
        "too many stop sequences",
        json.dumps({**HELLO, "stop_sequences": ["s"] * (limits.MAX_STOP_SEQUENCES + 1)}).encode(),
        400,
    ),
    (
        "a stop sequence too long",
        json.dumps(
            {**HELLO, "stop_sequences": ["x" * (limits.MAX_STOP_SEQUENCE_CHARS + 1)]}
        ).encode(),
        400,
    ),
    (
        "too many tools",
        json.dumps({**HELLO, "tools": [{"name": "t"}] * (limits.MAX_TOOLS + 1)}).encode(),
        400,
    ),
    (
        "a schema too large",
        json.dumps(
            {
                **HELLO,
                "tools": [
                    {
                        "name": "t",
                        "input_schema": {"description": "x" * limits.MAX_TOOL_SCHEMA_BYTES},
                    }
                ],
            }
        ).encode(),
        400,
    ),
    (
        "too many messages",
        json.dumps({**HELLO, "messages": HELLO["messages"] * (limits.MAX_MESSAGES + 1)}).encode(),
        400,
    ),
    (
        "nested 1,000 levels in a tool input",
        json.dumps(HELLO)[:-1].encode()
        + b', "metadata": {"user_id": "u"}, "x": '
        + deep_json(1000).encode()
        + b"}",
        400,
    ),
    (
        "nested 100,000 levels",
        b'{"model": "m", "max_tokens": 1, "messages": [{"role": "assistant", "content": '
        b'[{"type": "tool_use", "id": "a", "name": "b", "input": {"a": '
        + deep_json(100_000).encode()
        + b"}}]}]}",
        400,
    ),
    (
        "bad UTF-8 in text",
        json.dumps(HELLO).replace("hi", "h\udcff").encode("utf-8", "surrogateescape"),
        400,
    ),
    (
        "bad UTF-8 in a tool schema",
        json.dumps({**HELLO, "tools": [{"name": "t", "input_schema": {"d": "SENTINEL"}}]})
        .encode()
        .replace(b"SENTINEL", b"\xc3\x28"),
        400,
    ),
    ("not JSON", b"{nope", 400),
    ("empty", b"", 400),
]

OPENAI_CASES: list[tuple[str, bytes, int]] = [
    ("max_tokens a string", json.dumps({**CHAT_HELLO, "max_tokens": "10"}).encode(), 400),
    ("max_tokens negative", json.dumps({**CHAT_HELLO, "max_tokens": -1}).encode(), 400),
    ("max_tokens a float", json.dumps({**CHAT_HELLO, "max_tokens": 1.5}).encode(), 400),
    ("temperature above 2", json.dumps({**CHAT_HELLO, "temperature": 2.5}).encode(), 400),
    ("temperature a string", json.dumps({**CHAT_HELLO, "temperature": "hot"}).encode(), 400),
    ("n zero", json.dumps({**CHAT_HELLO, "n": 0}).encode(), 400),
    ("five stops", json.dumps({**CHAT_HELLO, "stop": ["a", "b", "c", "d", "e"]}).encode(), 400),
    (
        "a message without a role",
        json.dumps({**CHAT_HELLO, "messages": [{"content": "x"}]}).encode(),
        400,
    ),
    ("an unknown role", json.dumps({**CHAT_HELLO, "messages": [{"role": "x"}]}).encode(), 400),
    ("tools not a list", json.dumps({**CHAT_HELLO, "tools": {"a": 1}}).encode(), 400),
    (
        "nested 1,000 levels",
        json.dumps(CHAT_HELLO)[:-1].encode() + b', "x": ' + deep_json(1000).encode() + b"}",
        400,
    ),
    (
        "bad UTF-8",
        json.dumps(CHAT_HELLO).replace("hi", "h\udcff").encode("utf-8", "surrogateescape"),
        400,
    ),
]


@pytest.mark.parametrize(
    ("body", "status"), [case[1:] for case in ANTHROPIC_CASES], ids=[c[0] for c in ANTHROPIC_CASES]
)
def test_anthropic_bad_requests(gateway: GatewayProcess, body: bytes, status: int) -> None:
    answer = exchange(gateway.port, request_bytes(MESSAGES, body))
    assert answer.status == status, answer.body[:300]
    assert is_error_shape(answer, anthropic=True)
    assert gateway.alive()


@pytest.mark.parametrize(
    ("body", "status"), [case[1:] for case in OPENAI_CASES], ids=[c[0] for c in OPENAI_CASES]
)
def test_openai_bad_requests(gateway: GatewayProcess, body: bytes, status: int) -> None:
    answer = exchange(gateway.port, request_bytes(CHAT, body))
    assert answer.status == status, answer.body[:300]
    assert is_error_shape(answer, anthropic=False)


def test_what_the_real_apis_accept_still_goes_through(
    gateway: GatewayProcess, backend: ScriptedBackend
) -> None:
    generous = {
        **HELLO,
        "unknown_field": {"nested": [1, 2, {"x": None}]},
        "temperature": 1,
        "top_p": 0,
        "top_k": 0,
        "stop_sequences": ["s" * limits.MAX_STOP_SEQUENCE_CHARS] * 2,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "é😀", "extra": 1}]}],
        "tools": [{"name": "t", "input_schema": {"type": "object", "properties": nested(50)}}],
    }
    assert (
        exchange(gateway.port, request_bytes(MESSAGES, json.dumps(generous).encode())).status == 200
    )
    chat = {**CHAT_HELLO, "temperature": 2, "stop": "x", "n": 1, "top_k": 5, "min_p": 0.1}
    assert exchange(gateway.port, request_bytes(CHAT, json.dumps(chat).encode())).status == 200
    assert backend.last_json()["min_p"] == 0.1


def test_a_body_shorter_than_its_content_length_is_a_400(gateway: GatewayProcess) -> None:
    body = json.dumps(HELLO).encode()
    data = request_bytes(MESSAGES, body, length=len(body) + 50, headers={"Connection": ""})
    answer = exchange(gateway.port, data, half_close=True)
    assert answer.status == 400
    assert is_error_shape(answer, anthropic=True)
    assert " ERROR " not in gateway.log()


def test_a_stalled_body_times_out_with_a_408(gateway: GatewayProcess) -> None:
    body = json.dumps(HELLO).encode()
    answer = exchange(gateway.port, request_bytes(MESSAGES, body[:10], length=len(body)))
    assert answer.status == 408
    assert is_error_shape(answer, anthropic=True)


@pytest.mark.parametrize(
    "framing",
    [
        b"zz\r\n{}\r\n0\r\n\r\n",  # a size that is not hex
        b"2\r\n{}XX0\r\n\r\n",  # no CRLF after the data
        b"100\r\n{}\r\n0\r\n\r\n",  # data shorter than its size, then the end
    ],
)
def test_bad_chunked_framing_is_a_4xx(gateway: GatewayProcess, framing: bytes) -> None:
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    answer = exchange(gateway.port, head + framing, half_close=True)
    assert 400 <= answer.status < 500 or answer.status == 0  # 0: the server closed, as HTTP allows
    assert gateway.alive()
    assert " ERROR " not in gateway.log()


def test_a_huge_header_is_refused(gateway: GatewayProcess) -> None:
    big = {"X-Big": "a" * (limits.MAX_HEADER_BYTES + 1)}
    answer = exchange(
        gateway.port, request_bytes(MESSAGES, json.dumps(HELLO).encode(), headers=big)
    )
    assert answer.status == 431
