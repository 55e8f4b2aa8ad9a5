"""`POST /v1/messages/count_tokens` and the context fit, through the real gateway process.

Against the real mlx_lm.server on the tiny model (4096-token window in its config.json) the count is
checked against the server's own `prompt_tokens`; against the scripted backend the request the
gateway sent is checked (the clamped `max_tokens`), also as vLLM and llama.cpp with their
tokenizer and discovery endpoints, and the backends' own overflow errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess
from tests.support.mlx_backend import MlxBackend
from tests.support.scripted_backend import Completion, HttpError, ScriptedBackend, text_stream
from tests.support.tiny_model import build_tiny_model

JSON = dict[str, Any]
WINDOW = 4096
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
CONVERSATIONS: dict[str, JSON] = {
    "plain": {"messages": [{"role": "user", "content": "Tell me about local models."}]},
    "system": {
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cch=f00d;"},
            {"type": "text", "text": "You are a terse assistant."},
        ],
        "messages": [{"role": "user", "content": "Say hello."}],
    },
    "tools": {
        "tools": [WEATHER_TOOL],
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
    },
    "tool round trip": {
        "system": "Use the tools you have.",
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "call-1", "name": "get_weather",
                     "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "call-1",
                             "content": "Sunny, 21 °C"}],
            },
        ],
    },
    "thinking off": {
        "thinking": {"type": "disabled"},
        "messages": [{"role": "user", "content": "Answer quickly."}],
    },
}  # fmt: skip
LONG = {"messages": [{"role": "user", "content": "hello world " * 2100}]}


def post(gateway: GatewayProcess, path: str, body: JSON) -> httpx.Response:
    return httpx.post(f"{gateway.url}{path}", json=body, timeout=120)


def count(gateway: GatewayProcess, body: JSON) -> int:
    response = post(gateway, "/v1/messages/count_tokens", {"model": "claude-sonnet-4-5", **body})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"input_tokens"}
    tokens: int = answer["input_tokens"]
    return tokens


def message(gateway: GatewayProcess, body: JSON, max_tokens: int, **extra: Any) -> httpx.Response:
    request = {"model": "claude-sonnet-4-5", "max_tokens": max_tokens, **body, **extra}
    return post(gateway, "/v1/messages", request)


def assert_prompt_too_long(response: httpx.Response, tokens: int, window: int) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": f"prompt is too long: {tokens} tokens > {window} maximum",
        },
    }


# ---- the real mlx_lm.server -------------------------------------------------------------------


@pytest.fixture
def mlx_gateway(mlx_backend: MlxBackend, start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway(mlx_backend.url, "--mlx-model", mlx_backend.model)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_count_equals_the_servers_prompt_tokens(name: str, mlx_gateway: GatewayProcess) -> None:
    body = CONVERSATIONS[name]
    counted = count(mlx_gateway, body)
    response = message(mlx_gateway, body, 8)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert counted == usage["input_tokens"] + usage.get("cache_read_input_tokens", 0)


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_over_the_window_is_refused_before_any_stream(
    stream: bool, mlx_gateway: GatewayProcess
) -> None:
    tokens = count(mlx_gateway, LONG)
    assert tokens > WINDOW
    assert_prompt_too_long(message(mlx_gateway, LONG, 100, stream=stream), tokens, WINDOW)
    assert mlx_gateway.alive()


def test_max_tokens_beyond_the_window_is_clamped_and_answered(mlx_gateway: GatewayProcess) -> None:
    response = message(mlx_gateway, CONVERSATIONS["plain"], 100_000)
    assert response.status_code == 200, response.text
    assert response.json()["stop_reason"] == "end_turn"


def test_the_server_stops_at_the_clamped_limit(mlx_gateway: GatewayProcess) -> None:
    """A prompt leaving 3 to 8 tokens of room: the tiny model's answers are 16+ tokens long, so
    the server's own answer limit shows the `max_tokens` it was sent."""
    words = 1300
    body = padded(words)
    while (room := WINDOW - count(mlx_gateway, body)) > 8:
        words += max((room - 6) // 3, 1)
        body = padded(words)
    assert room >= 3, "the padding overshot; pick another step"
    answer = message(mlx_gateway, body, 100_000).json()
    assert answer["stop_reason"] == "max_tokens"
    assert answer["usage"]["output_tokens"] == room


def padded(words: int) -> JSON:
    return {"messages": [{"role": "user", "content": "one two three " * (words // 3)}]}


# ---- the scripted backend as mlx_lm.server, vLLM and llama.cpp --------------------------------


def test_exact_clamp_is_what_the_backend_receives(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url, "--mlx-model", str(build_tiny_model()))
    scripted_backend.queue(Completion("ok"), text_stream(["ok"]))
    body = CONVERSATIONS["tool round trip"]
    tokens = count(gateway, body)
    assert message(gateway, body, 100_000).status_code == 200
    assert scripted_backend.last_json()["max_tokens"] == WINDOW - tokens
    assert message(gateway, body, 100_000, stream=True).status_code == 200
    assert scripted_backend.last_json()["max_tokens"] == WINDOW - tokens
    assert_prompt_too_long(message(gateway, LONG, 10), count(gateway, LONG), WINDOW)


def test_estimate_clamps_with_a_configured_window(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway, tmp_path: Path
) -> None:
    gateway = start_gateway(
        scripted_backend.url,
        "--mlx-model", "org/not-downloaded", "--context-window", "1000",
        env={"HF_HUB_CACHE": str(tmp_path)},
    )  # fmt: skip
    scripted_backend.queue(Completion("ok"), text_stream(["ok"]), Completion("ok"))
    body = CONVERSATIONS["tools"]
    estimate = count(gateway, body)
    assert 0 < estimate < 1000
    assert message(gateway, body, 5000).status_code == 200
    assert scripted_backend.last_json()["max_tokens"] == 1000 - estimate
    assert message(gateway, body, 5000, stream=True).status_code == 200
    assert scripted_backend.last_json()["max_tokens"] == 1000 - estimate
    # An estimate over the window refuses nothing: the backend decides.
    assert count(gateway, LONG) > 1000
    assert message(gateway, LONG, 5000).status_code == 200
    assert scripted_backend.last_json()["max_tokens"] == 5000


VLLM_OVERFLOW = {
    "object": "error",
    "type": "BadRequestError",
    "code": 400,
    "message": "This model's maximum context length is 4096 tokens. However, you requested "
    "5000 tokens (4000 in the messages, 1000 in the completion). Please reduce the length of "
    "the messages or completion.",
}
LLAMA_CPP_OVERFLOW = {
    "error": {
        "code": 400,
        "type": "exceed_context_size_error",
        "message": "request (9412 tokens) exceeds the available context size (8192 tokens), "
        "try increasing it",
        "n_prompt_tokens": 9412,
        "n_ctx": 8192,
    }
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("error", "tokens", "window"), [(VLLM_OVERFLOW, 5000, 4096), (LLAMA_CPP_OVERFLOW, 9412, 8192)]
)
def test_backend_overflow_errors_get_the_same_wording(
    error: JSON,
    tokens: int,
    window: int,
    stream: bool,
    scripted_backend: ScriptedBackend,
    start_gateway: StartGateway,
) -> None:
    gateway = start_gateway(scripted_backend.url)
    scripted_backend.queue(HttpError(400, error))
    response = message(gateway, CONVERSATIONS["plain"], 1000, stream=stream)
    assert_prompt_too_long(response, tokens, window)
    assert response.headers["x-should-retry"] == "false"


class ServerWithExtras(ScriptedBackend):
    """The scripted backend plus a server's own JSON endpoints (tokenize, props, models)."""

    def __init__(self, extras: dict[str, Callable[[Any], Any]]) -> None:
        super().__init__()
        self.extras = extras

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        handler = self.extras.get(request.path)
        if handler is None:
            return await super()._dispatch(request)
        body = await request.read()
        self._record(request, body)
        return web.json_response(handler(json.loads(body) if body else None))

    def bodies(self, path: str) -> list[Any]:
        return [r.json() for r in self.requests if r.path == path and r.body]


@pytest.fixture
def vllm() -> Iterator[ServerWithExtras]:
    models = {"object": "list", "data": [{"id": "served", "max_model_len": 2048}]}
    extras = {
        "/v1/models": lambda _: models,
        "/tokenize": lambda _: {"count": 1500, "max_model_len": 2048, "tokens": [0] * 1500},
    }
    with ServerWithExtras(extras) as server:
        yield server


def test_vllm_counts_and_window_come_from_the_server(
    vllm: ServerWithExtras, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(vllm.url, "--backend", "vllm", "--mlx-model", "served")
    vllm.queue(Completion("ok"))
    body = CONVERSATIONS["tools"]
    assert count(gateway, body) == 1500
    assert message(gateway, body, 4000).status_code == 200
    assert vllm.last_json()["max_tokens"] == 2048 - 1500
    tokenize = vllm.bodies("/tokenize")[0]
    assert tokenize["model"] == "served"
    assert tokenize["add_generation_prompt"] is True
    assert tokenize["tools"][0]["function"]["name"] == "get_weather"
    # The window is read once (with the probe's own look at /v1/models), not per request.
    models_reads = [r.path for r in vllm.requests].count("/v1/models")
    vllm.queue(Completion("ok"))
    assert message(gateway, body, 4000).status_code == 200
    assert [r.path for r in vllm.requests].count("/v1/models") == models_reads <= 2


@pytest.fixture
def llama_cpp() -> Iterator[ServerWithExtras]:
    extras = {
        "/props": lambda _: {"default_generation_settings": {"n_ctx": 1024}, "total_slots": 1},
        "/apply-template": lambda body: {"prompt": "<|user|>" + body["messages"][-1]["content"]},
        "/tokenize": lambda body: {"tokens": [0] * (len(body["content"]) * 200)},
    }
    with ServerWithExtras(extras) as server:
        yield server


@pytest.mark.parametrize("stream", [False, True])
def test_llama_cpp_refuses_an_exactly_counted_prompt_over_its_n_ctx(
    stream: bool, llama_cpp: ServerWithExtras, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(llama_cpp.url, "--backend", "llama_cpp")
    body = {"messages": [{"role": "user", "content": "hi"}]}
    tokens = len("<|user|>hi") * 200
    assert count(gateway, body) == tokens
    assert_prompt_too_long(message(gateway, body, 10, stream=stream), tokens, 1024)
    assert llama_cpp.chat_requests == []
    assert llama_cpp.bodies("/tokenize")[0]["add_special"] is True
