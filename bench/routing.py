"""Routing and overload rows: `python -m bench --routing`.

Routing: the small /v1/messages through a gateway over 1, 2 and 4 fake backends, each row the
gateway's req/s and CPU ms per request; the difference to the one-backend row is what choosing
among backends costs (the conversation's key, the rendezvous order, admission).

Overload: a gateway over one backend that takes `DELAY` seconds per answer, `--max-concurrency`
`LIMIT` and `--queue-size` `QUEUE`, driven by more clients than fit. What is admitted is served
in about the backend's time plus its wait in the queue; the rest is shed at once with 529 and
`retry-after`, and nothing else (no 5xx, no socket error) may appear.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench import payloads, services
from bench.report import HttpRow
from bench.wrk import run_wrk, write_script

ANTHROPIC_MESSAGE = '"type":%s*"message"'
DELAY = 0.05
LIMIT = 4
QUEUE = 8
CLIENTS = 32


def routing_rows(
    workdir: Path, plan: services.CorePlan, seconds: int, concurrency: int
) -> list[HttpRow]:
    rows = []
    body = payloads.small(stream=False).client
    for count in (1, 2, 4):
        with ExitStack() as stack:
            fakes = [
                stack.enter_context(services.fake_backend(workdir, 1, 0, name=f"fake-{count}-{n}"))
                for n in range(count)
            ]
            extra = [arg for fake in fakes[1:] for arg in ("--mlx-url", fake.url)]
            gateway = stack.enter_context(
                services.gateway(workdir, fakes[0].url, plan.gateway, *extra, name=f"gw-{count}")
            )
            rows.append(_measure(workdir, gateway, body, count, seconds=seconds, c=concurrency))
    return rows


def _measure(
    workdir: Path, gateway: services.Service, body: bytes, count: int, *, seconds: int, c: int
) -> HttpRow:
    from bench import procfs

    name = f"routing-{count}-c{c}"
    script = write_script(workdir, name, body, ANTHROPIC_MESSAGE)
    url = gateway.url + "/v1/messages"
    warm = run_wrk(url, script, connections=c, seconds=1)
    meter = procfs.CpuMeter(gateway.pid)
    meter.start()
    result = run_wrk(url, script, connections=c, seconds=seconds)
    cpu_ms = meter.stop() * 1000
    row = HttpRow(
        scenario=f"small /v1/messages over {count} backend{'s' if count > 1 else ''}",
        concurrency=c,
        target="gateway",
        requests=result.requests,
        errors=result.errors + warm.errors,
        seconds=round(result.duration_s, 3),
        requests_per_second=round(result.ok_per_second, 1),
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        cpu_ms_per_request=round(cpu_ms / max(result.requests, 1), 4),
        peak_rss_mib=round(procfs.peak_rss_mib(gateway.pid), 1),
    )
    print(f"  .. {row.scenario} c={c}: {row.requests_per_second:.0f} req/s", file=sys.stderr)
    return row


# ---- overload ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Overload:
    clients: int
    admitted: int
    shed: int
    other: int  # anything but 200 and 529: must stay 0
    admitted_p50_ms: float
    admitted_p99_ms: float
    shed_p50_ms: float
    retry_after: str


async def _slow_backend(delay: float) -> tuple[web.AppRunner, str]:
    answer = {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }

    async def chat(_: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.json_response(answer)

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = services.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def _load(url: str, seconds: float) -> Overload:
    body = payloads.small(stream=False).client
    admitted: list[float] = []
    shed: list[float] = []
    other: list[int] = []
    retry_after: set[str] = set()
    deadline = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        for _ in range(10_000):  # bounded whatever the speed
            if time.monotonic() >= deadline:
                return
            started = time.perf_counter()
            async with session.post(url, data=body, headers=_JSON) as response:
                await response.read()
                took = (time.perf_counter() - started) * 1000
                if response.status == 200:
                    admitted.append(took)
                elif response.status == 529:
                    shed.append(took)
                    retry_after.add(response.headers.get("retry-after", "missing"))
                    await asyncio.sleep(0.01)  # a polite client; Claude Code waits far longer
                else:
                    other.append(response.status)

    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(CLIENTS)))
    return Overload(
        clients=CLIENTS,
        admitted=len(admitted),
        shed=len(shed),
        other=len(other),
        admitted_p50_ms=round(statistics.median(admitted), 1) if admitted else 0.0,
        admitted_p99_ms=round(_p99(admitted), 1),
        shed_p50_ms=round(statistics.median(shed), 2) if shed else 0.0,
        retry_after=",".join(sorted(retry_after)),
    )


_JSON = {"content-type": "application/json"}


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def overload_row(workdir: Path, plan: services.CorePlan, seconds: float) -> Overload:
    async def scenario() -> Overload:
        runner, backend_url = await _slow_backend(DELAY)
        try:
            flags = ("--max-concurrency", str(LIMIT), "--queue-size", str(QUEUE))
            with services.gateway(workdir, backend_url, plan.gateway, *flags, name="gw-over") as gw:
                return await _load(gw.url + "/v1/messages", seconds)
        finally:
            await runner.cleanup()

    return asyncio.run(scenario())


def overload_table(row: Overload) -> str:
    served = f"{LIMIT} at once, {QUEUE} queued, backend {DELAY * 1000:.0f} ms per answer"
    floor = DELAY * 1000 * (1 + QUEUE / LIMIT)
    return "\n".join(
        [
            f"overload: {row.clients} clients on one backend ({served})",
            "| admitted | admitted p50 ms | admitted p99 ms | bound ms | shed 529 | shed p50 ms "
            "| retry-after | other statuses |",
            "|---|---|---|---|---|---|---|---|",
            f"| {row.admitted} | {row.admitted_p50_ms} | {row.admitted_p99_ms} | {floor:.0f} "
            f"| {row.shed} | {row.shed_p50_ms} | {row.retry_after} | {row.other} |",
        ]
    )


def report(rows: list[HttpRow]) -> str:
    base = rows[0].cpu_ms_per_request if rows else 0.0
    lines = [
        "| backends | c | req/s | p50 ms | CPU ms/req | vs 1 backend | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for count, row in zip((1, 2, 4), rows, strict=False):
        change = (row.cpu_ms_per_request / base - 1) * 100 if base else 0.0
        lines.append(
            f"| {count} | {row.concurrency} | {row.requests_per_second:,.0f} | {row.p50_ms} "
            f"| {row.cpu_ms_per_request} | {change:+.1f}% | {row.errors} |"
        )
    return "\n".join(lines)


def run(workdir: Path, plan: services.CorePlan, seconds: int, concurrency: int) -> dict[str, Any]:
    rows = routing_rows(workdir, plan, seconds, concurrency)
    print(report(rows))
    print()
    overload = overload_row(workdir, plan, float(seconds))
    print(overload_table(overload))
    return {"routing": rows, "overload": overload}
