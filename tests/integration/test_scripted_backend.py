"""The scripted backend answers like an OpenAI-compatible server, as raw HTTP and the SDK see it."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.support.scripted_backend import (
    Completion,
    Delay,
    Drop,
    DropConnection,
    Hang,
    HttpError,
    Malformed,
    Pause,
    RecordedRequest,
    Reply,
    ScriptedBackend,
    Stream,
    chunk,
    text_stream,
)

Connect = Callable[..., http.client.HTTPConnection]
CHAT_BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def backend(scripted_backend: ScriptedBackend) -> ScriptedBackend:
    return scripted_backend


@pytest.fixture
def client(backend: ScriptedBackend) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=backend.url + "/v1", api_key="x", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def connect(backend: ScriptedBackend) -> Iterator[Connect]:
    """Opens raw connections to the backend, all closed after the test."""
    opened: list[http.client.HTTPConnection] = []

    def open_connection(timeout: float = 5.0) -> http.client.HTTPConnection:
        opened.append(http.client.HTTPConnection("127.0.0.1", backend.port, timeout=timeout))
        return opened[-1]

    yield open_connection
    for conn in opened:
        conn.close()


def post(conn: http.client.HTTPConnection) -> http.client.HTTPResponse:
    headers = {"Content-Type": "application/json"}
    conn.request("POST", "/v1/chat/completions", json.dumps(CHAT_BODY), headers)
    return conn.getresponse()


def fetch(backend: ScriptedBackend, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(backend.url + path, data=data, timeout=5) as response:
        return json.load(response)


def chat(backend: ScriptedBackend) -> Any:
    return fetch(backend, "/v1/chat/completions", CHAT_BODY)


def text_of(completion: Any) -> Any:
    return completion["choices"][0]["message"]["content"]


def read_event(response: http.client.HTTPResponse) -> bytes:
    """Lines up to the blank line that ends one SSE event."""
    lines = []
    while (line := response.readline()) not in (b"\n", b""):
        lines.append(line)
    return b"".join(lines)


def data_lines(raw: bytes) -> list[str]:
    return [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]


# --- completions


def test_completion_through_the_sdk(backend: ScriptedBackend, client: openai.OpenAI) -> None:
    backend.queue(Completion(text="hi there"))
    result = client.chat.completions.create(
        model="asked-model", messages=[{"role": "user", "content": "hello"}]
    )
    assert result.choices[0].message.content == "hi there"
    assert result.choices[0].finish_reason == "stop"
    assert result.model == "asked-model"
    assert result.id.startswith("chatcmpl-")
    assert result.usage is not None
    assert result.usage.total_tokens == 18
    assert backend.last_json()["messages"] == [{"role": "user", "content": "hello"}]
    assert backend.requests[0].path == "/v1/chat/completions"
    assert backend.requests[0].headers["authorization"] == "Bearer x"


def test_tool_calls_and_reasoning(backend: ScriptedBackend, client: openai.OpenAI) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    backend.queue(
        Completion(text=None, finish_reason="tool_calls", tool_calls=[call], usage=None),
        Completion(reasoning_content="thought", reasoning="also", extra_message={"x": 1}),
    )
    result = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "?"}])
    tool_call = result.choices[0].message.tool_calls
    assert tool_call is not None
    assert tool_call[0].function.name == "f"  # type: ignore[union-attr]
    assert result.choices[0].finish_reason == "tool_calls"
    assert result.usage is None
    message = fetch(backend, "/chat/completions", CHAT_BODY)["choices"][0]["message"]
    assert message == {
        "role": "assistant", "content": "hello", "reasoning_content": "thought",
        "reasoning": "also", "x": 1,
    }


def test_model_override_and_delay(backend: ScriptedBackend) -> None:
    backend.queue(Delay(0.2, Completion(model="other", delay=0.1)))
    started = time.monotonic()
    assert chat(backend)["model"] == "other"
    assert time.monotonic() - started >= 0.3


# --- streams


def test_stream_through_the_sdk(backend: ScriptedBackend, client: openai.OpenAI) -> None:
    backend.queue(text_stream(["Hel", "lo"], reasoning_pieces=["hmm"]))
    chunks = list(
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[1].choices[0].delta.model_extra == {"reasoning_content": "hmm"}
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 7


def test_stream_wire_format(backend: ScriptedBackend, connect: Connect) -> None:
    backend.queue(
        Stream([b": keepalive 1/10\n\n", chunk({"content": "a"}, "stop")]),
        Stream([chunk({"content": "b"})], usage=None, done=False, headers={"X-Extra": "1"}),
    )
    response = post(connect())
    assert response.getheader("Content-Type") == "text/event-stream"
    raw = response.read()
    assert raw.startswith(b": keepalive 1/10\n\ndata: {")
    data = data_lines(raw)
    assert [json.loads(d)["choices"] for d in data[:2]] == [
        [{"index": 0, "delta": {"content": "a"}, "logprobs": None, "finish_reason": "stop"}],
        [],
    ]
    assert data[2] == "[DONE]"
    response = post(connect())
    assert response.getheader("X-Extra") == "1"
    assert len(data_lines(response.read())) == 1


def test_stream_is_written_as_it_happens(backend: ScriptedBackend, connect: Connect) -> None:
    backend.queue(Stream([chunk({"content": "now"}), Pause(2), chunk({"content": "later"})]))
    started = time.monotonic()
    response = post(connect())
    first = read_event(response)
    assert time.monotonic() - started < 1.5
    assert b'"now"' in first
    assert b'"later"' in read_event(response)
    assert time.monotonic() - started >= 2


def test_drop_mid_stream(backend: ScriptedBackend, connect: Connect) -> None:
    backend.queue(Stream([chunk({"content": "a"}), Drop(), chunk({"content": "never"})]))
    response = post(connect())
    assert b'"a"' in read_event(response)
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    assert backend.disconnects == []


def test_client_disconnect_mid_stream_is_recorded(
    backend: ScriptedBackend, connect: Connect
) -> None:
    backend.queue(Completion(), Stream([chunk({"content": "a"}), Pause(30), chunk({})]))
    chat(backend)
    conn = connect()
    response = post(conn)
    read_event(response)
    response.close()
    conn.close()
    backend.wait_for_disconnect()
    assert backend.disconnects == [1]


# --- failures


def test_http_errors(backend: ScriptedBackend, client: openai.OpenAI) -> None:
    backend.queue(
        HttpError(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "1"}),
        HttpError(503, "overloaded"),
    )
    with pytest.raises(openai.RateLimitError, match="slow down"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(urllib.error.HTTPError) as caught:
        chat(backend)
    assert caught.value.code == 503
    assert caught.value.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert caught.value.read() == b"overloaded"


def test_malformed(backend: ScriptedBackend, connect: Connect) -> None:
    backend.queue(Malformed())
    response = post(connect())
    assert (response.status, response.read()) == (200, b"{not json")
    assert response.getheader("Content-Type") == "application/json"


def test_drop_connection(backend: ScriptedBackend, connect: Connect) -> None:
    backend.queue(DropConnection(), Completion(text="next"))
    with pytest.raises(ConnectionError):
        post(connect())
    assert text_of(chat(backend)) == "next"
    assert backend.disconnects == []


def test_hang_until_client_times_out(backend: ScriptedBackend, connect: Connect) -> None:
    backend.queue(Hang())
    conn = connect(timeout=0.3)
    with pytest.raises(TimeoutError):
        post(conn)
    conn.close()
    backend.wait_for_disconnect()
    assert backend.disconnects == [0]


def test_nothing_queued_fails_loudly(backend: ScriptedBackend) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        chat(backend)
    assert caught.value.code == 500
    assert json.load(caught.value) == {"error": "scripted backend: no reply queued"}


# --- other routes


def test_models_health_and_unknown_routes(backend: ScriptedBackend, client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["scripted-model"]
    assert fetch(backend, "/health") == {"status": "ok"}
    with pytest.raises(urllib.error.HTTPError) as caught:
        fetch(backend, "/v1/embeddings", {"input": "x"})
    assert caught.value.code == 404
    assert "error" in json.load(caught.value)
    assert [(r.method, r.path) for r in backend.requests] == [
        ("GET", "/v1/models"), ("GET", "/health"), ("POST", "/v1/embeddings"),
    ]
    assert backend.chat_requests == []


# --- lifecycle and load


def test_stop_and_start_on_the_same_port(backend: ScriptedBackend, client: openai.OpenAI) -> None:
    backend.queue(Completion(text="one"), Completion(text="two"), Completion(text="three"))
    port = backend.port
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    assert client.chat.completions.create(model="m", messages=messages).choices[0].message.content
    backend.stop()
    with pytest.raises(urllib.error.URLError):
        fetch(backend, "/health")
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=messages)
    backend.start()
    assert backend.port == port
    assert text_of(chat(backend)) == "two"
    # A pooled client whose connection the stop closed reconnects on its own.
    assert client.chat.completions.create(model="m", messages=messages).choices[0].message.content


def test_large_request_body(backend: ScriptedBackend) -> None:
    backend.queue(Completion())
    big = {**CHAT_BODY, "messages": [{"role": "user", "content": "x" * 5_000_000}]}
    assert text_of(fetch(backend, "/v1/chat/completions", big)) == "hello"
    assert len(backend.last_json()["messages"][0]["content"]) == 5_000_000


def test_stop_does_not_wait_for_open_requests(backend: ScriptedBackend, connect: Connect) -> None:
    backend.queue(Hang(), Stream([chunk({"content": "a"}), Pause(60)]))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            post(connect(timeout=30)).read()
        except (ConnectionError, http.client.HTTPException) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    backend.wait_for_requests(2)
    time.sleep(0.2)  # let the stream get past its first chunk
    started = time.monotonic()
    backend.stop()
    assert time.monotonic() - started < 2
    for thread in threads:
        thread.join(timeout=5)
    assert len(errors) == 2
    assert backend.disconnects == []
    backend.start()
    backend.queue(Completion())
    assert chat(backend)["object"] == "chat.completion"


def test_concurrent_requests_are_answered_concurrently(backend: ScriptedBackend) -> None:
    count = 50
    backend.queue(*(Completion(text=str(i), delay=0.5) for i in range(count)))
    started = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        replies = list(pool.map(lambda _: chat(backend), range(count)))
    assert time.monotonic() - started < 4
    texts = {text_of(reply) for reply in replies}
    assert texts == {str(i) for i in range(count)}
    assert len(backend.chat_requests) == count


def test_responder_answers_from_the_conversation(
    backend: ScriptedBackend, client: openai.OpenAI
) -> None:
    def respond(request: RecordedRequest) -> Reply:
        return Completion(text=f"{len(request.json()['messages'])} messages")

    backend.queue(Completion(text="queued"))
    backend.set_responder(respond)
    messages: list[Any] = [{"role": "user", "content": "a"}]
    first = client.chat.completions.create(model="m", messages=messages)
    messages += [{"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    second = client.chat.completions.create(model="m", messages=messages)
    assert [first.choices[0].message.content, second.choices[0].message.content] == [
        "1 messages", "3 messages",
    ]
    backend.set_responder(None)
    assert client.chat.completions.create(model="m", messages=messages).choices[0].message.content
    assert backend.last_json()["messages"][-1]["content"] == "c"


def test_broken_responder_answers_500(backend: ScriptedBackend) -> None:
    def respond(request: RecordedRequest) -> Reply:
        raise KeyError("oops")

    backend.set_responder(respond)
    with pytest.raises(urllib.error.HTTPError) as caught:
        chat(backend)
    assert "KeyError" in json.load(caught.value)["error"]


def test_wait_for_requests_times_out_with_a_message(backend: ScriptedBackend) -> None:
    with pytest.raises(AssertionError, match="no 1 request"):
        backend.wait_for_requests(1, timeout=0.1)


def test_context_manager_starts_and_stops() -> None:
    with ScriptedBackend(model="other-model") as backend:
        assert [model["id"] for model in fetch(backend, "/v1/models")["data"]] == ["other-model"]
    with pytest.raises(urllib.error.URLError):
        fetch(backend, "/health")
