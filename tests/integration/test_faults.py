"""Backend faults after the 200: an answer cut off or undecodable never looks complete."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess
from tests.support.scripted_backend import (
    Drop,
    Malformed,
    ScriptedBackend,
    Stream,
    StreamItem,
    chunk,
    text_stream,
)

HELLO: dict[str, Any] = {
    "model": "m",
    "max_tokens": 8,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}
CHAT: dict[str, Any] = {
    "model": "m",
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}

START = chunk({"role": "assistant", "content": "Hel"})
CUT_OFF: dict[str, list[StreamItem]] = {
    "no finish reason, no end marker": [START, chunk({"content": "lo"})],
    "dropped mid-stream": [START, Drop()],
    "half an event at the end": [START, b'data: {"choices": [{"delta": {"content": "lo'],
    "an event whose JSON is cut": [START, b'data: {"choices": [\n\n'],
}


@pytest.fixture
def gateway(scripted_backend: ScriptedBackend, start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway(scripted_backend.url, "--timeout", "2")


def sse_events(text: str) -> list[tuple[str, str]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            events.append((fields.get("event", ""), fields["data"]))
    return events


@pytest.mark.parametrize("items", CUT_OFF.values(), ids=CUT_OFF.keys())
def test_anthropic_stream_cut_off_ends_with_an_error_event(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend, items: list[StreamItem]
) -> None:
    scripted_backend.queue(Stream(items, usage=None, done=False))
    response = httpx.post(f"{gateway.url}/v1/messages", json=HELLO, timeout=10)
    assert response.status_code == 200
    names = [name for name, _ in sse_events(response.text)]
    assert names[-1] == "error", names
    assert "message_stop" not in names
    assert "message_delta" not in names  # no stop reason is made up


@pytest.mark.parametrize("items", CUT_OFF.values(), ids=CUT_OFF.keys())
def test_openai_stream_cut_off_ends_with_an_error_object_and_no_done(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend, items: list[StreamItem]
) -> None:
    scripted_backend.queue(Stream(items, usage=None, done=False))
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=10)
    assert response.status_code == 200
    payloads = [data for _, data in sse_events(response.text)]
    assert "[DONE]" not in payloads
    assert "error" in json.loads(payloads[-1])


def test_openai_relay_never_sends_half_an_event(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(Stream(CUT_OFF["half an event at the end"], usage=None, done=False))
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=10)
    assert '"content": "lo' not in response.text
    for _, payload in sse_events(response.text):
        json.loads(payload)


def test_streams_that_end_properly_are_unchanged(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    """A finish reason without [DONE], and [DONE] without usage, are both whole answers."""
    scripted_backend.queue(Stream([START, chunk({}, "stop")], usage=None, done=False))
    names = [n for n, _ in sse_events(httpx.post(f"{gateway.url}/v1/messages", json=HELLO).text)]
    assert names[-2:] == ["message_delta", "message_stop"]
    scripted_backend.queue(Stream([START, chunk({}, "stop")], usage=None, done=True))
    payloads = [
        d for _, d in sse_events(httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT).text)
    ]
    assert payloads[-1] == "[DONE]"
    assert payloads.count("[DONE]") == 1
    scripted_backend.queue(Stream([START, chunk({}, "stop")], usage=None, done=False))
    payloads = [
        d for _, d in sse_events(httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT).text)
    ]
    assert payloads[-1] == "[DONE]"
    scripted_backend.queue(text_stream(["Hel", "lo"]))
    names = [n for n, _ in sse_events(httpx.post(f"{gateway.url}/v1/messages", json=HELLO).text)]
    assert names[-1] == "message_stop"


@pytest.mark.parametrize(
    "body", [b"<html>502 Bad Gateway</html>", b"", b'{"id": "x", "choices": [{"mess'], ids=str
)
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions"])
def test_a_200_that_is_not_json_is_a_500(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend, body: bytes, path: str
) -> None:
    scripted_backend.queue(Malformed(body))
    request = {**(HELLO if path == "/v1/messages" else CHAT), "stream": False}
    response = httpx.post(f"{gateway.url}{path}", json=request, timeout=10)
    assert response.status_code == 500
    error = response.json()["error"]
    assert "not a chat completion" in error["message"]
