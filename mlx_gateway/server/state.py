"""What every route shares, built once per app: the settings, the backend and its profile, the
model aliases, the context window, the heartbeat, the message ids, and what is observed of the
requests (access log, metrics, status page)."""

from __future__ import annotations

import asyncio
import secrets

from mlx_gateway.backends.aliases import ModelRouter
from mlx_gateway.backends.context import PromptContext
from mlx_gateway.backends.profiles import resolve_profile
from mlx_gateway.backends.upstream import Upstream
from mlx_gateway.config import Config
from mlx_gateway.server.metrics import Metrics, shared_dir
from mlx_gateway.server.observe import Observer
from mlx_gateway.server.status import BackendStates, SingleBackend, StatusBoard
from mlx_gateway.server.streaming import Heartbeat


class GatewayState:
    """Per-app state; built inside `create_app`, never at import."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.profile = resolve_profile(config.backend, config.backend_base_url)
        self.router = ModelRouter(config.mlx_model, config.model_map)
        self.message_ids = MessageIds()
        self.heartbeat = Heartbeat(config.ping_interval)
        self.upstream = Upstream(
            config.backend_base_url,
            self.profile,
            config.timeout,
            config.total_timeout,
            model=config.mlx_model,
        )
        self.background: set[asyncio.Task[None]] = set()  # cancelled when serving stops
        # The model's context window and prompt counts, discovered and cached per backend model.
        self.context = PromptContext(
            self.profile, self.upstream, configured_window=config.context_window
        )
        single = SingleBackend(
            config.backend_base_url, self.profile.name, config.mlx_model, self.context
        )
        # What /status and /metrics read of the backends; the pool reports the same shape.
        self.backends: BackendStates = single
        self.observer = Observer()
        self.board = StatusBoard()
        self.metrics = Metrics(
            lambda: self.backends.state(private=True),
            lambda: self.observer.in_flight,
            shared_dir(config.port) if config.workers > 1 else None,
        )
        self.observer.listeners += [single.note, self.board.note, self.metrics.note]

    async def start(self) -> None:
        await self.upstream.start()
        await self.metrics.start()

    async def close(self) -> None:
        await self.metrics.close()
        await self.upstream.close()


class MessageIds:
    """`msg_` and 24 hex digits: 16 drawn once per gateway from the system's entropy, then a
    count. Ids must be unique, not secret, and this costs no system call per message."""

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = "msg_" + secrets.token_hex(8)
        self._count = 0

    def new(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count & 0xFFFFFFFF:08x}"
