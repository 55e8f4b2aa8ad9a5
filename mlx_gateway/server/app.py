"""The app: the route table, the small routes (models, health), and errors rendered in the
caller's protocol."""

from __future__ import annotations

import asyncio
import logging
import math
import time

import msgspec

from mlx_gateway import limits
from mlx_gateway.backends.upstream import HOP_HEADER
from mlx_gateway.config import Config
from mlx_gateway.errors import GatewayError, anthropic_error_body, openai_error_body
from mlx_gateway.responses.models import models_list
from mlx_gateway.server.chat import ChatRoutes
from mlx_gateway.server.messages import MessagesRoutes
from mlx_gateway.server.responses import ResponsesRoutes
from mlx_gateway.server.rsgi import (
    JSON_HEADERS,
    BodyLimits,
    ConnectionLimits,
    EventStream,
    Handler,
    Reply,
    Request,
    RSGIApp,
    json_reply,
)
from mlx_gateway.server.state import GatewayState
from mlx_gateway.server.status import StatusRoutes
from mlx_gateway.startup import report_backend
from mlx_gateway.textlog import log_failure

log = logging.getLogger("mlx_gateway")

_json = msgspec.json.Encoder()
_WINDOW_WAIT = 5.0  # seconds a model listing waits for a context window to be discovered


class InfoRoutes:
    """What the gateway serves and whether it is up."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state

    async def models(self, _: Request) -> Reply | EventStream:
        """The OpenAI list, and Codex's catalog of the same models (responses/models.py)."""
        router = self.state.router
        served, aliases = router.served_models(), router.alias_names()
        backend_models = served + [router.resolve(alias) for alias in aliases]
        windows = [await self._window(model) for model in backend_models]
        return json_reply(models_list(served + aliases, windows, int(time.time())))

    async def _window(self, model: str) -> int | None:
        """The model's window if it can be known soon: a listing must not wait on a backend
        that does not answer (discovery is retried by the next request that needs it)."""
        try:
            backend = self.state.pool.pick(model, lambda: model)
            return await asyncio.wait_for(backend.context.window(model), _WINDOW_WAIT)
        except TimeoutError:
            return None

    async def health(self, request: Request) -> Reply | EventStream:
        """`ok` (every backend up), `degraded` (some) or `down` (none), with each backend's
        state; backend URLs and models only for clients on this machine or with a key
        (guard.py). Also what
        `mlx-gateway code` reads to decide whether this gateway is the one asked for (backend
        and model) and which window to give Claude Code."""
        private = self.state.guard.may_see_details(request)
        state = self.state.pool.state(private=private)
        state["service"] = "mlx-gateway"
        if private:
            config = self.state.config
            primary = self.state.pool.backends[0]
            state["backend"] = primary.url
            state["model"] = config.mlx_model
            state["context_window"] = primary.context.known_window(config.mlx_model)
        return json_reply(state)


_OPENAI_PATHS = ("/v1/chat", "/v1/models", "/v1/completions", "/v1/embeddings", "/v1/responses")


def speaks_anthropic(request: Request) -> bool:
    """Errors go out in the caller's protocol: the path says it, else Anthropic's headers do."""
    path = request.path
    if path.startswith("/v1/messages"):
        return True
    if path.startswith(_OPENAI_PATHS):
        return False
    return "anthropic-version" in request.headers or "x-api-key" in request.headers


def error_reply(request: Request, error: GatewayError) -> Reply:
    level = logging.WARNING if error.status >= 500 and error.status != 529 else logging.INFO
    if error.quiet:
        level = logging.DEBUG
    log_failure(level, f"{request.method} {request.path} -> {error.status}", error)
    anthropic = speaks_anthropic(request)
    body = anthropic_error_body(error) if anthropic else openai_error_body(error)
    headers = [*JSON_HEADERS, ("x-should-retry", "true" if error.retryable else "false")]
    if error.retry_after is not None:
        headers.append(("retry-after", str(max(1, math.ceil(error.retry_after)))))
    return Reply(_json.encode(body), error.status_for(anthropic), headers)


def create_app(config: Config, *, report: bool = True) -> RSGIApp:
    """Builds the app; the backend pool is opened when serving starts and closed when it ends.
    `report`: log the backend's state once serving has begun (one process of `--workers` does)."""
    state = GatewayState(config)
    messages, chat, info = MessagesRoutes(state), ChatRoutes(state), InfoRoutes(state)
    responses = ResponsesRoutes(state)
    status = StatusRoutes(
        state.backends, state.board, state.metrics, lambda: state.observer.in_flight
    )
    chat_route: dict[str, Handler] = {"POST": chat.chat_completions}
    routes: dict[str, dict[str, Handler]] = {
        "/v1/messages": {"POST": messages.messages},
        "/v1/messages/count_tokens": {"POST": messages.count_tokens},
        "/v1/chat/completions": chat_route,
        "/chat/completions": chat_route,
        "/v1/responses": {"POST": responses.responses},
        "/v1/models": {"GET": info.models, "HEAD": info.models},
        "/health": {"GET": info.health, "HEAD": info.health},
        "/status": {"GET": status.status_page},
        "/status.json": {"GET": status.status_json},
        "/metrics": {"GET": status.metrics_text},
    }
    return RSGIApp(
        routes,
        error_reply,
        state.guard,
        BodyLimits(int(config.max_body_mb * 1024 * 1024), config.body_timeout),
        on_start=lambda: _start(state, report),
        on_stop=lambda: _stop(state),
        observer=state.observer,
        loop_header=HOP_HEADER,
    )


async def _start(state: GatewayState, report: bool) -> None:
    await state.start()
    if report:
        primary = state.pool.backends[0]
        probe = report_backend(state.config, primary.upstream, primary.context)
        state.background.add(asyncio.create_task(probe))


async def _stop(state: GatewayState) -> None:
    for task in state.background:
        task.cancel()
    await asyncio.gather(*state.background, return_exceptions=True)
    await state.close()


def connection_limits(config: Config) -> ConnectionLimits:
    return ConnectionLimits(
        header_timeout=config.header_timeout,
        max_connections=config.max_connections,
        max_header_bytes=limits.MAX_HEADER_BYTES,
        max_streams=limits.MAX_STREAMS_PER_CONNECTION,
    )
