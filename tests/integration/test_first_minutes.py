"""What a new user meets first: the start-up line, a backend that is not running, a gateway
pointed at itself or at another gateway that points back."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.conftest import StartGateway
from tests.support.gateway import running_gateway
from tests.support.mlx_backend import MlxBackend
from tests.support.ports import free_port
from tests.support.scripted_backend import Completion, ScriptedBackend

BODY = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def wait_for_line(gateway_log: Callable[[], str], text: str, seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        log = gateway_log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in the log:\n{gateway_log()}")


def test_start_up_line_says_how_to_start_a_missing_backend(start_gateway: StartGateway) -> None:
    port = free_port()
    gateway = start_gateway(f"http://127.0.0.1:{port}", "--mlx-model", "org/model")
    log = wait_for_line(gateway.log, "is not reachable")
    assert f"mlx_lm.server --model org/model --port {port}" in log
    assert "--mlx-url" in log
    assert "8080" in log  # mlx_lm.server's own default port is the gateway's


def test_start_up_line_of_a_reachable_backend(
    mlx_backend: MlxBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(mlx_backend.url, "--mlx-model", mlx_backend.model)
    log = wait_for_line(gateway.log, "is reachable")
    assert f"serves {mlx_backend.model}" in log
    assert "context window 4096 tokens" in log  # the tiny model's max_position_embeddings
    assert "smaller than Claude Code needs" in log
    assert "--context-window" in log
    health = httpx.get(f"{gateway.url}/health", timeout=5).json()
    assert health["context_window"] == 4096


def test_a_server_that_is_not_a_model_server(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(f"{scripted_backend.url}/nothing-here")
    log = wait_for_line(gateway.log, "is not an OpenAI-compatible model server")
    assert "HTTP 404" in log
    assert "root URL" in log


def test_a_down_backend_is_told_at_once_not_retried(start_gateway: StartGateway) -> None:
    """The first refusal may be a restart (retryable); once the backend is known down the 503
    says `x-should-retry: false` and how to start it, so Claude Code shows it at once."""
    port = free_port()
    gateway = start_gateway(f"http://127.0.0.1:{port}", "--mlx-model", "org/model")
    wait_for_line(gateway.log, "is not reachable")  # the start-up probe was the first refusal
    retries = []
    for _ in range(4):
        answer = httpx.post(f"{gateway.url}/v1/messages", json=BODY, timeout=10)
        assert answer.status_code == 503
        message = answer.json()["error"]["message"]
        assert f"mlx_lm.server --model org/model --port {port}" in message
        retries.append(answer.headers["x-should-retry"])
    assert retries[-2:] == ["false", "false"]
    client = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=5)
    started = time.monotonic()
    with pytest.raises(anthropic.InternalServerError, match="start the model server"):
        client.messages.create(**BODY)  # type: ignore[call-overload]
    assert client.max_retries == 5
    assert time.monotonic() - started < 30  # bounded, not a timing figure: no retry loop


def test_the_backend_coming_back_is_retryable_again(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    scripted_backend.stop()
    gateway = start_gateway(scripted_backend.url)
    for _ in range(3):
        httpx.post(f"{gateway.url}/v1/messages", json=BODY, timeout=10)
    scripted_backend.start()
    scripted_backend.queue(Completion(text="back"))
    answer = httpx.post(f"{gateway.url}/v1/messages", json=BODY, timeout=10)
    assert answer.status_code == 200
    scripted_backend.stop()
    first = httpx.post(f"{gateway.url}/v1/messages", json=BODY, timeout=10)
    assert first.status_code == 503
    assert first.headers["x-should-retry"] == "true"


@pytest.mark.parametrize("url", ["http://localhost:{port}", "http://0.0.0.0:{port}/v1"])
def test_a_gateway_pointed_at_itself_refuses_to_start(url: str) -> None:
    port = free_port()
    command = [sys.executable, "-m", "mlx_gateway", "--port", str(port)]
    command += ["--mlx-url", url.format(port=port)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "this gateway's own address" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_two_gateways_pointed_at_each_other_do_not_loop(tmp_path: Path) -> None:
    second_port = free_port()
    with running_gateway(f"http://127.0.0.1:{second_port}", tmp_dir=tmp_path) as first:
        command = [sys.executable, "-m", "mlx_gateway", "--port", str(second_port)]
        command += ["--mlx-url", first.url]
        with subprocess.Popen(command, stderr=subprocess.DEVNULL) as second:
            try:
                second_url = f"http://127.0.0.1:{second_port}"
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    try:
                        httpx.get(f"{second_url}/health", timeout=1)
                        break
                    except httpx.TransportError:
                        time.sleep(0.05)
                answer = httpx.post(f"{first.url}/v1/messages", json=BODY, timeout=10)
                # first -> second, which refuses the hop; first passes the refusal on
                assert answer.status_code == 508
                assert answer.headers["x-should-retry"] == "false"
                assert "came from an mlx-gateway" in answer.json()["error"]["message"]
                direct = httpx.post(f"{second_url}/v1/chat/completions", json=BODY, timeout=10)
                assert direct.status_code == 508
            finally:
                second.terminate()
                second.wait(timeout=10)


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_line(start: str) -> str:
    return next(line for line in README.read_text().splitlines() if start in line)


def test_readme_shows_what_a_bad_flag_prints() -> None:
    shown = readme_line("mlx-gateway: error: invalid --port value").strip().rstrip(".").strip("`")
    command = [sys.executable, "-m", "mlx_gateway", "--port", "abc"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == shown


def test_readme_shows_the_start_up_line_of_a_missing_backend(start_gateway: StartGateway) -> None:
    shown = readme_line("WARNING mlx_gateway: backend http://localhost:8081").split(" ", 1)[1]
    port = free_port()
    gateway = start_gateway(
        f"http://localhost:{port}", "--mlx-model", "mlx-community/Qwen3-8B-4bit"
    )
    log = wait_for_line(gateway.log, "is not reachable")
    line = next(line for line in log.splitlines() if "is not reachable" in line)
    assert line.split(" WARNING ", 1)[1] == shown.replace("8081", str(port))
