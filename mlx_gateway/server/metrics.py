"""`GET /metrics`: Prometheus text from prometheus_client, fed by a tally kept in plain Python.

Why a tally of our own rather than prometheus_client's metric objects on the hot path: each of
their updates takes a lock, and in multiprocess mode writes an mmap'd file; the eight updates a
request needs measured 20-30 microseconds. Here a request costs a few dict increments and two
`bisect` calls, and prometheus_client renders the families only when someone scrapes.

With `--workers`, each worker writes its tally to a file of its own in a directory the workers
share (named after their parent and port), at most once a second and when it stops; whichever
worker a scrape reaches adds them all up. Counters of a worker that died are kept, as
prometheus_client's own multiprocess mode keeps them; its gauges (in flight, queued) are not.
The directory goes when the last worker leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from mlx_gateway.server.observe import RequestRecord

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TOKEN_KINDS = ("input", "output", "cached")
FLUSH_EVERY = 1.0
CONTENT_TYPE = CONTENT_TYPE_LATEST

Labels = tuple[str, ...]
BackendStates = Callable[[], dict[str, Any]]


class Histogram(msgspec.Struct):
    """Per-bucket counts (not cumulative) and the sum, for one label set."""

    counts: list[int]
    total: float = 0.0

    def observe(self, bounds: tuple[float, ...], value: float) -> None:
        self.counts[bisect_left(bounds, value)] += 1
        self.total += value

    def add(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total


class Tally(msgspec.Struct):
    """What one process counted. Keys are label values joined by a tab, so the tally encodes to
    JSON as is (tabs cannot appear in a route, a status or a URL)."""

    requests: dict[str, int] = msgspec.field(default_factory=dict)  # route, status, backend
    tokens: dict[str, int] = msgspec.field(default_factory=dict)  # kind, backend
    ttft: dict[str, Histogram] = msgspec.field(default_factory=dict)  # route
    duration: dict[str, Histogram] = msgspec.field(default_factory=dict)  # route
    in_flight: int = 0
    queued: int = 0

    def count(self, record: RequestRecord) -> None:
        key = f"{record.route}\t{record.status}\t{record.backend}"
        self.requests[key] = self.requests.get(key, 0) + 1
        if record.quiet:
            return
        _histogram(self.duration, record.route, DURATION_BUCKETS).observe(
            DURATION_BUCKETS, record.took
        )
        ttft = record.ttft
        if ttft is not None:
            _histogram(self.ttft, record.route, TTFT_BUCKETS).observe(TTFT_BUCKETS, ttft)
        tokens = (record.input_tokens, record.output_tokens, record.cached_tokens)
        for kind, value in zip(TOKEN_KINDS, tokens, strict=True):
            if value:
                key = f"{kind}\t{record.backend}"
                self.tokens[key] = self.tokens.get(key, 0) + value

    def add(self, other: Tally, live: bool) -> None:
        for mine, theirs in ((self.requests, other.requests), (self.tokens, other.tokens)):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        for histograms, bounds, more in (
            (self.ttft, TTFT_BUCKETS, other.ttft),
            (self.duration, DURATION_BUCKETS, other.duration),
        ):
            for route, histogram in more.items():
                _histogram(histograms, route, bounds).add(histogram)
        if live:
            self.in_flight += other.in_flight
            self.queued += other.queued


def _histogram(table: dict[str, Histogram], key: str, bounds: tuple[float, ...]) -> Histogram:
    histogram = table.get(key)
    if histogram is None:
        histogram = table[key] = Histogram([0] * (len(bounds) + 1))
    return histogram


# ---- rendering ---------------------------------------------------------------------------------


def _labels(key: str) -> list[str]:
    return key.split("\t")


def _histogram_family(
    name: str, doc: str, table: dict[str, Histogram], bounds: tuple[float, ...]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["route"])
    for route, histogram in sorted(table.items()):
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, bounds), "+Inf"], histogram.counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        family.add_metric([route], buckets, histogram.total)
    return family


def families(tally: Tally, backends: dict[str, Any]) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "mlx_gateway_requests", "Requests answered", labels=["route", "status", "backend"]
    )
    for key, value in sorted(tally.requests.items()):
        requests.add_metric(_labels(key), value)
    yield requests
    tokens = CounterMetricFamily(
        "mlx_gateway_tokens",
        "Tokens the backends reported: input is the whole prompt, cached the part read from "
        "the server's prompt cache",
        labels=["kind", "backend"],
    )
    for key, value in sorted(tally.tokens.items()):
        tokens.add_metric(_labels(key), value)
    yield tokens
    yield _histogram_family(
        "mlx_gateway_ttft_seconds",
        "Seconds from a request to the backend's first streamed piece",
        tally.ttft,
        TTFT_BUCKETS,
    )
    yield _histogram_family(
        "mlx_gateway_request_duration_seconds",
        "Seconds from a request to the end of its answer",
        tally.duration,
        DURATION_BUCKETS,
    )
    yield GaugeMetricFamily(
        "mlx_gateway_in_flight", "Requests being answered", value=tally.in_flight
    )
    yield GaugeMetricFamily(
        "mlx_gateway_queue_depth", "Requests waiting for a backend", value=tally.queued
    )
    up = GaugeMetricFamily(
        "mlx_gateway_backend_up",
        "1 when the backend answers, 0 when it is down (absent while not yet known)",
        labels=["backend", "kind"],
    )
    for backend in backends.get("backends", []):
        if backend.get("up") is not None:
            up.add_metric(
                [str(backend.get("url", "")), str(backend.get("kind", ""))], backend["up"]
            )
    yield up


class _Families(Collector):
    def __init__(self, tally: Tally, backends: dict[str, Any]) -> None:
        self._tally = tally
        self._backends = backends

    def collect(self) -> Iterator[Metric]:
        return families(self._tally, self._backends)


def render(tally: Tally, backends: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(tally, backends))
    return generate_latest(registry)


# ---- one process or several --------------------------------------------------------------------


def shared_dir(port: int) -> Path:
    """Where the workers of one gateway meet: named after their parent and the port."""
    return Path(tempfile.gettempdir()) / f"mlx-gateway-metrics-{os.getppid()}-{port}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Metrics:
    """The tally of this process, and the sum over workers when there are several."""

    def __init__(
        self, backends: BackendStates, in_flight: Callable[[], int], folder: Path | None = None
    ) -> None:
        self.tally = Tally()
        self.backends = backends
        self.in_flight = in_flight
        self.folder = folder
        self._pid = os.getpid()
        self._timer: asyncio.TimerHandle | None = None
        self._decode = msgspec.json.Decoder(Tally).decode

    def note(self, record: RequestRecord) -> None:
        self.tally.count(record)

    def scrape(self) -> bytes:
        states = self._gauges()
        if self.folder is None:
            return render(self.tally, states)
        self._write()
        return render(self._summed(), states)

    async def start(self) -> None:
        if self.folder is not None:
            self.folder.mkdir(mode=0o700, exist_ok=True)
            self._tick()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.folder is not None:
            self._file(self._pid).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # other workers' files are still there
                self.folder.rmdir()

    def _gauges(self) -> dict[str, Any]:
        states = self.backends()
        self.tally.in_flight = self.in_flight()
        self.tally.queued = int(states.get("queued", 0))
        return states

    def _tick(self) -> None:
        self._gauges()
        self._write()
        self._timer = asyncio.get_running_loop().call_later(FLUSH_EVERY, self._tick)

    def _file(self, pid: int) -> Path:
        assert self.folder is not None
        return self.folder / f"worker-{pid}.json"

    def _write(self) -> None:
        target = self._file(self._pid)
        partial = target.with_suffix(".part")
        with contextlib.suppress(OSError):
            partial.write_bytes(msgspec.json.encode(self.tally))
            os.replace(partial, target)

    def _summed(self) -> Tally:
        assert self.folder is not None
        total = Tally()
        for path in self.folder.glob("worker-*.json"):
            pid = int(path.stem.removeprefix("worker-"))
            with contextlib.suppress(OSError, msgspec.DecodeError, ValueError):
                total.add(self._decode(path.read_bytes()), live=_alive(pid))
        return total
