"""The backend's prompt-cache count reaches clients faithfully, against the scripted backend.

Anthropic: `cache_read_input_tokens` is the backend's `prompt_tokens_details.cached_tokens` and
`input_tokens` the rest of the prompt, in whole answers and in `message_delta`; `message_start`,
sent before the backend has counted anything, carries the cache fields at zero, as the real API
shapes it. OpenAI: the backend's usage comes back as it was sent.
"""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from tests.conftest import StartGateway
from tests.support.anthropic_stream import assert_well_formed, parse_sse
from tests.support.gateway import GatewayProcess
from tests.support.scripted_backend import Completion, ScriptedBackend, text_stream

MODEL = "test-org/Test-Model-4bit"
USAGE = {
    "prompt_tokens": 5000,
    "completion_tokens": 4,
    "total_tokens": 5004,
    "prompt_tokens_details": {"cached_tokens": 4936},
}
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gateway(scripted_backend: ScriptedBackend, start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway(scripted_backend.url, "--mlx-model", MODEL)


def test_stream_reports_the_cached_share_in_message_delta(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(text_stream(["Hel", "lo"], usage=USAGE))
    body = {"model": "m", "max_tokens": 8, "messages": MESSAGES, "stream": True}
    events = parse_sse(httpx.post(f"{gateway.url}/v1/messages", json=body, timeout=10).content)
    assert_well_formed(events)
    started = events[0]["message"]["usage"]
    assert started["cache_read_input_tokens"] == started["cache_creation_input_tokens"] == 0
    assert started["output_tokens"] == 0
    (delta,) = [event for event in events if event["type"] == "message_delta"]
    assert delta["usage"] == {
        "input_tokens": 64,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 4936,
        "output_tokens": 4,
    }


def test_the_sdk_stream_ends_with_the_backend_count(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    """The SDK merges message_delta's usage over message_start's, as Claude Code does."""
    scripted_backend.queue(text_stream(["Hi"], usage=USAGE))
    client = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    with client.messages.stream(model="m", max_tokens=8, messages=MESSAGES) as stream:  # type: ignore[arg-type]
        message = stream.get_final_message()
    assert message.usage.input_tokens == 64
    assert message.usage.cache_read_input_tokens == 4936
    assert message.usage.cache_creation_input_tokens == 0


def test_a_backend_without_cache_counts_reports_zero(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend
) -> None:
    usage = {"prompt_tokens": 50, "completion_tokens": 2, "total_tokens": 52}
    scripted_backend.queue(Completion(text="Hi", usage=usage))
    client = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    message = client.messages.create(model="m", max_tokens=8, messages=MESSAGES)  # type: ignore[arg-type]
    assert message.usage.input_tokens == 50
    assert message.usage.cache_read_input_tokens == 0


@pytest.mark.parametrize("stream", [False, True])
def test_openai_usage_comes_back_as_the_backend_sent_it(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend, stream: bool
) -> None:
    reply = text_stream(["Hi"], usage=USAGE) if stream else Completion(text="Hi", usage=USAGE)
    scripted_backend.queue(reply)
    body = {"model": "m", "messages": MESSAGES, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    raw = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=10).content
    if stream:
        events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: {")]
        usage = json.loads(events[-1])["usage"]
    else:
        usage = json.loads(raw)["usage"]
    assert usage == USAGE
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    scripted_backend.queue(Completion(text="Hi", usage=USAGE))
    completion = client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 4936
