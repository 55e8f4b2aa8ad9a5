"""Run llama.cpp's real `llama-server` on the tiny test model (see `tiny_gguf`, `llama_server`).

`running_llama_server()` is a plain context manager; `llama_backend` is the session-scoped pytest
fixture on the common window (4096, the model's trained length) and `start_llama_server` a
factory for other windows or flags, whose servers stop with the test. Nothing here ever skips: a
server that cannot be built or started is a failure, reported with its log.

Building `llama-server` takes minutes the first time on a machine, far over a test's timeout, so
this plugin builds it before the first test runs when any collected test uses these fixtures,
and only then; a failed build fails those tests with the build log, and the others still run.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.support.llama_server import LlamaServerBuildError, ensure_llama_server
from tests.support.ports import free_port
from tests.support.tiny_gguf import build_tiny_gguf

COMMON_WINDOW = 4096
MODEL_ALIAS = "tiny-llama"
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
# One thread for generation and for prompts: the tiny model needs no more, and ggml's worker
# threads wait for each other by spinning, which on a busy two-core machine (a test suite running
# beside the server) made a 25-token answer take seconds instead of 60 ms.
ONE_THREAD = ("--threads", "1", "--threads-batch", "1")
FIXTURES = frozenset({"llama_backend", "start_llama_server"})
_BUILD_FAILURE = pytest.StashKey[LlamaServerBuildError]()


@dataclass(frozen=True)
class LlamaBackend:
    """A running `llama-server`."""

    url: str  # http://127.0.0.1:PORT, no trailing slash
    model: str  # the `--alias` it reports; it serves this one model whatever a request names
    gguf_path: Path
    window: int  # the `--ctx-size` it was started with
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> Any:
        """GET a JSON endpoint of the server (`/props`, `/slots`, ...)."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return json.load(response)

    def metrics(self) -> dict[str, float]:
        """`/metrics` (Prometheus text), `llamacpp:` prefix dropped: counters such as
        `tokens_predicted_total`, which also counts the tokens of a cancelled request."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=30) as response:
            text = response.read().decode()
        lines = [line for line in text.splitlines() if line and not line.startswith("#")]
        samples = (line.split() for line in lines)
        return {name.removeprefix("llamacpp:"): float(value) for name, value in samples}

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST JSON to the server directly, bypassing the gateway."""
        request = urllib.request.Request(
            f"{self.url}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)


class LlamaServerError(RuntimeError):
    """The server did not come up; the message carries its log."""


StartLlamaServer = Callable[..., LlamaBackend]


@contextmanager
def running_llama_server(
    *extra_args: str, window: int = COMMON_WINDOW, port: int | None = None
) -> Iterator[LlamaBackend]:
    """Start `llama-server --jinja --metrics` on a free port (or `port`), wait until it is
    healthy, stop it on exit."""
    executable = ensure_llama_server()
    gguf_path = build_tiny_gguf(context_length=window)
    with tempfile.TemporaryDirectory(prefix="llama-server-") as scratch:
        backend = _start(executable, gguf_path, Path(scratch), window, port, extra_args)
        try:
            _wait_until_healthy(backend, STARTUP_TIMEOUT)
            yield backend
        finally:
            stop(backend.process)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Build llama-server before the tests, outside every test's timeout, if any needs it."""
    if session.config.option.collectonly or not _needs_llama_server(session.items):
        return
    started = time.monotonic()
    try:
        executable = ensure_llama_server()
    except LlamaServerBuildError as error:
        session.config.stash[_BUILD_FAILURE] = error
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        elapsed = time.monotonic() - started
        reporter.write_line(f"llama-server: {executable} (ready in {elapsed:.0f} s)")


def _needs_llama_server(items: list[pytest.Item]) -> bool:
    return any(FIXTURES & set(getattr(item, "fixturenames", ())) for item in items)


def _raise_build_failure(config: pytest.Config) -> None:
    """A build that failed before the tests fails each test that needs it, with the log."""
    failure = config.stash.get(_BUILD_FAILURE, None)
    if failure is not None:
        raise failure


@pytest.fixture(scope="session")
def llama_backend(pytestconfig: pytest.Config) -> Iterator[LlamaBackend]:
    _raise_build_failure(pytestconfig)
    with running_llama_server() as backend:
        yield backend


@pytest.fixture
def start_llama_server(pytestconfig: pytest.Config) -> Iterator[StartLlamaServer]:
    """`start_llama_server(*flags, window=N, port=P)`; every server stops with the test."""
    _raise_build_failure(pytestconfig)
    with ExitStack() as stack:

        def start(*extra_args: str, window: int = COMMON_WINDOW, port: int | None = None) -> (
            LlamaBackend
        ):
            return stack.enter_context(running_llama_server(*extra_args, window=window, port=port))

        yield start


def _start(
    executable: Path,
    gguf_path: Path,
    scratch: Path,
    window: int,
    port: int | None,
    extra_args: tuple[str, ...],
) -> LlamaBackend:
    port = port or free_port()
    command = [str(executable), "--jinja", "-m", str(gguf_path), "--alias", MODEL_ALIAS]
    command += ["--host", "127.0.0.1", "--port", str(port), "-c", str(window), "--metrics"]
    command += [*ONE_THREAD, *extra_args]
    log_path = scratch / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    url = f"http://127.0.0.1:{port}"
    return LlamaBackend(url, MODEL_ALIAS, gguf_path, window, process, log_path)


def _wait_until_healthy(backend: LlamaBackend, timeout: float) -> None:
    """`/health` answers 503 while the model loads and 200 once the server takes requests."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if backend.process.poll() is not None:
            _fail(backend, f"llama-server exited with {backend.process.returncode}")
        if _healthy(backend.url):
            return
        time.sleep(0.1)
    stop(backend.process)
    _fail(backend, f"llama-server was not healthy within {timeout:.0f} s")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            status: int = response.status
            return status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):  # HTTPError included
        return False


def _fail(backend: LlamaBackend, reason: str) -> NoReturn:
    raise LlamaServerError(f"{reason}\n--- server log ---\n{backend.log()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill what did not end within STOP_TIMEOUT."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
