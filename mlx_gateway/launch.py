"""`mlx-gateway code [claude args...]` and `mlx-gateway codex [codex args...]`: a coding agent
on the local model in one command.

The gateway already listening on the configured address is used when its backend and model are
the ones asked for (what `/health` says); otherwise a private gateway is started for the session
on a free loopback port, its log written to a file rather than over the agent's screen, and
stopped afterwards. The agent then runs wired to it (see agents.py) and its exit status is ours.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_gateway import children
from mlx_gateway.agents import AGENTS, Agent, Session
from mlx_gateway.config import Config, state_dir

SERVICE_NAME = "mlx-gateway"
START_TIMEOUT = 20.0
WINDOW_WAIT = 3.0  # a fresh gateway learns the window just after it starts
# `setting name: /health field` of what must match for a running gateway to be reused.
_MATCHED = {"mlx_url": "backend", "mlx_model": "model"}
_VALUE_LESS = ("--help", "-h", "--version")


@dataclass(frozen=True)
class Command:
    """`[gateway flags] <name> [agent args]`."""

    name: str
    gateway_argv: list[str]
    args: list[str]

    @property
    def wants_help(self) -> bool:
        return self.args[:1] in (["--help"], ["-h"])


def split_command(argv: Sequence[str]) -> Command | None:
    """Finds the agent subcommand; None when there is none. Every gateway flag takes a value,
    so flag values are skipped when looking for it (`--mlx-model code code` works)."""
    index = 0
    while index < len(argv):
        token = argv[index]
        if token in AGENTS:
            return Command(token, list(argv[:index]), list(argv[index + 1 :]))
        takes_value = token.startswith("--") and "=" not in token and token not in _VALUE_LESS
        index += 2 if takes_value else 1
    return None


def command_help(name: str) -> str:
    agent = AGENTS[name]
    return (
        f"usage: mlx-gateway [gateway flags] {name} [{agent.program} args...]\n\n"
        f"Runs {agent.title} on the local model through mlx-gateway. The gateway listening on "
        f"--host/--port is used when it serves the backend and model asked for (--mlx-url, "
        f"--mlx-model); otherwise a gateway is started for the session on a free port, its log "
        f"written under {state_dir(os.environ)}. Flags before `{name}` are the gateway's "
        f"(`mlx-gateway --help`); everything after it goes to `{agent.program}` "
        f"(`{agent.program} --help` lists them).\n\n{agent.wiring}"
    )


def run_command(command: Command, config: Config) -> int:
    agent = AGENTS[command.name]
    program = shutil.which(agent.program)
    if program is None:
        print(agent.install_hint, file=sys.stderr)
        return 127
    with session_gateway(config, command.gateway_argv) as session:
        argv, env = agent.wire(config, session, command.args, os.environ)
        try:
            return subprocess.call([program, *argv], env=env)
        except KeyboardInterrupt:  # the agent had the terminal; Ctrl-C was meant for it
            return 130


# ---- finding or starting the gateway ------------------------------------------------------------


def gateway_url(config: Config) -> str:
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    return f"http://{host}:{config.port}"


def gateway_info(base_url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """What a gateway says about itself on `/health`; None when no gateway answers there."""
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=timeout) as response:
            info = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("service") == SERVICE_NAME else None


def mismatches(info: Mapping[str, Any], config: Config) -> list[str]:
    """The settings given (flag, environment or file) that the running gateway does not have."""
    asked = {"mlx_url": config.backend_base_url, "mlx_model": config.mlx_model}
    return [
        f"{field} {info.get(field)} (asked: {asked[name]})"
        for name, field in _MATCHED.items()
        if name in config.given and info.get(field) != asked[name]
    ]


@contextmanager
def session_gateway(config: Config, argv: Sequence[str]) -> Iterator[Session]:
    """The gateway for this session: the configured one when it matches, else a private one."""
    base_url = gateway_url(config)
    info = gateway_info(base_url)
    if info is not None and not mismatches(info, config):
        yield Session(base_url, info.get("context_window"))
        return
    if info is not None:
        print(
            f"mlx-gateway: the gateway on {base_url} serves {'; '.join(mismatches(info, config))}"
            f"; starting a private one for this session",
            file=sys.stderr,
        )
    with private_gateway(config, argv) as session:
        yield session


@contextmanager
def private_gateway(config: Config, argv: Sequence[str]) -> Iterator[Session]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = state_dir(os.environ) / f"session-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlx_gateway", *argv, "--host", "127.0.0.1"]
    children.prepare()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=children.die_with_parent,  # noqa: PLW1509  # see children.prepare
        )
    print(f"mlx-gateway: gateway for this session on {base_url}, log: {log_path}", file=sys.stderr)
    try:
        # A gateway that runs its own backend first waits for it to load the model.
        timeout = START_TIMEOUT + (config.backend_start_timeout if config.serve_backend else 0)
        yield _wait_started(base_url, process, log_path, timeout)
    finally:
        stop(process)


def _wait_started(
    base_url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float
) -> Session:
    deadline = time.monotonic() + timeout
    while (info := gateway_info(base_url, timeout=0.5)) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-10:])
            raise SystemExit(f"mlx-gateway: error: the session gateway did not start:\n{tail}")
        time.sleep(0.1)
    window_deadline = time.monotonic() + WINDOW_WAIT
    while info.get("context_window") is None and time.monotonic() < window_deadline:
        time.sleep(0.2)
        info = gateway_info(base_url, timeout=0.5) or info
    return Session(base_url, info.get("context_window"))


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


__all__ = ["Agent", "Command", "command_help", "run_command", "split_command"]
