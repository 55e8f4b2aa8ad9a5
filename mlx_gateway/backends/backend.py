"""One model server as the pool sees it: its client, its kind (probed), its profile, window and
token counts, its health and its admission counters. The pool (pool.py) decides which backend
serves a request; this module keeps each backend's own state."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from mlx_gateway.backends import probe
from mlx_gateway.backends.context import PromptContext
from mlx_gateway.backends.probe import Identity
from mlx_gateway.backends.profiles import PROFILES, BackendProfile, guess_kind, start_hint
from mlx_gateway.backends.upstream import PoolSettings, Upstream

log = logging.getLogger("mlx_gateway.pool")


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """A backend as configured: `kind` "auto" is probed; no `models`: it serves whatever the
    aliases resolve to; `max_concurrency` None: the kind's default, 0: no limit."""

    url: str
    kind: str = "auto"
    models: tuple[str, ...] = ()
    weight: float = 1.0
    max_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """What every backend of one gateway shares."""

    default_model: str
    timeout: float
    total_timeout: float
    context_window: int = 0
    probe_timeout: float = probe.PROBE_TIMEOUT
    connections: PoolSettings = field(default_factory=PoolSettings)  # idle keep-alive ones


class Backend:
    """Made at app build, started and closed with the app; state on the instance only."""

    def __init__(self, spec: BackendSpec, settings: Settings) -> None:
        self.spec = spec
        self.url = spec.url
        self.settings = settings
        profile = PROFILES[spec.kind if spec.kind != "auto" else guess_kind(spec.url)]
        self.upstream = Upstream(
            spec.url,
            profile,
            settings.timeout,
            settings.total_timeout,
            model=self._model(),
            pool=settings.connections,
        )
        self.context = self._new_context(profile)
        self.identity: Identity | None = None  # None until the first probe has answered
        self._identifying: asyncio.Task[None] | None = None
        self.limit = self._limit(profile, None)
        self.up = True  # until something says otherwise
        self.failures = 0  # consecutive, for the backoff
        self.next_check = 0.0
        self.last_error = ""
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self.failovers = 0

    @property
    def profile(self) -> BackendProfile:
        return self.upstream.profile

    def serves(self, model: str) -> bool:
        return not self.spec.models or model in self.spec.models

    def has_room(self) -> bool:
        return not self.limit or self.in_flight < self.limit

    # ---- lifecycle and identity -----------------------------------------------------------------

    async def start(self) -> None:
        await self.upstream.start()
        self._identifying = asyncio.ensure_future(self.identify())

    async def close(self) -> None:
        if self._identifying is not None:
            self._identifying.cancel()
        await self.upstream.close()

    async def ready(self) -> None:
        """Waits for the first probe, so that no request is translated for the wrong kind."""
        if self.identity is None and self._identifying is not None:
            # shield: a client that leaves must not cancel the probe others wait for
            await asyncio.shield(self._identifying)

    async def identify(self) -> None:
        identity = await probe.probe(self.url, self.settings.probe_timeout)
        self.apply(identity)

    def apply(self, identity: Identity) -> None:
        """Takes what the probe learnt; a forced kind stays, an unknown one keeps the guess."""
        self.identity = identity
        kind = self.spec.kind
        if kind == "auto":
            kind = identity.kind or guess_kind(self.url)
        profile = PROFILES[kind]
        if profile is not self.profile:
            self.upstream.profile = profile
            self.upstream.hint = start_hint(profile, self.url, self._model())
            self.context = self._new_context(profile)
        self.limit = self._limit(profile, identity)
        how = "probed" if identity.kind else "guessed from the port"
        log.info("backend %s: %s (%s) %s", self.url, kind, how, identity.detail)

    def _limit(self, profile: BackendProfile, identity: Identity | None) -> int:
        if self.spec.max_concurrency is not None:
            return self.spec.max_concurrency
        if identity is not None and identity.slots and profile.name == "llama_cpp":
            return identity.slots
        return profile.max_concurrency

    def _new_context(self, profile: BackendProfile) -> PromptContext:
        return PromptContext(profile, self.upstream, configured_window=self.settings.context_window)

    def _model(self) -> str:
        """The model named in the hint to start the server."""
        return self.spec.models[0] if self.spec.models else self.settings.default_model

    # ---- what the pool reports ------------------------------------------------------------------

    def state(self, *, private: bool) -> dict[str, Any]:
        """Plain data for /health and later /metrics; `private` adds URL and models."""
        state: dict[str, Any] = {
            "kind": self.profile.name,
            "up": self.up,
            "in_flight": self.in_flight,
            "max_concurrency": self.limit,
            "requests": self.requests,
            "errors": self.errors,
            "failovers": self.failovers,
        }
        if private:
            identity = self.identity
            models = list(self.spec.models or (self.settings.default_model,))
            configured = self.settings.context_window
            state["url"] = self.url
            state["models"] = models
            state["server_models"] = list(identity.models) if identity else []
            windows = self.context.known_windows()
            state["windows"] = dict.fromkeys(models, configured) if configured else windows
            state["weight"] = self.spec.weight
            state["last_error"] = self.last_error or None
        return state
