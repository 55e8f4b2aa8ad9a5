"""A backend that fails after its 200 with an error frame (`data: {"error": {...}}`, as llama.cpp
and vLLM do) fails the stream in every protocol, with the backend's message: an `error` event on
/v1/messages, `response.failed` on /v1/responses, the frame itself on /v1/chat/completions."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import StartGateway
from tests.support.anthropic_stream import assert_well_formed, parse_sse
from tests.support.gateway import GatewayProcess
from tests.support.scripted_backend import HttpError, ScriptedBackend, Stream, chunk

MODEL = "test-org/Error-Frame-Model"
MESSAGE = "llama_decode: failed to decode the batch (KV cache full)"
FRAME = {"error": {"code": 500, "message": MESSAGE, "type": "server_error"}}
USER = [{"role": "user", "content": "hi"}]


def failing_stream() -> Stream:
    """Some text, then the error frame; the server then ends the stream as llama.cpp does."""
    head = [chunk({"role": "assistant", "content": ""}), chunk({"content": "partial"})]
    return Stream([*head, FRAME], usage=None, done=False)


@pytest.fixture
def gateway(scripted_backend: ScriptedBackend, start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway(scripted_backend.url, "--mlx-model", MODEL)


def post_stream(gateway: GatewayProcess, path: str, body: dict[str, Any]) -> str:
    response = httpx.post(f"{gateway.url}{path}", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def test_messages_end_with_an_error_event(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(failing_stream())
    body = {"model": "m", "max_tokens": 32, "stream": True, "messages": USER}
    events = parse_sse(post_stream(gateway, "/v1/messages", body).encode())
    assert_well_formed(events)
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["type"] == "api_error"
    assert MESSAGE in events[-1]["error"]["message"]
    kinds = [event["type"] for event in events]
    assert "message_delta" not in kinds  # no made-up stop reason
    assert "message_stop" not in kinds
    assert "Traceback" not in gateway.log()


def test_the_anthropic_sdk_raises_the_backends_message(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(failing_stream())
    client = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    with (
        pytest.raises(anthropic.APIStatusError, match="KV cache full"),
        client.messages.stream(model="m", max_tokens=5, messages=USER) as stream,
    ):
        stream.get_final_message()


def test_responses_end_with_response_failed(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(failing_stream())
    text = post_stream(gateway, "/v1/responses", {"model": "m", "input": "hi", "stream": True})
    frames = [f for f in text.split("\n\n") if f.startswith("event:")]
    events = [json.loads(frame.split("data: ", 1)[1]) for frame in frames]
    last = events[-1]
    assert last["type"] == "response.failed"
    assert last["response"]["status"] == "failed"
    assert last["response"]["error"]["code"] == "server_error"
    assert MESSAGE in last["response"]["error"]["message"]
    kinds = [event["type"] for event in events]
    assert "response.completed" not in kinds
    assert "response.incomplete" not in kinds
    numbers = [event["sequence_number"] for event in events]
    assert numbers == list(range(len(events)))


def test_the_openai_sdk_sees_response_failed(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(failing_stream())
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    events = list(client.responses.create(model="m", input="hi", stream=True))
    assert events[-1].type == "response.failed"
    error = events[-1].response.error  # type: ignore[union-attr]
    assert error is not None
    assert MESSAGE in error.message


def test_chat_completions_relay_the_frame_as_it_came(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(failing_stream())
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(model="m", messages=USER, stream=True)  # type: ignore[arg-type]
    texts: list[str | None] = []
    with pytest.raises(openai.APIError, match="KV cache full"):
        _read_texts(stream, texts)
    assert "partial" in texts


def _read_texts(stream: Any, texts: list[str | None]) -> None:
    for part in stream:
        texts.append(part.choices[0].delta.content if part.choices else None)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {"model": "m", "max_tokens": 8, "messages": USER}),
        ("/v1/responses", {"model": "m", "input": "hi"}),
    ],
    ids=["messages", "responses"],
)
def test_a_whole_answer_that_is_an_error_is_a_502(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend, path: str, body: dict[str, Any]
) -> None:
    scripted_backend.queue(HttpError(200, FRAME))
    response = httpx.post(f"{gateway.url}{path}", json=body, timeout=10)
    assert response.status_code == 502
    assert MESSAGE in response.text
    assert "Traceback" not in gateway.log()
