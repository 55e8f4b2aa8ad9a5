"""`python -m bench --soak SECONDS`: the gateway under steady mixed load for a bounded time,
sampled once a second for resident memory and open descriptors.

A leak shows as a slope, not a level: the report gives the least-squares slope of RSS over the
run's second half (after warm-up allocations have settled) in MiB per minute, the descriptors
at start, at their peak and after the load stops and the idle limits have passed, and every
request that did not come back a good 200.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path

from bench import payloads, services
from bench.procfs import rss_mib

CONNECTIONS = 16
# Each connection sends these in turn; keep-alive, as real clients do.
_MIX = (
    ("/v1/messages", "small", b'"type":"message"'),
    ("/v1/chat/completions", "small", b'"object":"chat.completion"'),
    ("/v1/messages", "stream", b'"message_stop"'),
    ("/v1/chat/completions", "stream", b"data: [DONE]"),
    ("/v1/messages", "large", b'"type":"message"'),
)


@dataclass(slots=True)
class SoakReport:
    seconds: float
    requests: int = 0
    errors: int = 0
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MiB)
    descriptors: list[int] = field(default_factory=list)
    settled_descriptors: int = 0

    def rss_slope_per_minute(self) -> float:
        half = self.rss[len(self.rss) // 2 :]
        if len(half) < 2:
            return 0.0
        mean_t = sum(t for t, _ in half) / len(half)
        mean_m = sum(m for _, m in half) / len(half)
        spread = sum((t - mean_t) ** 2 for t, _ in half)
        slope = sum((t - mean_t) * (m - mean_m) for t, m in half) / spread if spread else 0.0
        return slope * 60

    def lines(self) -> list[str]:
        first, last = self.rss[0][1], self.rss[-1][1]
        peak = max(m for _, m in self.rss)
        return [
            f"soak: {self.seconds:.0f} s, {self.requests} requests, {self.errors} errors",
            f"rss: {first:.1f} -> {last:.1f} MiB (peak {peak:.1f}), "
            f"slope over the second half {self.rss_slope_per_minute():+.2f} MiB/min",
            f"open descriptors: start {self.descriptors[0]}, peak {max(self.descriptors)}, "
            f"after the load {self.settled_descriptors}",
        ]


def _bodies() -> dict[tuple[str, str], bytes]:
    small, stream, large = (
        payloads.small(stream=False),
        payloads.small(stream=True),
        payloads.large(),
    )
    exchanges = {"small": small, "stream": stream, "large": large}
    return {
        (path, kind): (ex.client if path == "/v1/messages" else ex.openai)
        for path, kind, _ in _MIX
        for name, ex in exchanges.items()
        if name == kind
    }


async def _connection(port: int, until: float, report: SoakReport) -> None:
    bodies = _bodies()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for path, kind, marker in cycle(_MIX):
            if time.monotonic() >= until:
                return
            body = bodies[(path, kind)]
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            answer = await _read_answer(reader)
            report.requests += 1
            if not (answer.startswith(b"HTTP/1.1 200") and marker in answer):
                report.errors += 1
    finally:
        writer.close()


async def _read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    if b"content-length:" in head.lower():
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        return head + await reader.readexactly(length)
    body = b""
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return head + body
        body += data[:-2]


async def _sample(pid: int, until: float, report: SoakReport) -> None:
    start = time.monotonic()
    while time.monotonic() < until:
        report.rss.append((time.monotonic() - start, rss_mib(pid)))
        report.descriptors.append(_descriptors(pid))
        await asyncio.sleep(1)


def _descriptors(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def _soak(port: int, pid: int, seconds: float) -> SoakReport:
    report = SoakReport(seconds)
    until = time.monotonic() + seconds
    load = [_connection(port, until, report) for _ in range(CONNECTIONS)]
    await asyncio.gather(_sample(pid, until, report), *load)
    return report


def run_soak(seconds: float, workdir: Path, plan: services.CorePlan) -> SoakReport:
    with (
        services.fake_backend(workdir, chunks=50, chunks_per_write=0) as fake,
        services.gateway(
            workdir, fake.url, plan.gateway, "--backend-idle-timeout", "2", "--header-timeout", "2"
        ) as gateway,
    ):
        port = int(gateway.url.rsplit(":", 1)[1])
        report = asyncio.run(_soak(port, gateway.pid, seconds))
        time.sleep(3)  # past both idle limits: what is still open is held for good
        report.settled_descriptors = _descriptors(gateway.pid)
    return report
