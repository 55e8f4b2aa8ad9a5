"""Streaming on both endpoints through the real gateway process, against the scripted backend."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import StartGateway
from tests.support.anthropic_stream import accumulate, assert_well_formed, parse_sse
from tests.support.gateway import GatewayProcess
from tests.support.scripted_backend import (
    Completion,
    Drop,
    HttpError,
    Pause,
    ScriptedBackend,
    Stream,
    chunk,
    text_stream,
)

MODEL = "test-org/Stream-Model"
USAGE = {"prompt_tokens": 23, "completion_tokens": 4, "total_tokens": 27}
HELLO: dict[str, Any] = {
    "model": "m",
    "max_tokens": 32,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.fixture
def gateway(scripted_backend: ScriptedBackend, start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway(
        scripted_backend.url,
        "--mlx-model",
        MODEL,
        "--timeout",
        "1",
        "--total-timeout",
        "4",
        "--ping-interval",
        "0.3",
    )


@pytest.fixture
def client(gateway: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)


def dump_blocks(message: Any) -> list[dict[str, Any]]:
    """Content blocks as plain data; the SDK's stream gives Parsed* subclasses."""
    return [block.model_dump(exclude={"parsed_output"}) for block in message.content]


def stream_raw(gateway: GatewayProcess, body: dict[str, Any]) -> tuple[int, bytes]:
    with httpx.stream("POST", f"{gateway.url}/v1/messages", json=body, timeout=10) as response:
        return response.status_code, response.read()


def paced(pieces: list[str], seconds: float) -> Stream:
    """A text stream whose tokens arrive apart, each in a network read of its own."""
    items: list[Any] = [chunk({"role": "assistant", "content": ""})]
    for piece in pieces:
        items += [Pause(seconds), chunk({"content": piece})]
    return Stream([*items, chunk({}, "stop")], usage=USAGE)


def test_each_token_leaves_as_it_arrives(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    """Nothing is held back: a token that arrives alone is its own delta, sent before the next
    one exists (the backend pauses, well under --timeout)."""
    scripted_backend.queue(paced(["Bon", "jour", " le ", "monde"], 0.15))
    request = {key: value for key, value in HELLO.items() if key != "stream"}
    with client.messages.stream(**request) as stream:
        assert list(stream.text_stream) == ["Bon", "jour", " le ", "monde"]


def test_tokens_that_arrive_together_leave_as_one_delta(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    """Chunks in one backend write are translated as a batch: their text is one delta (what a
    fast backend under load sends), in the same block."""
    together = b"".join(
        b"data: " + json.dumps(chunk({"content": piece})).encode() + b"\n\n"
        for piece in ["Bon", "jour", " le ", "monde"]
    )
    scripted_backend.queue(
        Stream([chunk({"role": "assistant"}), Pause(0.1), together, chunk({}, "stop")], USAGE)
    )
    status, raw = stream_raw(gateway, HELLO)
    assert status == 200
    events = parse_sse(raw)
    assert_well_formed(events)
    deltas = [event["delta"] for event in events if event["type"] == "content_block_delta"]
    assert {delta["type"] for delta in deltas} == {"text_delta"}
    assert "".join(delta["text"] for delta in deltas) == "Bonjour le monde"
    # The answer's first text goes alone through the check for an opening <think>.
    assert [delta["text"] for delta in deltas[1:]] == ["jour le monde"]
    assert accumulate(events)["usage"]["output_tokens"] == 4


def test_sdk_stream_equals_non_streaming_answer(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(
        text_stream(["Bon", "jour", " le ", "monde"], usage=USAGE),
        Completion(text="Bonjour le monde", usage=USAGE),
    )
    request: dict[str, Any] = {
        "model": "m",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with client.messages.stream(**request) as stream:
        texts = list(stream.text_stream)
        streamed = stream.get_final_message()
    assert "".join(texts) == "Bonjour le monde"
    sent = scripted_backend.last_json()
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    plain = client.messages.create(**request)
    assert dump_blocks(streamed) == dump_blocks(plain)
    assert streamed.stop_reason == plain.stop_reason == "end_turn"
    assert streamed.usage.input_tokens == plain.usage.input_tokens == 23
    assert streamed.usage.output_tokens == plain.usage.output_tokens == 4
    assert streamed.model == plain.model == MODEL


def test_raw_event_sequence(gateway: GatewayProcess, scripted_backend: ScriptedBackend) -> None:
    scripted_backend.queue(text_stream(["a", "", "b"], finish_reason="length", usage=USAGE))
    status, raw = stream_raw(gateway, HELLO)
    assert status == 200
    events = parse_sse(raw)
    assert_well_formed(events)
    types = [event["type"] for event in events if event["type"] != "ping"]
    assert types == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[-2]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert events[-2]["usage"]["output_tokens"] == 4
    assert events[-2]["usage"]["input_tokens"] == 23
    assert b"[DONE]" not in raw


def test_content_and_finish_in_one_chunk_and_no_usage(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(
        Stream(
            [chunk({"role": "assistant", "content": "all at once"}, finish_reason="stop")],
            usage=None,
        )
    )
    status, raw = stream_raw(gateway, HELLO)
    assert status == 200
    events = parse_sse(raw)
    assert_well_formed(events)
    message = accumulate(events)
    assert message["content"] == [{"type": "text", "text": "all at once"}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"]["output_tokens"] >= 1


def test_stream_without_any_content(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(Stream([chunk({"role": "assistant"}), chunk({}, finish_reason="stop")]))
    status, raw = stream_raw(gateway, HELLO)
    assert status == 200
    events = parse_sse(raw)
    assert_well_formed(events)
    assert accumulate(events)["content"] == []


def test_keepalive_comments_and_silence_become_pings(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(
        Stream(
            [
                b": keepalive 1/3\n\n",
                b": keepalive 2/3\n\n",
                Pause(0.8),  # below --timeout 1, above --ping-interval 0.3
                *text_stream(["done"]).chunks,
            ]
        )
    )
    status, raw = stream_raw(gateway, HELLO)
    assert status == 200
    events = parse_sse(raw)
    assert_well_formed(events)
    pings = [event for event in events if event["type"] == "ping"]
    assert len(pings) >= 1 + 2 + 2  # the first ping, two forwarded keepalives, two for silence


def test_backend_dies_mid_stream(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(Stream([chunk({"role": "assistant", "content": "partial"}), Drop()]))
    status, raw = stream_raw(gateway, HELLO)
    assert status == 200
    events = parse_sse(raw)
    assert_well_formed(events)
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["type"] in ("api_error", "overloaded_error")
    assert "message_delta" not in [event["type"] for event in events]


def test_sdk_raises_on_mid_stream_error(
    client: anthropic.Anthropic, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(Stream([chunk({"role": "assistant", "content": "partial"}), Drop()]))
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.stream(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        stream.get_final_message()


def test_undecodable_chunk_gives_error_event(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(
        Stream([chunk({"role": "assistant", "content": "ok"}), b"data: {nope\n\n"])
    )
    status, raw = stream_raw(gateway, HELLO)
    assert status == 200
    events = parse_sse(raw)
    assert_well_formed(events)
    assert events[-1]["type"] == "error"


def test_no_progress_within_timeout(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(Stream([chunk({"role": "assistant", "content": "slow"}), Pause(3)]))
    started = time.monotonic()
    status, raw = stream_raw(gateway, HELLO)
    assert status == 200
    events = parse_sse(raw)
    assert events[-1]["type"] == "error"
    assert time.monotonic() - started < 2.5


def test_steady_stream_outlives_the_progress_timeout(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    pieces: list[Any] = [chunk({"role": "assistant", "content": ""})]
    for n in range(8):  # 8 x 0.25 s: twice --timeout in total, never 1 s without progress
        pieces += [Pause(0.25), chunk({"content": f"t{n} "})]
    pieces.append(chunk({}, finish_reason="stop"))
    scripted_backend.queue(Stream(pieces))
    status, raw = stream_raw(gateway, HELLO)
    assert status == 200
    events = parse_sse(raw)
    assert_well_formed(events)
    assert accumulate(events)["content"][0]["text"] == "".join(f"t{n} " for n in range(8))


def test_total_timeout_is_the_ceiling(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    pieces: list[Any] = [chunk({"role": "assistant", "content": ""})]
    pieces += [item for n in range(40) for item in (Pause(0.25), chunk({"content": "x"}))]
    scripted_backend.queue(Stream(pieces))
    started = time.monotonic()
    status, raw = stream_raw(gateway, HELLO)
    assert status == 200
    assert parse_sse(raw)[-1]["type"] == "error"
    assert time.monotonic() - started < 7


@pytest.mark.parametrize(
    ("reply", "status"),
    [(HttpError(500, {"error": "boom"}), 502), (HttpError(404, {"error": "nope"}), 400)],
)
def test_errors_before_the_stream_are_http_errors(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend, reply: HttpError, status: int
) -> None:
    scripted_backend.queue(reply)
    code, raw = stream_raw(gateway, HELLO)
    assert code == status
    assert json.loads(raw)["type"] == "error"


def test_backend_down_is_503_not_200(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.stop()
    code, raw = stream_raw(gateway, HELLO)
    assert code == 503
    assert json.loads(raw)["error"]["message"].startswith("MLX backend unavailable")


def test_client_disconnect_closes_the_backend_request(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    pieces: list[Any] = [chunk({"role": "assistant", "content": "first"})]
    pieces += [item for _ in range(100) for item in (Pause(0.1), chunk({"content": "more"}))]
    scripted_backend.queue(Stream(pieces))
    with _raw_post(gateway, HELLO) as sock:
        assert b"first" in _read_until(sock, b"first")
    _assert_backend_request_closed_soon(gateway, scripted_backend)


def test_client_leaving_a_whole_answer_closes_the_backend_request(
    start_gateway: StartGateway, scripted_backend: ScriptedBackend
) -> None:
    """A local model should not keep generating an answer nobody will read."""
    gateway = start_gateway(scripted_backend.url, "--timeout", "60")
    scripted_backend.queue(Completion(text="too late", delay=30))
    with _raw_post(gateway, {**HELLO, "stream": False}):
        scripted_backend.wait_for_chat_requests(1)
    _assert_backend_request_closed_soon(gateway, scripted_backend)


def _raw_post(gateway: GatewayProcess, body: dict[str, Any]) -> socket.socket:
    """A request on a socket the test closes itself, as a client that goes away."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    sock.sendall(
        b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


def _assert_backend_request_closed_soon(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    started = time.monotonic()
    scripted_backend.wait_for_disconnect(timeout=3)
    assert time.monotonic() - started < 1.5
    scripted_backend.queue(Completion(text="next one works"))
    response = httpx.post(f"{gateway.url}/v1/messages", json={**HELLO, "stream": False}, timeout=5)
    assert response.json()["content"][0]["text"] == "next one works"


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        data = sock.recv(65536)
        if not data:
            break
        received += data
    return received


# ---- OpenAI endpoint -----------------------------------------------------------------------------


def test_openai_stream_passes_through(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(text_stream(["one ", "two ", "three"], usage=USAGE))
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert scripted_backend.last_json()["model"] == MODEL


def test_openai_stream_ends_with_done_and_arrives_incrementally(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(
        Stream(
            [
                chunk({"role": "assistant", "content": "early"}),
                Pause(0.6),
                chunk({"content": "late"}, "stop"),  # a finish reason, then no end marker
            ],
            done=False,
        )
    )
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=10
    ) as response:
        started = time.monotonic()
        pieces = response.iter_bytes()
        first = next(pieces)
        assert b"early" in first
        assert time.monotonic() - started < 0.5
        rest = first + b"".join(pieces)
    assert rest.rstrip().endswith(b"data: [DONE]")


def test_openai_mid_stream_failure(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(Stream([chunk({"role": "assistant", "content": "partial"}), Drop()]))
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
