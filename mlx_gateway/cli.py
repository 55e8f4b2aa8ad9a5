"""Command line: `mlx-gateway [flags]` serves; flags are derived from the settings table."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import multiprocessing
import os
import socket
import sys
from collections.abc import Sequence

from mlx_gateway import __version__
from mlx_gateway.config import SETTINGS, Config, load_config
from mlx_gateway.errors import ConfigError
from mlx_gateway.launch import run_code, split_code_command
from mlx_gateway.logs import configure_logging
from mlx_gateway.server import rsgi
from mlx_gateway.server.app import create_app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx-gateway",
        epilog="`mlx-gateway [flags] code [claude args...]` runs Claude Code through the gateway.",
        description="Anthropic Messages and OpenAI Chat Completions for a local model server.",
    )
    parser.add_argument("--version", action="version", version=f"mlx-gateway {__version__}")
    parser.add_argument("--config", help="TOML file with the same settings (flags win)")
    for setting in SETTINGS:
        action = "append" if setting.repeated else "store"
        parser.add_argument(setting.flag, dest=setting.name, action=action, help=setting.help)
    return parser


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def tune_gc() -> None:
    """The cyclic collector runs after every 700 new container objects by default, many times
    per large request, and each run walks every young object of every request in flight. The
    gateway makes thousands of short-lived containers per request and next to no cycles:
    collecting every 50,000 measured ~17% less CPU on the ~120 KB Claude Code request, with
    the same peak memory. What start-up made is moved out of the collector's way (freeze)."""
    gc.set_threshold(50_000, 20, 100)
    gc.freeze()


def serve(config: Config) -> None:
    configure_logging(config.log_level, config.log_format)
    logging.getLogger("mlx_gateway").info(
        "mlx-gateway %s on http://%s:%d -> %s (model %s)",
        __version__,
        config.host,
        config.port,
        config.backend_base_url,
        config.mlx_model,
    )
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    app = create_app(config)
    tune_gc()
    try:
        loop.run_until_complete(rsgi.serve(app, config.host, config.port))
    finally:
        loop.close()


def serve_workers(config: Config) -> None:
    """N processes on one port (SO_REUSEPORT): the gateway keeps no state between requests, so
    the kernel may hand any connection to any of them."""
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=serve, args=(config,)) for _ in range(config.workers)]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        pass
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(timeout=10)


def claim_port(host: str, port: int) -> None:
    """Fails with OSError when something already listens on host:port. granian binds with
    SO_REUSEPORT (so that `--workers` can share a port), which would let a second gateway on
    the same port silently take half of the first one's traffic; an exclusive bind tried first
    refuses that as any server would."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        # Connections of an earlier run in TIME_WAIT must not stop a restart.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)


def parse_config(argv: Sequence[str]) -> Config:
    args = build_parser().parse_args(argv)
    flags = {name: value for name, value in vars(args).items() if name != "config"}
    return load_config(flags, os.environ, args.config)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["doctor"]:
        from mlx_gateway.doctor import run_doctor  # imported here: it imports this module

        return run_doctor(arguments[1:])
    code_command = split_code_command(arguments)
    gateway_argv = code_command[0] if code_command else arguments
    try:
        config = parse_config(gateway_argv)
    except ConfigError as exc:
        print(f"mlx-gateway: error: {exc.message}", file=sys.stderr)
        return 2
    if code_command is not None:
        return run_code(config, gateway_argv, code_command[1])
    try:
        claim_port(config.host, config.port)
    except OSError as exc:
        print(
            f"mlx-gateway: error: cannot listen on {config.host}:{config.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    if config.workers > 1:
        serve_workers(config)
    else:
        serve(config)
    return 0
