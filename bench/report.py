"""Results: one row per (scenario, concurrency, target), printed as tables and saved as JSON.

Every gateway or peer figure is shown next to the direct path's figure from the same run and as
a ratio to it; absolute numbers move with the machine, the ratios much less.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

DIRECT = "direct"
# Begins the names of stream scenarios whose backend writes each token on its own (bench/run.py).
PACED = "paced "


@dataclass(frozen=True, slots=True)
class HttpRow:
    scenario: str
    concurrency: int
    target: str
    requests: int
    errors: int
    seconds: float
    requests_per_second: float  # good responses only
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float  # of the target process (for direct: the fake backend)
    peak_rss_mib: float


@dataclass(frozen=True, slots=True)
class StreamRow:
    scenario: str
    concurrency: int
    target: str
    streams: int
    errors: int
    seconds: float
    chunks_per_second: float  # tokens of properly ended streams, all streams together
    first_event_p50_ms: float
    first_event_p99_ms: float
    first_token_p50_ms: float
    cpu_ms_per_stream: float
    peak_rss_mib: float


Row = TypeVar("Row", HttpRow, StreamRow)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; 0 for no values (a scenario whose every stream failed)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(round(pct / 100 * len(ordered) + 0.5) - 1, 0)
    return ordered[min(rank, len(ordered) - 1)]


def _ratio(value: float, base: float) -> float:
    return value / base if base else 0.0


def _direct_for(rows: Sequence[Row], row: Row) -> Row | None:
    for other in rows:
        if (other.scenario, other.concurrency, other.target) == (
            row.scenario,
            row.concurrency,
            DIRECT,
        ):
            return other
    return None


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines, strict=True)]

    def render(cells: Sequence[str]) -> str:
        # First column left-aligned (names), the rest right-aligned (numbers).
        first, *rest = cells
        parts = [first.ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "-" * len(render(header))
    return "\n".join([render(header), rule, *(render(line) for line in lines)])


def http_table(rows: Sequence[HttpRow]) -> str:
    header = (
        "scenario", "c", "target", "req/s", "direct req/s", "ratio",
        "p50 ms (x direct)", "p99 ms (x direct)", "CPU ms/req", "RSS MiB", "errors",
    )  # fmt: skip
    lines = []
    for row in rows:
        if row.target == DIRECT:
            continue
        direct = _direct_for(rows, row)
        base = direct or row
        lines.append(
            (
                row.scenario,
                str(row.concurrency),
                row.target,
                f"{row.requests_per_second:.1f}",
                f"{base.requests_per_second:.1f}",
                f"{_ratio(row.requests_per_second, base.requests_per_second):.3f}",
                f"{row.p50_ms:.3f} ({_ratio(row.p50_ms, base.p50_ms):.1f}x)",
                f"{row.p99_ms:.3f} ({_ratio(row.p99_ms, base.p99_ms):.1f}x)",
                f"{row.cpu_ms_per_request:.3f}",
                f"{row.peak_rss_mib:.1f}",
                # Errors of both runs the row compares: either makes the ratio meaningless.
                str(row.errors + (direct.errors if direct else 0)),
            )
        )
    return _table(header, lines)


def stream_table(rows: Sequence[StreamRow]) -> str:
    header = (
        "scenario", "c", "target", "chunks/s", "direct chunks/s", "ratio",
        "1st event p50 ms (+direct)", "1st event p99 ms", "CPU ms/stream", "RSS MiB", "errors",
    )  # fmt: skip
    lines = []
    for row in rows:
        if row.target == DIRECT:
            continue
        direct = _direct_for(rows, row)
        base = direct or row
        added = row.first_event_p50_ms - base.first_event_p50_ms
        lines.append(
            (
                row.scenario,
                str(row.concurrency),
                row.target,
                f"{row.chunks_per_second:.0f}",
                f"{base.chunks_per_second:.0f}",
                f"{_ratio(row.chunks_per_second, base.chunks_per_second):.3f}",
                f"{row.first_event_p50_ms:.3f} ({added:+.3f})",
                f"{row.first_event_p99_ms:.3f}",
                f"{row.cpu_ms_per_stream:.2f}",
                f"{row.peak_rss_mib:.1f}",
                str(row.errors + (direct.errors if direct else 0)),
            )
        )
    return _table(header, lines)


def direct_table(http: Sequence[HttpRow], streams: Sequence[StreamRow]) -> str:
    """The direct path's own figures, so the headroom of the fake backend can be checked."""
    header = ("direct path (client -> fake backend)", "c", "rate", "p50 ms", "p99 ms", "errors")
    lines: list[tuple[str, ...]] = [
        (
            row.scenario,
            str(row.concurrency),
            f"{row.requests_per_second:.1f} req/s",
            f"{row.p50_ms:.3f}",
            f"{row.p99_ms:.3f}",
            str(row.errors),
        )
        for row in http
        if row.target == DIRECT
    ]
    lines += [
        (
            row.scenario,
            str(row.concurrency),
            f"{row.chunks_per_second:.0f} chunks/s",
            f"{row.first_event_p50_ms:.3f}",
            f"{row.first_event_p99_ms:.3f}",
            str(row.errors),
        )
        for row in streams
        if row.target == DIRECT
    ]
    return _table(header, lines)


def headroom_notes(http: Sequence[HttpRow], streams: Sequence[StreamRow]) -> list[str]:
    """Where the direct path is not 10x the target, the ratio is capped by the fake backend and
    the load tool rather than showing the target's own ceiling; say so."""
    notes = []
    pairs: list[tuple[str, int, str, float, float]] = []
    for row in http:
        direct = _direct_for(http, row)
        if row.target != DIRECT and direct is not None:
            pairs.append(
                (row.scenario, row.concurrency, row.target,
                 row.requests_per_second, direct.requests_per_second)
            )  # fmt: skip
    for srow in streams:
        sdirect = _direct_for(streams, srow)
        if srow.scenario.startswith(PACED):
            continue  # bounded by the load side by design: one note for them all, below
        if srow.target != DIRECT and sdirect is not None:
            pairs.append(
                (srow.scenario, srow.concurrency, srow.target,
                 srow.chunks_per_second, sdirect.chunks_per_second)
            )  # fmt: skip
    for scenario, concurrency, target, rate, direct_rate in pairs:
        if rate and direct_rate < 10 * rate:
            notes.append(
                f"note: {scenario} c={concurrency}: direct is only {direct_rate / rate:.1f}x "
                f"{target}, so this ratio is partly bounded by the fake backend and load tool"
            )
    if any(row.scenario.startswith(PACED) for row in streams):
        notes.append(
            "note: paced rows: the backend writes each token on its own and the direct client "
            "pays a read per token, so the load side bounds both paths; a ratio above 1 means "
            "the client got its tokens faster through the target (fewer, larger writes)"
        )
    return notes


def total_errors(http: Sequence[HttpRow], streams: Sequence[StreamRow]) -> int:
    return sum(row.errors for row in http) + sum(row.errors for row in streams)


def save_json(
    path: Path, meta: dict[str, Any], http: Sequence[HttpRow], streams: Sequence[StreamRow]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        **meta,
        "http": [dataclasses.asdict(row) for row in http],
        "streams": [dataclasses.asdict(row) for row in streams],
        "errors": total_errors(http, streams),
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
