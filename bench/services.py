"""Starting and stopping the processes under test, each on the cores it is given."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class CorePlan:
    """Which cores the gateway gets and which the load side (fake backend, wrk, stream client)
    gets. Apart, so the gateway's figures are its own and the load never steals its core."""

    gateway: str | None  # a taskset list such as "1"; None when there is nothing to split
    load: frozenset[int]

    @classmethod
    def for_this_machine(cls) -> CorePlan:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2 or shutil.which("taskset") is None:
            return cls(gateway=None, load=frozenset(cores))
        return cls(gateway=str(cores[-1]), load=frozenset(cores[:-1]))

    def describe(self) -> str:
        if self.gateway is None:
            return "not pinned (needs 2 cores and taskset)"
        load = ",".join(str(core) for core in sorted(self.load))
        return f"gateway on core {self.gateway}; fake backend, wrk and stream client on {load}"

    def pin_this_process_to_load(self) -> None:
        """Children (the fake backend, wrk, py-spy) inherit this process's affinity."""
        if self.gateway is not None:
            os.sched_setaffinity(0, self.load)


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class ServiceFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _wait_ready(service: Service, ready_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise ServiceFailed(
                f"{service.name} exited with {service.process.returncode}:\n{service.log_tail()}"
            )
        if _is_ready(ready_url):
            return
        time.sleep(0.05)
    raise ServiceFailed(f"{service.name} was not ready within {timeout:g} s:\n{service.log_tail()}")


@contextmanager
def running(
    name: str,
    command: Sequence[str],
    *,
    url: str,
    ready_path: str,
    log_dir: Path,
    cores: str | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 30,
) -> Iterator[Service]:
    """Runs `command` (under `taskset -c cores` when given) until the block ends."""
    if cores is not None:
        command = ["taskset", "-c", cores, *command]  # taskset execs: the pid stays the same
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    service = Service(name=name, url=url, process=process, log_path=log_path)
    try:
        _wait_ready(service, url + ready_path, ready_timeout)
        yield service
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def fake_backend(
    log_dir: Path, chunks: int, chunks_per_write: int, name: str = "fake-backend"
) -> AbstractContextManager[Service]:
    port = free_port()
    command = [sys.executable, "-m", "bench.fake_backend", "--port", str(port)]
    return running(
        name,
        [*command, "--chunks", str(chunks), "--chunks-per-write", str(chunks_per_write)],
        url=f"http://127.0.0.1:{port}",
        ready_path="/health",
        log_dir=log_dir,
    )


def gateway(
    log_dir: Path,
    backend_url: str,
    cores: str | None,
    *extra: str,
    name: str = "gateway",
) -> AbstractContextManager[Service]:
    """The gateway over `backend_url` (more backends and settings in `extra`). The fake backend
    serves any number of requests at once, so no concurrency limit is set: the figures are the
    gateway's own cost, not a queue's."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlx_gateway",
        "--port",
        str(port),
        "--mlx-url",
        backend_url,
        "--log-level",
        "warning",
        "--max-concurrency",
        "0",
        *extra,
    ]
    return running(
        name,
        command,
        url=f"http://127.0.0.1:{port}",
        ready_path="/health",
        log_dir=log_dir,
        cores=cores,
    )
