"""Run the real `mlx_lm.server` on the tiny test model (see `tiny_model`).

`running_mlx_server()` is a plain context manager (reused by the benchmark); `mlx_backend` is
the session-scoped pytest fixture built on it. Neither ever skips: a server that cannot start is a
failure, reported with the server's own log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.support.ports import free_port
from tests.support.tiny_model import build_tiny_model

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
# A text-completion prompt no chat prompt starts with, so the readiness probe leaves nothing in the
# server's prompt cache that a test's `cached_tokens` could pick up.
PROBE = {"prompt": "ready?", "max_tokens": 1}


@dataclass(frozen=True)
class MlxBackend:
    """A running `mlx_lm.server`."""

    url: str  # http://127.0.0.1:PORT, no trailing slash
    model: str  # the exact `--model` string; requests naming anything else make it try to load that
    model_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class MlxServerError(RuntimeError):
    """The server did not come up; the message carries its log."""


@contextmanager
def running_mlx_server(
    *extra_args: str,
    model_path: Path | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> Iterator[MlxBackend]:
    """Start `python -m mlx_lm.server` on a free port, wait until it generates, stop it on exit."""
    path = model_path or build_tiny_model()
    with tempfile.TemporaryDirectory(prefix="mlx-server-") as scratch:
        backend = _start(path, Path(scratch), extra_args)
        try:
            _wait_until_generating(backend, startup_timeout)
            yield backend
        finally:
            _stop(backend.process)


@pytest.fixture(scope="session")
def mlx_backend() -> Iterator[MlxBackend]:
    with running_mlx_server() as backend:
        yield backend


def _start(model_path: Path, scratch: Path, extra_args: tuple[str, ...]) -> MlxBackend:
    hub_cache = scratch / "hub"
    hub_cache.mkdir()  # GET /v1/models scans it and fails if it is missing
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub_cache),
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    port = free_port()
    model = str(model_path)
    command = [sys.executable, "-m", "mlx_lm.server", "--model", model]
    command += ["--host", "127.0.0.1", "--port", str(port), *extra_args]
    log_path = scratch / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    return MlxBackend(url, model, model_path, process, log_path)


def _wait_until_generating(backend: MlxBackend, timeout: float) -> None:
    # /health answers before the model has loaded, so the probe is a real one-token completion.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if backend.process.poll() is not None:
            _fail(backend, f"mlx_lm.server exited with {backend.process.returncode}")
        if _probe(backend):
            return
        time.sleep(0.2)
    _stop(backend.process)
    _fail(backend, f"mlx_lm.server did not answer within {timeout:.0f} s")


def _probe(backend: MlxBackend) -> bool:
    body = json.dumps({**PROBE, "model": backend.model}).encode()
    request = urllib.request.Request(
        f"{backend.url}/v1/completions", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status: int = response.status
            return status == 200
    except urllib.error.HTTPError as error:
        _fail(backend, f"readiness probe got HTTP {error.code}: {error.read()!r}")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _fail(backend: MlxBackend, reason: str) -> NoReturn:
    raise MlxServerError(f"{reason}\n--- server log ---\n{backend.log()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
