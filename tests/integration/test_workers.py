"""`--workers N`: N gateway processes share one port and all serve."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartGateway
from tests.support.scripted_backend import Completion, ScriptedBackend


def children_of(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def test_two_workers_share_the_port(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url, "--workers", "2")
    scripted_backend.set_responder(lambda request: Completion(text="ok", delay=0.02))
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}

    def ask(_: int) -> int:
        return httpx.post(f"{gateway.url}/v1/messages", json=body, timeout=10).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(ask, range(40))) == {200}
    assert len(workers_of(gateway.process.pid)) == 2


def workers_of(pid: int) -> list[int]:
    """The parent's spawned serving processes (multiprocessing's resource tracker aside)."""
    return [child for child in children_of(pid) if "spawn_main" in _cmdline(child)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], seconds: float = 15) -> list[int]:
    deadline = time.monotonic() + seconds
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_workers_stop_with_the_parent(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway, signum: signal.Signals
) -> None:
    """Stopped (SIGTERM, SIGINT) or killed outright (SIGKILL: the parent-death signal)."""
    gateway = start_gateway(scripted_backend.url, "--workers", "2")
    deadline = time.monotonic() + 10
    while len(workers := workers_of(gateway.process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers) == 2
    everything = children_of(gateway.process.pid)
    gateway.process.send_signal(signum)
    gateway.process.wait(timeout=20)
    assert _wait_gone(everything) == []
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{gateway.url}/health", timeout=2)


def test_a_second_gateway_on_a_taken_port_refuses_to_start(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    """Workers share a port, but a second gateway must not silently take half the traffic."""
    gateway = start_gateway(scripted_backend.url)
    command = [sys.executable, "-m", "mlx_gateway", "--port", str(gateway.port)]
    second = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert second.returncode == 1
    assert f"cannot listen on 127.0.0.1:{gateway.port}" in second.stderr
    assert "in use" in second.stderr
    assert httpx.get(f"{gateway.url}/health", timeout=5).status_code == 200
