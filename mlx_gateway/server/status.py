"""The live status page (`/status`, a static file that polls `/status.json`), `/status.json`
itself and `/metrics`.

The figures come from two places: the backends' own state (`BackendStates`, plain data in the
shape the backend pool reports: `{"status", "queued", "backends": [{"url", "kind", "up",
"in_flight", "models", "windows", "last_error", ...}]}`) and the requests the gateway answered
(`StatusBoard`, the last few kept in memory, without any prompt text).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol

from mlx_gateway import __version__
from mlx_gateway.server.metrics import CONTENT_TYPE, Metrics
from mlx_gateway.server.observe import RequestRecord
from mlx_gateway.server.rsgi import EventStream, Reply, Request, json_reply

RECENT = 20
WINDOW_SECONDS = 60.0
MAX_ERROR_CHARS = 300
HTML_HEADERS = [("content-type", "text/html; charset=utf-8"), ("cache-control", "no-cache")]
METRICS_HEADERS = [("content-type", CONTENT_TYPE)]


class BackendStates(Protocol):
    """What the status page and /metrics need from the backends."""

    def state(self, *, private: bool = False) -> dict[str, Any]: ...


def _error_entry(record: RequestRecord) -> dict[str, Any]:
    return {
        "time": record.finished,
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "type": record.error,
        "message": record.error_message[:MAX_ERROR_CHARS],
    }


def _request_entry(record: RequestRecord) -> dict[str, Any]:
    ttft = record.ttft
    return {
        "time": record.finished,
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
        "error": record.error or None,
    }


class StatusBoard:
    """The requests this process answered: totals, the last minute, the last few."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started = clock()
        self.recent: deque[RequestRecord] = deque(maxlen=200)
        self.errors: deque[RequestRecord] = deque(maxlen=RECENT)
        self.totals = {"requests": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0}
        self.totals["cached_tokens"] = 0

    def note(self, record: RequestRecord) -> None:
        if record.quiet:
            return
        totals = self.totals
        totals["requests"] += 1
        self.recent.append(record)
        if record.status >= 400 or record.error:
            totals["errors"] += 1
            self.errors.append(record)
        totals["input_tokens"] += record.input_tokens or 0
        totals["output_tokens"] += record.output_tokens or 0
        totals["cached_tokens"] += record.cached_tokens or 0

    def summary(self) -> dict[str, Any]:
        since = self.clock() - WINDOW_SECONDS
        minute = [record for record in self.recent if record.finished >= since]
        totals = self.totals
        return {
            "uptime_s": round(self.clock() - self.started, 1),
            "totals": dict(totals),
            "cache_reuse": _ratio(totals["cached_tokens"], totals["input_tokens"]),
            "last_minute": _minute_figures(minute),
            "recent": [_request_entry(record) for record in reversed(self.recent)][:RECENT],
            "errors": [_error_entry(record) for record in reversed(self.errors)],
        }


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 3) if whole else None


def _minute_figures(records: list[RequestRecord]) -> dict[str, Any]:
    """Output tokens per second of generation (time after the first piece), the mean TTFT, and
    what share of the prompts the server's cache served."""
    generated = sum(record.output_tokens or 0 for record in records)
    generating = sum(
        record.took - (record.ttft or 0.0) for record in records if record.output_tokens
    )
    ttfts = [ttft for record in records if (ttft := record.ttft) is not None]
    prompt = sum(record.input_tokens or 0 for record in records)
    cached = sum(record.cached_tokens or 0 for record in records)
    return {
        "requests": len(records),
        "output_tokens": generated,
        "tokens_per_s": round(generated / generating, 1) if generating > 0 else None,
        "ttft_ms": round(sum(ttfts) / len(ttfts) * 1000, 1) if ttfts else None,
        "cache_reuse": _ratio(cached, prompt),
    }


class StatusRoutes:
    """`/status`, `/status.json` and `/metrics`."""

    def __init__(
        self,
        backends: BackendStates,
        board: StatusBoard,
        metrics: Metrics,
        in_flight: Callable[[], int],
    ) -> None:
        self.backends = backends
        self.board = board
        self.metrics = metrics
        self.in_flight = in_flight
        self.page = resources.files("mlx_gateway.server").joinpath("status.html").read_bytes()

    async def status_page(self, _: Request) -> Reply | EventStream:
        return Reply(self.page, 200, HTML_HEADERS)

    async def status_json(self, _: Request) -> Reply | EventStream:
        states = self.backends.state(private=True)
        summary = self.board.summary()
        summary.update(
            service="mlx-gateway",
            version=__version__,
            pid=os.getpid(),
            status=states.get("status"),
            in_flight=self.in_flight(),
            queued=states.get("queued", 0),
            backends=states.get("backends", []),
        )
        return json_reply(summary)

    async def metrics_text(self, _: Request) -> Reply | EventStream:
        return Reply(self.metrics.scrape(), 200, METRICS_HEADERS)
