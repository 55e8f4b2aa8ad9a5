"""`--serve-backend`: the gateway runs the real mlx_lm.server on the tiny model, starts it again
when it is killed, and stops it when the gateway stops."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import StartGateway
from tests.integration.test_workers import _alive, _cmdline, _wait_gone
from tests.support.gateway import descendants
from tests.support.ports import free_port
from tests.support.tiny_model import build_tiny_model

BOUND = 120.0


def backend_pids(gateway_pid: int) -> list[int]:
    return [pid for pid in descendants(gateway_pid) if "mlx_lm" in _cmdline(pid)]


def ask(url: str, model: str) -> httpx.Response:
    body = {"model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{url}/v1/messages", json=body, timeout=60)


def offline_env(tmp_path: Path) -> dict[str, str]:
    hub = tmp_path / "hub"
    hub.mkdir()  # mlx_lm.server's GET /v1/models scans it
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub), "TRANSFORMERS_OFFLINE": "1"}


def test_serve_backend_restarts_a_killed_server_and_stops_it(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    model = str(build_tiny_model())
    port = free_port()
    server = [sys.executable, "-m", "mlx_lm.server", "--model", model]
    command = shlex.join([*server, "--host", "127.0.0.1", "--port", str(port)])
    backend_log = tmp_path / "backend.log"
    gateway = start_gateway(
        f"http://127.0.0.1:{port}",
        *("--mlx-model", model, "--serve-backend", command),
        *("--backend-log", str(backend_log)),
        env=offline_env(tmp_path),
        startup_timeout=BOUND,
    )
    assert ask(gateway.url, model).status_code == 200
    [first] = backend_pids(gateway.process.pid)

    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        again = [pid for pid in backend_pids(gateway.process.pid) if pid != first]
        if again and ask(gateway.url, model).status_code == 200:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the backend was not started again:\n{gateway.log()}")
    assert "starting it again" in gateway.log()
    assert backend_log.read_text().count("mlx-gateway starts:") == 2
    assert f"its log: {backend_log}" in gateway.log()

    [second] = again
    gateway.process.terminate()
    gateway.process.wait(timeout=30)
    assert _wait_gone([second]) == [], "the backend outlived its gateway"
    assert not _alive(first)


def test_a_backend_that_never_answers_fails_the_start(tmp_path: Path) -> None:
    """A command whose server never answers on --mlx-url: the gateway says so and exits."""
    command = shlex.join([sys.executable, "-c", "print('not a model server', flush=True)"])
    port = free_port()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "mlx_gateway", "--port", str(free_port())),
            *("--mlx-url", f"http://127.0.0.1:{port}", "--serve-backend", command),
            *("--backend-log", str(tmp_path / "b.log"), "--backend-start-timeout", "3"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "did not answer" in result.stderr
    assert "not a model server" in result.stderr
