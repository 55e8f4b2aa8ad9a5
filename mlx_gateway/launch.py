"""`mlx-gateway code [claude args...]`: Claude Code on the local model in one command.

Uses the gateway already listening on the configured address, or starts one for the session,
then runs the installed `claude` with the environment that makes it work well on a local model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from mlx_gateway.backends.aliases import ModelRouter
from mlx_gateway.config import Config

INSTALL_HINT = (
    "Claude Code is not installed (no `claude` on PATH). Install it with:\n"
    "    npm install -g @anthropic-ai/claude-code\n"
    "then run `mlx-gateway code` again."
)
SERVICE_NAME = "mlx-gateway"
_START_TIMEOUT = 20.0


def gateway_url(config: Config) -> str:
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    return f"http://{host}:{config.port}"


def claude_environment(config: Config, base_url: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables Claude Code reads; the user's own values for the model names win."""
    router = ModelRouter(config.mlx_model, config.model_map)
    env = dict(environ)
    env["ANTHROPIC_BASE_URL"] = base_url
    # The gateway checks no key, but Claude Code refuses to start without one.
    env.setdefault("ANTHROPIC_API_KEY", "mlx-gateway")
    env.setdefault("ANTHROPIC_MODEL", config.mlx_model)
    for family in ("opus", "sonnet", "haiku"):
        env.setdefault(f"ANTHROPIC_DEFAULT_{family.upper()}_MODEL", router.resolve(family))
    env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
    # The attribution line changes per request and would defeat the backend's prompt cache.
    env["CLAUDE_CODE_ATTRIBUTION_HEADER"] = "0"
    return env


def is_gateway(base_url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=timeout) as response:
            return bool(json.loads(response.read()).get("service") == SERVICE_NAME)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextmanager
def gateway_for_session(config: Config, argv: Sequence[str]) -> Iterator[str]:
    """Yields the URL of a running gateway, starting one (and stopping it after) if needed."""
    base_url = gateway_url(config)
    if is_gateway(base_url):
        yield base_url
        return
    command = [sys.executable, "-m", "mlx_gateway", *argv]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not is_gateway(base_url, timeout=0.5):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mlx-gateway: error: could not start a gateway on {base_url}")
            time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def run_code(config: Config, gateway_argv: Sequence[str], claude_args: Sequence[str]) -> int:
    claude = shutil.which("claude")
    if claude is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 127
    with gateway_for_session(config, gateway_argv) as base_url:
        env = claude_environment(config, base_url, os.environ)
        return subprocess.call([claude, *claude_args], env=env)


def split_code_command(argv: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """`[gateway flags] code [claude args]` -> (gateway flags, claude args); None if no `code`.
    Every gateway flag takes a value, so flag values are skipped when looking for `code`."""
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "code":
            return list(argv[:index]), list(argv[index + 1 :])
        is_flag_with_value = token.startswith("--") and "=" not in token
        index += 2 if is_flag_with_value and token not in ("--help", "--version") else 1
    return None
