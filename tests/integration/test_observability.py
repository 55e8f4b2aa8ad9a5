"""The access log, /metrics and /status.json of the real gateway process, driven by the SDKs
against the scripted backend."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess
from tests.support.scripted_backend import Completion, ScriptedBackend, text_stream

CACHED_USAGE = {
    "prompt_tokens": 40,
    "completion_tokens": 5,
    "total_tokens": 45,
    "prompt_tokens_details": {"cached_tokens": 32},
}
HELLO = [{"role": "user", "content": "a prompt the log must never show"}]


def eventually(probe: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout} s")


def access_lines(gateway: GatewayProcess) -> list[str]:
    return [line for line in gateway.log().splitlines() if "mlx_gateway.access" in line]


def metric_samples(gateway: GatewayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(f"{gateway.url}/metrics", timeout=5)
    assert answer.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def anthropic_client(gateway: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)


def test_one_text_line_per_request_with_models_tokens_and_times(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url, "--mlx-model", "local-model")
    scripted_backend.queue(text_stream(["Hel", "lo"], usage=CACHED_USAGE))
    with anthropic_client(gateway).messages.stream(
        model="claude-sonnet-4-5", max_tokens=50, messages=HELLO
    ) as stream:
        assert stream.get_final_text() == "Hello"
    httpx.get(f"{gateway.url}/health", timeout=5)

    [line] = eventually(lambda: access_lines(gateway), "access line")

    assert "INFO mlx_gateway.access: POST /v1/messages 200 claude-sonnet-4-5 -> local-model" in line
    assert f"@ {scripted_backend.url} in=40 out=5 cached=32 ttft=" in line
    assert "never show" not in gateway.log()


@pytest.mark.parametrize("stream", [True, False])
def test_a_responses_request_is_logged_with_its_tokens(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway, stream: bool
) -> None:
    gateway = start_gateway(scripted_backend.url, "--mlx-model", "local-model")
    reply = text_stream(["Hel", "lo"], usage=CACHED_USAGE) if stream else Completion(text="Hello")
    scripted_backend.queue(reply)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    if stream:
        with client.responses.stream(model="gpt-5", input=HELLO[0]["content"]) as events:
            assert events.get_final_response().output_text == "Hello"
    else:
        assert client.responses.create(model="gpt-5", input="hi").output_text == "Hello"

    [line] = eventually(lambda: access_lines(gateway), "access line")

    assert "POST /v1/responses 200 gpt-5 -> local-model" in line
    if stream:
        assert "in=40 out=5 cached=32" in line
    assert "never show" not in gateway.log()


def test_json_lines_for_machines_with_openai_stream_usage(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url, "--log-format", "json")
    scripted_backend.queue(text_stream(["hi"], usage=CACHED_USAGE), Completion(text="ok"))
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    pieces = client.chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == "hi"
    client.chat.completions.create(model="gpt-4o", messages=HELLO)

    def access() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in gateway.log().splitlines() if line.startswith("{")]
        return [line for line in lines if line["logger"] == "mlx_gateway.access"]

    streamed, whole = eventually(lambda: len(access()) == 2 and access(), "two access lines")

    assert streamed["path"] == "/v1/chat/completions"
    assert (streamed["status"], streamed["model"]) == (200, "gpt-4o")
    assert (streamed["input_tokens"], streamed["output_tokens"], streamed["cached_tokens"]) == (
        40,
        5,
        32,
    )
    assert streamed["ttft_ms"] is not None
    assert (whole["input_tokens"], whole["output_tokens"], whole["ttft_ms"]) == (11, 7, None)


def test_metrics_count_requests_tokens_and_times(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url)
    scripted_backend.queue(text_stream(["a", "b"], usage=CACHED_USAGE), Completion())
    client = anthropic_client(gateway)
    with client.messages.stream(model="m", max_tokens=9, messages=HELLO) as stream:
        stream.get_final_text()
    client.messages.create(model="m", max_tokens=9, messages=HELLO)
    scripted_backend.stop()
    with pytest.raises(anthropic.APIStatusError) as failed:
        client.messages.create(model="m", max_tokens=9, messages=HELLO)
    assert failed.value.status_code == 503

    found = metric_samples(gateway)

    backend = ("backend", scripted_backend.url)
    route = ("route", "/v1/messages")
    assert found[("mlx_gateway_requests_total", (backend, route, ("status", "200")))] == 2
    assert found[("mlx_gateway_requests_total", (backend, route, ("status", "503")))] == 1
    assert found[("mlx_gateway_tokens_total", (backend, ("kind", "input")))] == 40 + 11
    assert found[("mlx_gateway_tokens_total", (backend, ("kind", "output")))] == 5 + 7
    assert found[("mlx_gateway_tokens_total", (backend, ("kind", "cached")))] == 32
    assert found[("mlx_gateway_ttft_seconds_count", (route,))] == 1
    assert found[("mlx_gateway_request_duration_seconds_count", (route,))] == 3
    assert found[("mlx_gateway_in_flight", ())] == 0
    assert found[("mlx_gateway_queue_depth", ())] == 0
    assert found[("mlx_gateway_backend_up", (backend, ("kind", "mlx_lm")))] == 0


def test_metrics_add_up_every_worker(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url, "--workers", "2")
    scripted_backend.set_responder(lambda request: Completion(text="ok"))
    body = {"model": "m", "max_tokens": 5, "messages": HELLO}
    for _ in range(12):  # new connections: the kernel spreads them over the workers
        assert httpx.post(f"{gateway.url}/v1/messages", json=body, timeout=10).status_code == 200
    key = (
        "mlx_gateway_requests_total",
        (("backend", scripted_backend.url), ("route", "/v1/messages"), ("status", "200")),
    )

    # Each worker writes its tally once a second; a scrape adds up what is there.
    eventually(lambda: metric_samples(gateway).get(key) == 12, "the sum of 12 requests")
    assert len(set(gateway_pids(gateway))) == 2


def gateway_pids(gateway: GatewayProcess) -> list[int]:
    pids = set()
    for _ in range(40):
        pids.add(httpx.get(f"{gateway.url}/status.json", timeout=5).json()["pid"])
        if len(pids) == 2:
            break
    return sorted(pids)


def test_status_json_shows_requests_and_the_backend_going_down(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url, "--context-window", "32768")
    scripted_backend.queue(Completion(usage=CACHED_USAGE))
    anthropic_client(gateway).messages.create(model="m", max_tokens=9, messages=HELLO)
    status = httpx.get(f"{gateway.url}/status.json", timeout=5).json()

    assert status["status"] == "ok"
    [backend] = status["backends"]
    assert (backend["url"], backend["up"]) == (scripted_backend.url, True)
    assert backend["windows"] == {"mlx-community/Qwen3-8B-4bit": 32768}
    [request] = status["recent"]
    assert (request["status"], request["input_tokens"], request["cached_tokens"]) == (200, 40, 32)
    assert status["cache_reuse"] == 0.8

    scripted_backend.stop()
    httpx.post(
        f"{gateway.url}/v1/messages", json={"model": "m", "max_tokens": 9, "messages": HELLO}
    )
    status = httpx.get(f"{gateway.url}/status.json", timeout=5).json()

    assert status["status"] == "down"
    assert status["backends"][0]["up"] is False
    [error] = status["errors"]
    assert error["status"] == 503
    assert "never show" not in json.dumps(status)
