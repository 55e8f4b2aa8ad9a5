"""Every error path, in each protocol's own shape, through the real gateway process."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess
from tests.support.ports import free_port
from tests.support.scripted_backend import (
    Completion,
    DropConnection,
    Hang,
    HttpError,
    Malformed,
    ScriptedBackend,
)

HELLO: dict[str, Any] = {
    "model": "m",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "hi"}],
}
CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def gateway(scripted_backend: ScriptedBackend, start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway(scripted_backend.url, "--timeout", "1", "--total-timeout", "5")


def assert_anthropic_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str)
    assert set(body) == {"type", "error"}
    return str(body["error"]["message"])


def assert_openai_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["param"] is None
    assert error["code"] is None
    return str(error["message"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": 3, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        (
            {"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]},
            "max_tokens",
        ),
        (
            {"model": "m", "max_tokens": "8", "messages": [{"role": "user", "content": "hi"}]},
            "max_tokens",
        ),
        ({"model": "m", "max_tokens": 8, "messages": []}, "messages"),
        ({"model": "m", "max_tokens": 8, "messages": "hi"}, "messages"),
        (
            {"model": "m", "max_tokens": 8, "messages": [{"role": "robot", "content": "hi"}]},
            "messages.0.role",
        ),
        (
            {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": 5}]},
            "messages.0.content",
        ),
        (
            {
                "model": "m",
                "max_tokens": 8,
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "c"}, {"text": "no type"}],
                    },
                ],
            },
            "messages.2.content.1.type",
        ),
        (
            {
                "model": "m",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": [{"type": "bogus"}]}],
            },
            "messages.0.content.0.type",
        ),
    ],
)
def test_validation_names_the_field(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend, body: dict[str, Any], field: str
) -> None:
    response = httpx.post(f"{gateway.url}/v1/messages", json=body, timeout=5)
    message = assert_anthropic_error(response, 400, "invalid_request_error")
    assert message.startswith(f"{field}:"), message
    assert response.headers["x-should-retry"] == "false"
    assert scripted_backend.chat_requests == []


@pytest.mark.parametrize("raw", [b"{not json", b"", b"hello", b"[1, 2]", b"\xff\xfe"])
def test_bad_bodies(gateway: GatewayProcess, raw: bytes) -> None:
    response = httpx.post(f"{gateway.url}/v1/messages", content=raw, timeout=5)
    assert_anthropic_error(response, 400, "invalid_request_error")
    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=raw, timeout=5)
    assert_openai_error(response, 400, "invalid_request_error")


def test_unknown_route_and_wrong_method(gateway: GatewayProcess) -> None:
    response = httpx.post(f"{gateway.url}/v1/messages/nope", json=HELLO, timeout=5)
    assert_anthropic_error(response, 404, "not_found_error")
    response = httpx.get(f"{gateway.url}/v1/messages", timeout=5)
    assert_anthropic_error(response, 405, "invalid_request_error")
    response = httpx.get(f"{gateway.url}/v1/chat/completions", timeout=5)
    assert_openai_error(response, 405, "invalid_request_error")
    response = httpx.get(f"{gateway.url}/v1/nothing-here", timeout=5)
    assert_openai_error(response, 404, "not_found_error")


def test_backend_down_then_back(scripted_backend: ScriptedBackend, gateway: GatewayProcess) -> None:
    scripted_backend.stop()
    response = httpx.post(f"{gateway.url}/v1/messages", json=HELLO, timeout=10)
    message = assert_anthropic_error(response, 503, "overloaded_error")
    assert message.startswith("MLX backend unavailable: ")
    assert response.headers["x-should-retry"] == "true"
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=10)
    assert assert_openai_error(response, 503, "server_error").startswith(
        "MLX backend unavailable: "
    )
    scripted_backend.start()
    scripted_backend.queue(Completion(text="back again"))
    response = httpx.post(f"{gateway.url}/v1/messages", json=HELLO, timeout=10)
    assert response.status_code == 200
    assert response.json()["content"][0]["text"] == "back again"


def test_backend_never_started(start_gateway: StartGateway) -> None:
    gateway = start_gateway(f"http://127.0.0.1:{free_port()}")
    response = httpx.post(f"{gateway.url}/v1/messages", json=HELLO, timeout=10)
    assert "MLX backend unavailable" in assert_anthropic_error(response, 503, "overloaded_error")


@pytest.mark.parametrize(
    ("reply", "status", "anthropic_type", "openai_type", "expected"),
    [
        (
            HttpError(500, {"error": "boom"}),
            502,
            "api_error",
            "server_error",
            'MLX backend returned HTTP 500: {"error":',
        ),
        (
            HttpError(503, "overloaded, try later", content_type="text/plain"),
            502,
            "api_error",
            "server_error",
            "MLX backend returned HTTP 503: overloaded, try later",
        ),
        (
            HttpError(404, {"error": "model 'x' not found"}),
            400,
            "invalid_request_error",
            "invalid_request_error",
            "model 'x' not found",
        ),
        (
            HttpError(422, {"error": {"message": "bad field", "type": "invalid_request_error"}}),
            400,
            "invalid_request_error",
            "invalid_request_error",
            "bad field",
        ),
        (Malformed(), 500, "api_error", "server_error", "not a chat completion"),
        (DropConnection(), 503, "overloaded_error", "server_error", "MLX backend unavailable"),
        (Hang(), 503, "overloaded_error", "server_error", "MLX backend unavailable"),
    ],
)
def test_backend_failures_map(
    gateway: GatewayProcess,
    scripted_backend: ScriptedBackend,
    reply: Any,
    status: int,
    anthropic_type: str,
    openai_type: str,
    expected: str,
) -> None:
    scripted_backend.queue(reply)
    response = httpx.post(f"{gateway.url}/v1/messages", json=HELLO, timeout=10)
    assert expected in assert_anthropic_error(response, status, anthropic_type)
    if not isinstance(reply, Malformed):  # the OpenAI route passes a 200 body through untouched
        scripted_backend.queue(reply)
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=10)
        assert expected in assert_openai_error(response, status, openai_type)
    scripted_backend.queue(Completion(text="still serving"))
    response = httpx.post(f"{gateway.url}/v1/messages", json=HELLO, timeout=10)
    assert response.json()["content"][0]["text"] == "still serving"
    assert gateway.alive()


def test_sdk_sees_typed_errors(gateway: GatewayProcess, scripted_backend: ScriptedBackend) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    scripted_backend.queue(HttpError(400, {"error": "context too long"}))
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(**HELLO)
    assert "context too long" in str(caught.value)
    oai = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    scripted_backend.queue(HttpError(500, "kaput", content_type="text/plain"))
    with pytest.raises(openai.InternalServerError) as caught_oai:
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert caught_oai.value.status_code == 502
