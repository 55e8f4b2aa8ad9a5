"""The most memory one request may take: a small multiple of its body, measured on the gateway
process around the worst cases found (one 40,000-character stop sequence took 768 MiB)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mlx_gateway import limits
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.rawhttp import peak_rss_kib, reset_peak_rss, rss_kib
from tests.support.scripted_backend import (
    Completion,
    RecordedRequest,
    Reply,
    ScriptedBackend,
    text_stream,
)

HELLO: dict[str, Any] = {
    "model": "m",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "hi"}],
}
# What a request may add to the process at its peak: this multiple of its body, plus a fixed
# allowance for the allocator's own rounding and caches.
BODY_MULTIPLE = 12
ALLOWANCE_MIB = 24


def worst_cases() -> dict[str, dict[str, Any]]:
    long_stop = "x" * (limits.MAX_STOP_SEQUENCE_CHARS - 1) + "y"
    return {
        "one 40,000-character stop sequence (refused)": {**HELLO, "stop_sequences": ["x" * 40_000]},
        "every stop sequence at the longest, on a stream": {
            **HELLO,
            "stream": True,
            "stop_sequences": [
                f"{n}{long_stop}"[: limits.MAX_STOP_SEQUENCE_CHARS]
                for n in range(limits.MAX_STOP_SEQUENCES)
            ],
        },
        "the most tools": {
            **HELLO,
            "tools": [
                {
                    "name": f"t{n}",
                    "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                }
                for n in range(limits.MAX_TOOLS)
            ],
        },
        "the most messages": {**HELLO, "messages": HELLO["messages"] * limits.MAX_MESSAGES},
        "nested as deep as the decoder follows": {
            **HELLO,
            "messages": [
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "a",
                            "name": "b",
                            "input": {"x": json.loads("[" * 900 + "]" * 900)},
                        }
                    ],
                }
            ],
        },
        "a 16 MB message": {
            **HELLO,
            "messages": [{"role": "user", "content": "word " * 3_200_000}],
        },
    }


def answer(request: RecordedRequest) -> Reply:
    if request.json().get("stream"):
        return text_stream(["x" * 999] * 50)  # every sequence nearly matches, all along
    return Completion()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with ScriptedBackend() as backend:
        backend.set_responder(answer)
        tmp = tmp_path_factory.mktemp("memory")
        with running_gateway(backend.url, tmp_dir=tmp) as process:
            httpx.post(f"{process.url}/v1/messages", json=HELLO)  # first-use allocations
            yield process


@pytest.mark.parametrize("name", list(worst_cases()))
def test_a_request_takes_at_most_a_small_multiple_of_its_body(
    gateway: GatewayProcess, name: str
) -> None:
    body = json.dumps(worst_cases()[name]).encode()
    pid = gateway.process.pid
    reset_peak_rss(pid)
    before = rss_kib(pid)
    response = httpx.post(
        f"{gateway.url}/v1/messages",
        content=body,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    grown_mib = (peak_rss_kib(pid) - before) / 1024
    body_mib = len(body) / (1024 * 1024)
    print(f"\n{name}: body {body_mib:.2f} MiB -> {response.status_code}, peak +{grown_mib:.1f} MiB")
    assert response.status_code < 500
    assert grown_mib <= BODY_MULTIPLE * body_mib + ALLOWANCE_MIB
