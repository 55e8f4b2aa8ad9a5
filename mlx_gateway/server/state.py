"""What every route shares, built once per app: the settings, the backend and its profile, the
model aliases, the context window, the heartbeat and the message ids."""

from __future__ import annotations

import secrets

from mlx_gateway.backends.aliases import ModelRouter
from mlx_gateway.backends.context import PromptContext
from mlx_gateway.backends.profiles import resolve_profile
from mlx_gateway.backends.upstream import Upstream
from mlx_gateway.config import Config
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
            config.backend_base_url, self.profile, config.timeout, config.total_timeout
        )
        # The model's context window and prompt counts, discovered and cached per backend model.
        self.context = PromptContext(
            self.profile, self.upstream, configured_window=config.context_window
        )


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
