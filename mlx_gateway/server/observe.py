"""What the gateway notes about each request, and where the notes go when it ends: the access
log, the metrics tally and the status page's recent lists.

A `RequestRecord` is made when a request arrives and filled by the route as it learns things
(models, backend, usage, the first piece of the answer). It holds no prompt text, ever. Ending
it costs a few dict updates and one log call; everything heavier (rendering /metrics, the
status page's figures) happens when someone asks for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from mlx_gateway.errors import BackendUnavailable, GatewayError

access_log = logging.getLogger("mlx_gateway.access")

# Routes that watch the gateway: logged at debug only, left out of the status page's lists, so a
# status page polling every second or a health check does not drown what clients did.
QUIET_ROUTES = frozenset({"/health", "/metrics", "/status", "/status.json"})
CLIENT_GONE = 499  # nginx's figure for "the client closed the connection first"

Listener = Callable[["RequestRecord"], None]


class RequestRecord:
    """One request as the gateway saw it. Times are `time.perf_counter()` seconds."""

    __slots__ = (
        "backend",
        "backend_model",
        "cached_tokens",
        "error",
        "error_message",
        "finished",
        "first_piece",
        "input_tokens",
        "method",
        "model",
        "output_tokens",
        "path",
        "quiet",
        "route",
        "started",
        "status",
        "took",
        "unreachable",
    )

    def __init__(self, method: str, path: str) -> None:
        self.method = method
        self.path = path
        self.route = "other"  # the matched route; unknown paths share one label
        self.quiet = path in QUIET_ROUTES
        self.started = time.perf_counter()
        self.model = ""  # what the client asked for
        self.backend_model = ""
        self.backend = ""
        self.status = 0
        self.input_tokens: int | None = None  # the whole prompt, cached part included
        self.output_tokens: int | None = None
        self.cached_tokens: int | None = None
        self.first_piece: float | None = None
        self.took = 0.0
        self.finished = 0.0  # wall-clock time of the end, for people
        # The error's kind and message, not the exception: its traceback would keep the
        # request's frames (and its body) alive for as long as the record is remembered.
        self.error = ""
        self.error_message = ""
        self.unreachable = False

    def failed(self, error: GatewayError) -> None:
        self.error, self.error_message = type(error).__name__, error.message
        self.unreachable = isinstance(error, BackendUnavailable)

    def routed(self, model: str, backend_model: str, backend: str) -> None:
        self.model, self.backend_model, self.backend = model, backend_model, backend

    def usage(self, prompt: int | None, completion: int | None, cached: int | None) -> None:
        self.input_tokens, self.output_tokens, self.cached_tokens = prompt, completion, cached

    def anthropic_usage(self, usage: Any) -> None:
        """Anthropic counts cached prompt tokens apart from `input_tokens`."""
        if not isinstance(usage, dict):
            return
        cached = usage.get("cache_read_input_tokens")
        prompt = usage.get("input_tokens")
        if isinstance(prompt, int) and isinstance(cached, int):
            prompt += cached
        self.usage(prompt, usage.get("output_tokens"), cached)

    @property
    def ttft(self) -> float | None:
        """Seconds to the backend's first streamed piece: the prompt's processing, mostly."""
        return None if self.first_piece is None else self.first_piece - self.started

    def timed(self, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return _TimedPieces(pieces, self)


class _TimedPieces:
    """A backend stream's pieces, noting when the first one came."""

    __slots__ = ("_pieces", "_record")

    def __init__(self, pieces: AsyncIterator[bytes], record: RequestRecord) -> None:
        self._pieces = pieces
        self._record = record

    def __aiter__(self) -> _TimedPieces:
        return self

    async def __anext__(self) -> bytes:
        piece = await self._pieces.__anext__()
        if self._record.first_piece is None:
            self._record.first_piece = time.perf_counter()
        return piece


class Observer:
    """Hands each ended request to the access log and to every listener (metrics, status page,
    the backend's health as the requests show it)."""

    def __init__(self) -> None:
        self.listeners: list[Listener] = []
        self.in_flight = 0

    def begin(self, method: str, path: str) -> RequestRecord:
        record = RequestRecord(method, path)
        if not record.quiet:
            self.in_flight += 1
        return record

    def end(self, record: RequestRecord) -> None:
        if not record.quiet:
            self.in_flight -= 1
        record.took = time.perf_counter() - record.started
        record.finished = time.time()
        level = logging.DEBUG if record.quiet else logging.INFO
        if access_log.isEnabledFor(level):
            access_log.log(level, "%s", AccessEntry(record))
        for listener in self.listeners:
            listener(record)


# ---- the access line ---------------------------------------------------------------------------


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}ms"


def access_fields(record: RequestRecord) -> dict[str, Any]:
    """The line as data: what `--log-format json` writes."""
    ttft = record.ttft
    fields: dict[str, Any] = {
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "model": record.model or None,
        "backend_model": record.backend_model or None,
        "backend": record.backend or None,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cached_tokens": record.cached_tokens,
        "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
        "duration_ms": round(record.took * 1000, 1),
    }
    if record.error:
        fields["error"] = record.error
    return fields


class AccessEntry:
    """Rendered as text by `str()`; the JSON formatter reads `fields` instead."""

    __slots__ = ("record",)

    def __init__(self, record: RequestRecord) -> None:
        self.record = record

    @property
    def fields(self) -> dict[str, Any]:
        return access_fields(self.record)

    def __str__(self) -> str:
        record = self.record
        line = f"{record.method} {record.path} {record.status}"
        if record.backend:
            line += f" {record.model or '-'} -> {record.backend_model} @ {record.backend}"
        if record.input_tokens is not None or record.output_tokens is not None:
            line += (
                f" in={_count(record.input_tokens)} out={_count(record.output_tokens)}"
                f" cached={_count(record.cached_tokens)}"
            )
        if record.first_piece is not None:
            line += f" ttft={_ms(record.ttft)}"
        line += f" {_ms(record.took)}"
        if record.error:
            line += f" ({record.error})"
        return line
