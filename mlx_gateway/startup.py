"""What a gateway checks as it starts: that its backend is not itself, and whether the backend
answers, in one log line that says what to do when it does not.

`self_proxy_error` runs before the port is bound and stops the start; `report_backend` runs once
serving has begun (it must not hold up the first request) and only logs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any
from urllib.parse import urlsplit

import msgspec

from mlx_gateway.backends.context import PromptContext
from mlx_gateway.backends.upstream import Upstream
from mlx_gateway.config import Config
from mlx_gateway.errors import BackendUnavailable, GatewayError

log = logging.getLogger("mlx_gateway")

PROBE_TIMEOUT = 3.0
# Claude Code's first request (system prompt and tool definitions) is about 20,000 tokens; with
# room for an answer it needs a window of at least this.
CLAUDE_CODE_NEEDS = 24_000
_WILDCARDS = ("0.0.0.0", "::", "")
_MLX_PORT_NOTE = " (mlx_lm.server listens on 8080 unless told, the gateway's port: give it --port)"


# ---- a gateway that would forward to itself ---------------------------------------------------


def self_proxy_error(config: Config) -> str | None:
    """The reason to refuse a backend URL that names the gateway's own address, else None."""
    for spec in config.backend_specs():
        parts = urlsplit(spec.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if port == config.port and _is_own_address(parts.hostname or "", config.host):
            return (
                f"--mlx-url {spec.url} is this gateway's own address "
                f"({config.host}:{config.port}); it must name the model server, "
                f"e.g. http://localhost:8081"
            )
    return None


def _is_own_address(host: str, bound: str) -> bool:
    """Whether a connection to `host` would reach a server listening on `bound`."""
    if host == bound or host in _WILDCARDS:
        return True
    addresses = _addresses(host)
    if bound in _WILDCARDS:
        return any(_is_local(address) for address in addresses)
    return bool(addresses & _addresses(bound))


def _addresses(host: str) -> set[str]:
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return set()
    return {str(info[4][0]) for info in found}


def _is_local(address: str) -> bool:
    """Loopback, or an address of one of this machine's interfaces (only those can be bound)."""
    try:
        if ipaddress.ip_address(address.split("%", maxsplit=1)[0]).is_loopback:
            return True
    except ValueError:
        return False
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


# ---- the start-up line -------------------------------------------------------------------------


async def report_backend(config: Config, upstream: Upstream, context: PromptContext) -> None:
    """Logs whether the backend answers `GET /v1/models`, what it serves and the model's window,
    with the fix when it does not answer or the window is too small for Claude Code."""
    where = f"backend {config.backend_base_url} ({upstream.profile.name})"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            answer = await upstream.probe_models()
    except (BackendUnavailable, TimeoutError) as error:
        log.warning("%s is not reachable: %s", where, _failure(error, upstream))
        return
    except GatewayError as error:
        answer = error.message.encode()
    models = served_models(answer)
    if models is None:
        log.warning(
            "%s is not an OpenAI-compatible model server: GET /v1/models answered %s; "
            "--mlx-url takes the model server's root URL",
            where,
            answer[:200].decode(errors="replace"),
        )
        return
    window = await _window(context, config.mlx_model)
    log.info("%s is reachable: serves %s; %s", where, ", ".join(models) or "no model", window[0])
    if window[1]:
        log.warning("%s", window[1])


def _failure(error: BackendUnavailable | TimeoutError, upstream: Upstream) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {PROBE_TIMEOUT:g} s"
    message = error.message.removeprefix("MLX backend unavailable: ")
    if upstream.profile.name == "mlx_lm" and upstream.hint in message:
        message += _MLX_PORT_NOTE
    return message


def served_models(answer: bytes) -> list[str] | None:
    """The model ids of an OpenAI `GET /v1/models` answer; None when it is not one."""
    try:
        parsed: Any = msgspec.json.decode(answer)
    except msgspec.DecodeError:
        return None
    entries = parsed.get("data") if isinstance(parsed, dict) else None
    if not isinstance(entries, list):
        return None
    return [str(entry["id"]) for entry in entries if isinstance(entry, dict) and "id" in entry]


async def _window(context: PromptContext, model: str) -> tuple[str, str]:
    """The window as said in the start-up line, and a warning when Claude Code would not fit."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            window = await context.window(model)
    except (GatewayError, TimeoutError):
        window = None
    if window is None:
        return "context window unknown (--context-window tells the gateway)", ""
    return f"context window {window} tokens", window_warning(window)


def window_warning(window: int) -> str:
    if window >= CLAUDE_CODE_NEEDS:
        return ""
    return (
        f"the model's context window ({window} tokens) is smaller than Claude Code needs (its "
        f"first request is about 20,000 tokens, then the answer): serve the model with a larger "
        f"window (the server's own option, e.g. Ollama's num_ctx or llama.cpp's -c) and tell the "
        f"gateway with --context-window"
    )
