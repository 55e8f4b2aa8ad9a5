"""`--serve-backend "mlx_lm.server --model ... --port 8081"`: the gateway runs its model server.

The command is split like a shell would split it (shlex) but run without one. Its output goes to
a log file. The gateway starts serving once the server answers `GET /v1/models`; if the server
dies it is started again after a pause that doubles with each quick death (1 s up to 30 s, back to
1 s once it has run for a minute). When the gateway stops, the server gets SIGTERM, then SIGKILL
after a grace period; on Linux it also gets SIGTERM if the gateway itself is killed outright
(the parent-death signal), so no model server outlives its gateway holding the machine's memory.

The watching is a thread rather than a task: with `--workers` the process that owns the server is
the one that serves nothing and runs no event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

from mlx_gateway import children

log = logging.getLogger("mlx_gateway.backend")

FIRST_DELAY, MAX_DELAY, STEADY_AFTER = 1.0, 30.0, 60.0
READY_POLL = 0.25


class BackendSupervisor:
    """One backend process, kept running from `start()` to `stop()`."""

    def __init__(self, command: str, log_path: Path, base_url: str, grace: float = 10.0) -> None:
        self.argv = shlex.split(command)
        self.log_path = log_path
        self.base_url = base_url
        self.grace = grace
        self.restarts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="backend-watch", daemon=True)

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None else None

    def start(self) -> None:
        """Starts the command; OSError (no such program) is raised here, not in the thread."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        children.prepare()
        self._spawn()
        self._watcher.start()

    def wait_ready(self, timeout: float, is_ready: Callable[[str], bool] | None = None) -> bool:
        """Waits until the server answers (restarts included) or `timeout` passes."""
        check = is_ready or answers_models
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            if check(self.base_url):
                return True
            time.sleep(READY_POLL)
        return False

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None:
            stop_process_group(process, self.grace)
        if self._watcher.is_alive():
            self._watcher.join(timeout=self.grace + 5)
        if self._log is not None:
            self._log.close()

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            assert self._log is not None
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self._log.write(f"--- {stamp} mlx-gateway starts: {shlex.join(self.argv)}\n".encode())
            self._log.flush()
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the gateway reaches it through us
                preexec_fn=children.die_with_parent,  # noqa: PLW1509  # see children.prepare
            )

    def _watch(self) -> None:
        delay = FIRST_DELAY
        while not self._stopping.is_set():
            process, started = self._process, time.monotonic()
            if process is None:
                return
            code = process.wait()
            if self._stopping.is_set():
                return
            delay = FIRST_DELAY if time.monotonic() - started > STEADY_AFTER else delay
            log.warning(
                "backend command exited with status %s; starting it again in %g s (log: %s)",
                code,
                delay,
                self.log_path,
            )
            if self._stopping.wait(delay):
                return
            self.restarts += 1
            try:
                self._spawn()
            except OSError as exc:
                log.error("cannot start the backend command again: %s", exc)
                return
            delay = min(delay * 2, MAX_DELAY)


def answers_models(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/v1/models", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def stop_process_group(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to the process's group (it leads its own session), SIGKILL after `grace`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
