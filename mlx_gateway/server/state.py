"""What every route shares, built once per app: the settings, who may call, the backend pool
(each backend with its own profile, window, health and counters), the model aliases, the
heartbeat, the message ids, and what is observed of the requests (access log, metrics, status
page)."""

from __future__ import annotations

import asyncio
import secrets

from mlx_gateway.backends.aliases import ModelRouter
from mlx_gateway.backends.backend import Backend, Settings
from mlx_gateway.backends.pool import BackendPool
from mlx_gateway.backends.upstream import PoolSettings
from mlx_gateway.config import Config
from mlx_gateway.server.guard import Guard
from mlx_gateway.server.metrics import Metrics, shared_dir
from mlx_gateway.server.observe import Observer
from mlx_gateway.server.status import BackendStates, StatusBoard
from mlx_gateway.server.streaming import Heartbeat


class GatewayState:
    """Per-app state; built inside `create_app`, never at import."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.guard = Guard(config)
        self.router = ModelRouter(config.mlx_model, config.model_map)
        self.message_ids = MessageIds()
        self.heartbeat = Heartbeat(config.ping_interval)
        settings = Settings(
            default_model=config.mlx_model,
            timeout=config.timeout,
            total_timeout=config.total_timeout,
            context_window=config.context_window,
            connections=PoolSettings(config.backend_idle_timeout, config.backend_pool_size),
        )
        self.pool = BackendPool(
            [Backend(spec, settings) for spec in config.backend_specs()],
            queue_size=config.queue_size,
            queue_timeout=config.queue_timeout,
        )
        self.background: set[asyncio.Task[None]] = set()  # cancelled when serving stops
        # What /status and /metrics read of the backends.
        self.backends: BackendStates = self.pool
        self.observer = Observer()
        self.board = StatusBoard()
        self.metrics = Metrics(
            lambda: self.backends.state(private=True),
            lambda: self.observer.in_flight,
            shared_dir(config.port) if config.workers > 1 else None,
        )
        self.observer.listeners += [self.board.note, self.metrics.note]

    async def start(self) -> None:
        await self.pool.start()
        await self.metrics.start()

    async def close(self) -> None:
        await self.metrics.close()
        await self.pool.close()


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
