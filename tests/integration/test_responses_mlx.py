"""POST /v1/responses in front of the real mlx_lm.server on the tiny model: real inference
through the Responses API, streamed and whole, compared with what the server says directly."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import StartGateway
from tests.integration.test_mlx_rig import WEATHER_TOOL as CHAT_WEATHER_TOOL
from tests.integration.test_real_backend import direct
from tests.support.gateway import GatewayProcess
from tests.support.mlx_backend import MlxBackend

WEATHER_TOOL: dict[str, Any] = {"type": "function", **CHAT_WEATHER_TOOL["function"]}
QUESTION = "What is the weather in Paris?"


@pytest.fixture
def client(mlx_backend: MlxBackend, start_gateway: StartGateway) -> openai.OpenAI:
    gateway: GatewayProcess = start_gateway(
        mlx_backend.url, "--mlx-model", mlx_backend.model, "--timeout", "60"
    )
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
def test_a_plain_answer_is_the_servers(
    client: openai.OpenAI, mlx_backend: MlxBackend, stream: bool
) -> None:
    messages = [{"role": "user", "content": "Tell me about the weather"}]
    expected = direct(mlx_backend, {"max_tokens": 20, "messages": messages})
    request: dict[str, Any] = {
        "model": "gpt-5-codex", "input": "Tell me about the weather", "max_output_tokens": 20,
        "temperature": 0,
    }  # fmt: skip
    if stream:  # the SDK's stream helper wants `response.completed`; this answer hits the limit
        events = list(client.responses.create(**request, stream=True))
        assert events[-1].type == "response.incomplete"
        response = events[-1].response  # type: ignore[union-attr]
    else:
        response = client.responses.create(**request)
    assert response.output_text == expected["choices"][0]["message"]["content"]
    finish = expected["choices"][0]["finish_reason"]
    assert response.status == ("incomplete" if finish == "length" else "completed")
    assert response.usage is not None
    assert response.usage.output_tokens == expected["usage"]["completion_tokens"]
    assert response.usage.input_tokens == expected["usage"]["prompt_tokens"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_real_tool_call_comes_back_as_a_function_call(
    client: openai.OpenAI, stream: bool
) -> None:
    request: dict[str, Any] = {
        "model": "m", "input": QUESTION, "tools": [WEATHER_TOOL], "max_output_tokens": 60,
        "temperature": 0,
    }  # fmt: skip
    if stream:
        with client.responses.stream(**request) as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(**request)
    assert response.status == "completed"
    [call] = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert call.arguments == '{"city": "Paris"}'
    follow_up = client.responses.create(
        **{
            **request,
            "input": [
                {"role": "user", "content": QUESTION},
                {"type": "function_call", "call_id": call.call_id, "name": call.name,
                 "arguments": call.arguments},
                {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24C"},
            ],
        }
    )  # fmt: skip
    assert [item.type for item in follow_up.output] == ["message"]
    assert follow_up.output_text


def test_codexs_catalog_entry_has_the_discovered_window(
    client: openai.OpenAI, mlx_backend: MlxBackend
) -> None:
    """The window read from the model's config.json (4096 for the tiny model) is what Codex
    is told to budget for."""
    listing = client.get("/models", cast_to=object)
    assert isinstance(listing, dict)
    [entry] = listing["models"]
    assert entry["slug"] == mlx_backend.model
    assert entry["context_window"] == 4096
