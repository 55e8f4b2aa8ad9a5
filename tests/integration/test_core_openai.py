"""POST /v1/chat/completions, GET /v1/models and /health through the real gateway process."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess
from tests.support.scripted_backend import Completion, ScriptedBackend

MODEL = "test-org/Test-Model-4bit"


@pytest.fixture
def gateway(scripted_backend: ScriptedBackend, start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway(scripted_backend.url + "/", "--mlx-model", MODEL)


def test_pass_through_with_the_sdk(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    tool_calls = [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    ]
    scripted_backend.queue(
        Completion(text="hi there", tool_calls=tool_calls, finish_reason="tool_calls")
    )
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hello"}],
        temperature=0.5,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    )
    assert completion.choices[0].message.content == "hi there"
    assert completion.choices[0].finish_reason == "tool_calls"
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.arguments == '{"a":1}'  # type: ignore[union-attr]
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 7
    sent = scripted_backend.last_json()
    assert sent["model"] == MODEL
    assert sent["temperature"] == 0.5
    assert sent["tools"][0]["function"]["name"] == "f"


def test_answer_comes_back_unchanged(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(Completion(text="same", extra_message={"custom_field": [1, 2]}))
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": "whatever",
            "messages": [{"role": "user", "content": "x"}],
            "stream_options": {},
        },
        timeout=5,
    )
    body = response.json()
    assert body["choices"][0]["message"]["custom_field"] == [1, 2]
    assert body["object"] == "chat.completion"
    assert "stream_options" not in scripted_backend.last_json()


def test_models_and_health(gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    assert [model.id for model in client.models.list()] == [MODEL]
    health = httpx.get(f"{gateway.url}/health", timeout=5)
    assert health.status_code == 200
    assert json.loads(health.text)["status"] == "ok"


def test_model_aliases_route_and_are_listed(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(
        scripted_backend.url,
        "--mlx-model",
        "big/default",
        "--model-map",
        "haiku=small/fast",
        "--model-map",
        "*opus*=big/slow",
    )
    scripted_backend.queue(Completion(), Completion(), Completion(), Completion())
    for client_model, backend_model in [
        ("claude-haiku-4-5", "small/fast"),
        ("claude-opus-4-1", "big/slow"),
        ("claude-sonnet-4-5", "big/default"),
    ]:
        body = {
            "model": client_model,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
        }
        httpx.post(f"{gateway.url}/v1/messages", json=body, timeout=5)
        assert scripted_backend.last_json()["model"] == backend_model
    chat = {"model": "my-haiku", "messages": [{"role": "user", "content": "x"}]}
    httpx.post(f"{gateway.url}/v1/chat/completions", json=chat, timeout=5)
    assert scripted_backend.last_json()["model"] == "small/fast"
    listed = [
        model["id"] for model in httpx.get(f"{gateway.url}/v1/models", timeout=5).json()["data"]
    ]
    assert listed == ["big/default", "small/fast", "big/slow", "haiku"]
