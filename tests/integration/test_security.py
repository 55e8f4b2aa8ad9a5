"""A local gateway that other machines and web pages cannot use unless the user says so: API
keys, the Host allow-list, web origins, /health details, and prompts kept out of the log."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess
from tests.support.scripted_backend import Completion, HttpError, ScriptedBackend

HELLO: dict[str, Any] = {
    "model": "m",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "hi"}],
}
CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
KEY, OTHER_KEY = "sk-local-one", "sk-local-two"


@pytest.fixture
def keyed(scripted_backend: ScriptedBackend, start_gateway: StartGateway) -> GatewayProcess:
    scripted_backend.set_responder(lambda _: Completion(text="ok"))
    return start_gateway(scripted_backend.url, "--api-key", KEY, "--api-key", OTHER_KEY)


def test_sdks_with_a_valid_key_are_served(keyed: GatewayProcess) -> None:
    for key in (KEY, OTHER_KEY):
        client = anthropic.Anthropic(base_url=keyed.url, api_key=key, max_retries=0)
        assert client.messages.create(**HELLO).content[0].text == "ok"  # type: ignore[union-attr]
    chat = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=KEY, max_retries=0)
    assert chat.chat.completions.create(**CHAT).choices[0].message.content == "ok"


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}, {"authorization": KEY}],
    ids=["none", "wrong x-api-key", "wrong bearer", "no bearer scheme"],
)
def test_missing_or_wrong_keys_are_401_in_the_callers_shape(
    keyed: GatewayProcess, headers: dict[str, str]
) -> None:
    response = httpx.post(f"{keyed.url}/v1/messages", json=HELLO, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    response = httpx.post(f"{keyed.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(f"{keyed.url}/v1/models", headers=headers).status_code == 401


def test_health_is_open_and_shows_details_to_loopback(keyed: GatewayProcess) -> None:
    health = httpx.get(f"{keyed.url}/health").json()
    assert health["status"] == "ok"
    assert "backend" in health  # the test runs on the same machine


def test_listening_beyond_loopback_needs_a_key_or_the_insecure_switch(
    scripted_backend: ScriptedBackend,
) -> None:
    command = [sys.executable, "-m", "mlx_gateway", "--host", "0.0.0.0", "--port", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "--api-key" in result.stderr


@pytest.fixture
def open_gateway(scripted_backend: ScriptedBackend, start_gateway: StartGateway) -> GatewayProcess:
    scripted_backend.set_responder(lambda _: Completion(text="ok"))
    return start_gateway(
        scripted_backend.url,
        "--cors-origin",
        "http://allowed.example",
        "--allowed-host",
        "gateway.lan",
    )


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost", 200),
        ("127.0.0.1", 200),
        ("[::1]", 200),
        ("gateway.lan", 200),
        ("192.168.1.20", 200),  # an address cannot be rebound
        ("attacker.example", 403),
        ("localhost.attacker.example", 403),
    ],
)
def test_host_allow_list_against_dns_rebinding(
    open_gateway: GatewayProcess, host: str, status: int
) -> None:
    headers = {"host": f"{host}:{open_gateway.port}"}
    response = httpx.post(f"{open_gateway.url}/v1/messages", json=HELLO, headers=headers)
    assert response.status_code == status
    if status == 403:
        assert response.json()["error"]["type"] == "permission_error"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_browser_simple_requests_are_refused(
    open_gateway: GatewayProcess, content_type: str
) -> None:
    body = json.dumps(HELLO).encode()
    response = httpx.post(
        f"{open_gateway.url}/v1/messages", content=body, headers={"content-type": content_type}
    )
    assert response.status_code == 415
    assert response.json()["type"] == "error"


def test_other_origins_are_refused_and_allowed_ones_get_cors(open_gateway: GatewayProcess) -> None:
    url = f"{open_gateway.url}/v1/messages"
    refused = httpx.post(url, json=HELLO, headers={"origin": "http://evil.example"})
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers
    allowed = httpx.post(url, json=HELLO, headers={"origin": "http://allowed.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://allowed.example"


def test_preflight_is_answered_for_allowed_origins_only(open_gateway: GatewayProcess) -> None:
    url = f"{open_gateway.url}/v1/chat/completions"
    ask = {"access-control-request-method": "POST", "access-control-request-headers": "x-api-key"}
    allowed = httpx.options(url, headers={**ask, "origin": "http://allowed.example"})
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == "http://allowed.example"
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert allowed.headers["access-control-allow-headers"] == "x-api-key"
    refused = httpx.options(url, headers={**ask, "origin": "http://evil.example"})
    assert refused.status_code == 403
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}


SECRET = "the-secret-prompt-text-7f3a"


def _leak_prompt_text(gateway: GatewayProcess, backend: ScriptedBackend) -> None:
    """A backend error that quotes the prompt, and tool arguments that are not JSON."""
    backend.queue(HttpError(500, {"error": f"cannot handle {SECRET}"}))
    httpx.post(f"{gateway.url}/v1/messages", json=HELLO)
    backend.queue(HttpError(400, {"error": f"refused {SECRET}"}))
    httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": f"[{SECRET}"}}
    backend.queue(Completion(text=None, tool_calls=[call], finish_reason="tool_calls"))
    assert httpx.post(f"{gateway.url}/v1/messages", json=HELLO).status_code == 200


def test_no_prompt_text_in_the_log_by_default(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url, "--log-level", "debug")
    _leak_prompt_text(gateway, scripted_backend)
    log = gateway.log()
    assert "HTTP 500" in log
    assert "kept raw" in log
    assert SECRET not in log


def test_log_prompts_lets_it_in(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url, "--log-prompts")
    _leak_prompt_text(gateway, scripted_backend)
    assert SECRET in gateway.log()


def test_backend_error_bodies_are_trimmed(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url)
    scripted_backend.queue(HttpError(500, "x" * 100_000))
    response = httpx.post(f"{gateway.url}/v1/messages", json=HELLO)
    assert response.status_code == 502
    assert len(response.json()["error"]["message"]) < 2_100
    scripted_backend.queue(HttpError(400, {"error": "y" * 100_000}))
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    assert response.status_code == 400
    assert len(response.json()["error"]["message"]) < 2_100
