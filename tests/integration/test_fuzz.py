"""Fuzzing the gateway through its socket: valid requests of both protocols mutated in type,
value, nesting, unicode and bytes, plus framing junk on raw sockets. Every answer must be a
2xx of the right shape or a 4xx in the caller's error shape, never a 5xx, and the process
must keep answering. Bounded: a fixed number of examples, no deadline per example."""

from __future__ import annotations

import json
import math
import os
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.rawhttp import RawAnswer, is_error_shape
from tests.support.scripted_backend import (
    Completion,
    RecordedRequest,
    Reply,
    ScriptedBackend,
    text_stream,
)

# Per test; CI keeps the default (about 30 s in all), a longer run sets the variable.
EXAMPLES = int(os.environ.get("MLX_GATEWAY_FUZZ_EXAMPLES", "250"))
ANTHROPIC: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "system": [{"type": "text", "text": "You are terse."}],
    "temperature": 0.5,
    "stop_sequences": ["END"],
    "tools": [
        {
            "name": "read",
            "description": "Reads a file",
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
        }
    ],
    "tool_choice": {"type": "auto"},
    "messages": [
        {"role": "user", "content": "Read a.txt"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "read", "input": {"path": "a"}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "hello"},
                {"type": "text", "text": "Thanks", "cache_control": {"type": "ephemeral"}},
            ],
        },
    ],
}
OPENAI: dict[str, Any] = {
    "model": "gpt-4o",
    "temperature": 0.7,
    "max_tokens": 64,
    "stop": ["END"],
    "tools": [{"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}}],
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Read a.txt"}]},
    ],
}
# Typed fields and a value of the wrong type for each: the real APIs refuse these.
MISTYPED: dict[str, list[tuple[str, Any]]] = {
    "anthropic": [
        ("max_tokens", "10"),
        ("max_tokens", 1.5),
        ("max_tokens", True),
        ("max_tokens", -3),
        ("temperature", "hot"),
        ("temperature", 7),
        ("stream", "true"),
        ("messages", {}),
        ("stop_sequences", "END"),
        ("tools", [{"name": 3}]),
    ],
    "openai": [
        ("max_tokens", "10"),
        ("max_tokens", 0),
        ("temperature", -1),
        ("top_p", 3),
        ("stream", 1),
        ("messages", []),
        ("stop", [1, 2]),
        ("n", 1.0),
    ],
}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["", "\x00", "\ud800", "é😀\u202e", "<think>", "<tool_call>", "[DONE]"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(document))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return copy


def deleted(document: Any, path: tuple[Any, ...]) -> Any:
    copy = json.loads(json.dumps(document))
    target = copy
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    return copy


def encode(document: Any) -> bytes:
    """JSON as a client might send it, NaN and Infinity tokens included (they are not JSON)."""
    return json.dumps(document, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    every = list(paths(base))[1:]
    kind = draw(st.sampled_from(["replace", "delete", "add", "nest", "bytes", "stream"]))
    path = draw(st.sampled_from(every))
    if kind == "replace":
        document = replaced(base, path, draw(values))
    elif kind == "delete":
        document = deleted(base, path)
    elif kind == "add":
        document = {**base, draw(st.text(min_size=1, max_size=10)): draw(values)}
    elif kind == "nest":
        depth = draw(st.sampled_from([10, 200, 999, 1001, 5000]))
        document = replaced(base, path, json.loads("[" * min(depth, 900) + "]" * min(depth, 900)))
        if depth > 900:
            raw = encode(base)
            return raw[:-1] + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
    elif kind == "stream":
        document = {**base, "stream": True}
    else:
        raw = bytearray(encode(base))
        position = draw(st.integers(0, len(raw) - 1))
        raw[position : position + 1] = draw(st.binary(min_size=0, max_size=3))
        return bytes(raw)
    return encode(document)


class Tally:
    """The answers' counts, and one keep-alive client for the whole fuzz run."""

    def __init__(self, url: str) -> None:
        self.counts: Counter[str] = Counter()
        self.client = httpx.Client(base_url=url, timeout=10, headers=_JSON)

    def post(self, path: str, body: bytes, anthropic: bool) -> httpx.Response:
        answer = self.client.post(path, content=body)
        self.record(answer, anthropic)
        return answer

    def record(self, answer: httpx.Response, anthropic: bool) -> None:
        self.counts["requests"] += 1
        status = answer.status_code
        assert status < 500, (status, answer.text[:300])
        if status >= 400:
            raw = RawAnswer(status, b"", answer.content)
            assert is_error_shape(raw, anthropic), answer.text[:300]
            self.counts["4xx in shape"] += 1
            return
        assert status == 200
        self.counts["2xx"] += 1
        check_answer(answer, anthropic)


def check_answer(answer: httpx.Response, anthropic: bool) -> None:
    if answer.headers["content-type"].startswith("text/event-stream"):
        tail = answer.text.rstrip()
        assert tail.endswith('message_stop"}' if anthropic else "[DONE]"), tail[-200:]
        return
    body = answer.json()
    assert body["type"] == "message" if anthropic else "choices" in body


def respond(request: RecordedRequest) -> Reply:
    return text_stream(["Hi ", "there"]) if request.json().get("stream") else Completion()


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Tally]]:
    with ScriptedBackend() as backend:
        backend.set_responder(respond)
        tmp = tmp_path_factory.mktemp("fuzz")
        with running_gateway(backend.url, "--body-timeout", "2", tmp_dir=tmp) as gateway:
            tally = Tally(gateway.url)
            yield gateway, tally
            tally.client.close()
            assert gateway.alive()
            assert httpx.get(f"{gateway.url}/health").status_code == 200
            print(f"\nfuzz totals: {dict(tally.counts)}; 5xx: 0, crashes: 0")


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@FUZZ
@given(body=mutated(ANTHROPIC))
def test_fuzz_anthropic(fuzz_target: tuple[GatewayProcess, Tally], body: bytes) -> None:
    fuzz_target[1].post("/v1/messages", body, anthropic=True)


@FUZZ
@given(body=mutated(OPENAI))
def test_fuzz_openai(fuzz_target: tuple[GatewayProcess, Tally], body: bytes) -> None:
    gateway, tally = fuzz_target
    answer = httpx.post(
        f"{gateway.url}/v1/chat/completions", content=body, headers=_JSON, timeout=10
    )
    tally.record(answer, anthropic=False)


_JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("protocol", "field", "value"),
    [(protocol, field, value) for protocol, cases in MISTYPED.items() for field, value in cases],
)
def test_mistyped_fields_are_refused(
    fuzz_target: tuple[GatewayProcess, Tally], protocol: str, field: str, value: Any
) -> None:
    gateway, tally = fuzz_target
    anthropic = protocol == "anthropic"
    base, path = (ANTHROPIC, "/v1/messages") if anthropic else (OPENAI, "/v1/chat/completions")
    answer = httpx.post(
        f"{gateway.url}{path}", content=encode({**base, field: value}), headers=_JSON
    )
    assert answer.status_code == 400, answer.text[:300]
    tally.record(answer, anthropic)


@FUZZ
@given(
    prefix=st.sampled_from(
        [
            b"POST /v1/messages HTTP/1.1\r\n",
            b"POST /v1/chat/completions HTTP/1.1\r\n",
            b"GET / HTTP/1.1\r\n",
        ]
    ),
    junk=st.binary(max_size=200),
    length=st.one_of(st.none(), st.integers(-5, 500), st.text(max_size=5)),
    chunked=st.booleans(),
)
def test_fuzz_framing(
    fuzz_target: tuple[GatewayProcess, Tally],
    prefix: bytes,
    junk: bytes,
    length: Any,
    chunked: bool,
) -> None:
    gateway, tally = fuzz_target
    head = prefix + b"Host: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n".encode("utf-8", "surrogatepass")
    if chunked:
        head += b"Transfer-Encoding: chunked\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head + b"\r\n" + junk)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while data := sock.recv(65536):
            received += data
    tally.counts["raw"] += 1
    if received:
        status = int(received.split(b" ", 2)[1])
        assert status < 500, received[:300]


def test_still_serving_after_the_fuzz(fuzz_target: tuple[GatewayProcess, Tally]) -> None:
    gateway, _ = fuzz_target
    answer = httpx.post(f"{gateway.url}/v1/messages", json={**ANTHROPIC, "stop_sequences": None})
    assert answer.status_code == 200
    assert gateway.alive()
    assert math.isfinite(answer.elapsed.total_seconds())
