"""Start the real `mlx-gateway` process on a free loopback port for a test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port


@dataclass
class GatewayProcess:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


def _wait_healthy(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise RuntimeError(f"gateway did not become healthy:\n{log_path.read_text()}")


@contextmanager
def running_gateway(
    backend_url: str,
    *extra_args: str,
    tmp_dir: Path,
    env: dict[str, str] | None = None,
    startup_timeout: float = 20,
) -> Iterator[GatewayProcess]:
    """Run `python -m mlx_gateway` against `backend_url` until the block ends."""
    port = free_port()
    log_path = tmp_dir / f"gateway-{port}.log"
    command = [
        sys.executable,
        "-m",
        "mlx_gateway",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--mlx-url",
        backend_url,
        *extra_args,
    ]
    full_env = {**os.environ, **(env or {})}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=full_env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log_path, startup_timeout)
        yield GatewayProcess(url=url, port=port, process=process, log_path=log_path)
    finally:
        stop_gateway(process)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (workers, a supervised backend), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def stop_gateway(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as a service manager would; the gateway stops what it started. Whatever is
    still running after that is killed, so that no test leaves a process behind, even one
    that found a bug in the stopping."""
    below = descendants(process.pid)
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pid in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
