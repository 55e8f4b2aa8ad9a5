"""What the gateway should do with answers only a real llama-server gives.

Each test states the correct behaviour against the real server; they are kept apart from
test_llama_rig.py because the gateway does not behave so yet (the failure messages show what it
answers instead):

* llama-server refuses some requests for good with a 500: an image to a text-only model
  ("image input is not supported - hint: if this is unexpected, you may need to provide the
  mmproj") and `tools` on a server started with `--no-jinja` ("tools param requires --jinja
  flag"). Retrying cannot help, so the answer is a 400 with `x-should-retry: false`, as the design
  asks of a 5xx that refuses the request's content, and an image gets the same "does not accept
  images" message mlx_lm.server's refusal gets.
* One request whose token count the server refuses (its `/apply-template` fails on the image)
  says nothing about the next request: the next prompt is still counted exactly.
* A llama-server is recognised by what it answers, not by its port: on a port the gateway does
  not know, its window is still read from `/props` and an over-window prompt is refused by the
  gateway before it reaches a slot.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess
from tests.support.llama_backend import LlamaBackend, StartLlamaServer

JSON = dict[str, Any]
WINDOW = 4096
PNG = (  # a 1x1 picture
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
IMAGE_MESSAGE: JSON = {
    "role": "user",
    "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    ],
}
WEATHER_TOOL: JSON = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
PLAIN: JSON = {"messages": [{"role": "user", "content": "Tell me about the weather"}]}
LONG: JSON = {"messages": [{"role": "user", "content": "hello world " * 2100}]}


def llama_gateway(backend: LlamaBackend, start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway(backend.url, "--backend", "llama_cpp", "--mlx-model", backend.model)


def send(gateway: GatewayProcess, body: JSON, *, stream: bool = False) -> httpx.Response:
    request = {"model": "m", "max_tokens": 20, "stream": stream, **body}
    return httpx.post(f"{gateway.url}/v1/messages", json=request, timeout=60)


def count(gateway: GatewayProcess, body: JSON) -> int:
    response = httpx.post(
        f"{gateway.url}/v1/messages/count_tokens", json={"model": "m", **body}, timeout=60
    )
    assert response.status_code == 200, response.text
    tokens: int = response.json()["input_tokens"]
    return tokens


def server_count(backend: LlamaBackend, messages: list[JSON]) -> int:
    rendered = backend.post("/apply-template", {"messages": messages})["prompt"]
    return len(backend.post("/tokenize", {"content": rendered, "parse_special": True})["tokens"])


def assert_final_refusal(response: httpx.Response, wording: str) -> None:
    """A 400 the client must not retry, in Anthropic's shape, saying why."""
    answer = f"HTTP {response.status_code} {dict(response.headers)} {response.text}"
    assert response.status_code == 400, answer
    assert response.headers.get("x-should-retry") != "true", answer
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error", answer
    assert wording in error["message"], answer


@pytest.mark.parametrize("stream", [False, True])
def test_an_image_to_a_text_only_llama_server_is_a_final_400(
    stream: bool, llama_backend: LlamaBackend, start_gateway: StartGateway
) -> None:
    gateway = llama_gateway(llama_backend, start_gateway)
    response = send(gateway, {"messages": [IMAGE_MESSAGE]}, stream=stream)
    assert_final_refusal(response, "does not accept images")


def test_tools_on_a_server_without_jinja_are_a_final_400(
    start_llama_server: StartLlamaServer, start_gateway: StartGateway
) -> None:
    backend = start_llama_server("--no-jinja")
    gateway = llama_gateway(backend, start_gateway)
    response = send(gateway, {"tools": [WEATHER_TOOL], **PLAIN})
    assert_final_refusal(response, "--jinja")


def test_a_refused_count_leaves_the_next_count_exact(
    llama_backend: LlamaBackend, start_gateway: StartGateway
) -> None:
    gateway = llama_gateway(llama_backend, start_gateway)
    assert count(gateway, PLAIN) == server_count(llama_backend, PLAIN["messages"])
    count(gateway, {"messages": [IMAGE_MESSAGE]})  # the server's /apply-template answers 500
    other = {"messages": [{"role": "user", "content": "And tomorrow?"}]}
    assert count(gateway, other) == server_count(llama_backend, other["messages"])


def test_a_llama_server_on_an_unguessed_port_has_its_window_read(
    llama_backend: LlamaBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(llama_backend.url, "--mlx-model", llama_backend.model)
    tokens = server_count(llama_backend, LONG["messages"])
    tasks = {slot["id"]: slot.get("id_task") for slot in llama_backend.get("/slots")}
    response = send(gateway, LONG)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == (
        f"prompt is too long: {tokens} tokens > {WINDOW} maximum"
    )
    reached = {slot["id"]: slot.get("id_task") for slot in llama_backend.get("/slots")} != tasks
    assert not reached, "the over-window prompt was sent to llama-server, which refused it"
    assert count(gateway, PLAIN) == server_count(llama_backend, PLAIN["messages"])
