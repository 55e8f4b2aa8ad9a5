"""The benchmark: `python -m bench [--quick] [--peer litellm] [--profile]` (see bench/README.md).

One run starts the fake backend and the gateway (and any peers), measures every scenario on the
direct path (client -> fake backend) and through each target, prints the tables and writes the
same figures as JSON to bench/results/<timestamp>.json. The exit status is 1 when any response
failed its check, so a broken gateway cannot pass as a fast one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import payloads, peers, procfs, profiling, routing, services, soak
from bench.payloads import Exchange
from bench.report import (
    DIRECT,
    PACED,
    HttpRow,
    StreamRow,
    direct_table,
    headroom_notes,
    http_table,
    percentile,
    save_json,
    stream_table,
    total_errors,
)
from bench.streams import (
    ANTHROPIC_STREAM,
    OPENAI_STREAM,
    RESPONSES_STREAM,
    StreamLoad,
    StreamShape,
    run_streams,
)
from bench.wrk import WrkMissing, require_wrk, run_wrk, write_script

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Lua patterns for wrk's response check (see bench/wrk.py).
MESSAGES, CHAT, RESPONSES = "/v1/messages", "/v1/chat/completions", "/v1/responses"
# What a good answer contains, as a Lua pattern for wrk's response() hook.
ANSWER_PATTERNS = {
    MESSAGES: '"type":%s*"message"',
    CHAT: '"object":%s*"chat%.completion"',
    RESPONSES: '"object":%s*"response"',
}
STREAM_SHAPES = {MESSAGES: ANTHROPIC_STREAM, CHAT: OPENAI_STREAM, RESPONSES: RESPONSES_STREAM}


@dataclass(frozen=True, slots=True)
class Settings:
    seconds: int  # per measured wrk run (wrk takes whole seconds)
    warmup: int  # seconds of load before each measured run, not counted
    concurrencies: tuple[int, ...]
    stream_concurrencies: tuple[int, ...]
    stream_seconds: float
    max_streams: int  # per stream run, a bound whatever the speed
    chunks: int
    chunks_per_write: int  # how the fake backend sends a stream's tokens (0: all at once)
    paced: bool  # also stream with one token per backend write, as model servers send them
    peers: tuple[str, ...]
    profile: bool
    quick: bool
    only: tuple[str, ...]  # run only scenarios whose name contains one of these
    results_dir: Path
    routing: bool = False  # only the routing and overload rows (bench/routing.py)
    soak: float | None = None  # seconds of soak instead of the tables


FULL = Settings(
    seconds=10,
    warmup=2,
    concurrencies=(1, 32),
    stream_concurrencies=(1, 8),
    stream_seconds=6.0,
    max_streams=20_000,
    chunks=200,
    chunks_per_write=0,
    paced=True,
    peers=(),
    profile=False,
    quick=False,
    only=(),
    results_dir=RESULTS_DIR,
)
# Proves that everything runs and every response checks out, in a few seconds; not a speed test.
QUICK = replace(
    FULL,
    seconds=1,
    warmup=0,
    concurrencies=(4,),
    stream_concurrencies=(2,),
    stream_seconds=0.2,
    max_streams=6,
    quick=True,
)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    exchange: Exchange
    path: str  # where targets get the client's form; the direct path always gets chat
    per_write: int | None = None  # a stream's tokens per backend write; None: the run's setting


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    url: str
    pid: int

    @property
    def is_direct(self) -> bool:
        return self.name == DIRECT


def http_scenarios() -> list[Scenario]:
    small = payloads.small(stream=False)
    return [
        Scenario("small /v1/messages", small, MESSAGES),
        Scenario("large /v1/messages", payloads.large(), MESSAGES),
        Scenario("small /v1/chat/completions", small, CHAT),
        Scenario("small /v1/responses", payloads.small_responses(stream=False), RESPONSES),
        Scenario("large /v1/responses", payloads.codex_large(), RESPONSES),
    ]


def stream_scenarios(paced: bool) -> list[Scenario]:
    """Bursts (by default every token in one backend write) show what translating a token costs;
    paced streams (each token a write of its own, as a model server sends them) show what a
    client of a real server gets, read by read."""
    small = payloads.small(stream=True)
    scenarios = [
        Scenario("stream /v1/messages", small, MESSAGES),
        Scenario("stream /v1/chat/completions", small, CHAT),
        Scenario("stream /v1/responses", payloads.small_responses(stream=True), RESPONSES),
    ]
    if paced:
        scenarios += [
            replace(scenario, name=PACED + scenario.name, per_write=1) for scenario in scenarios
        ]
    return scenarios


def route(target: Target, scenario: Scenario) -> tuple[str, bytes]:
    """The path and body a target gets: the direct path always gets the OpenAI equivalent."""
    if scenario.path != CHAT and not target.is_direct:
        return scenario.path, scenario.exchange.client
    return CHAT, scenario.exchange.openai


class Bench:
    def __init__(self, settings: Settings, workdir: Path, profile_dir: Path | None) -> None:
        self.settings = settings
        self.workdir = workdir
        self.profile_dir = profile_dir
        self.http_rows: list[HttpRow] = []
        self.stream_rows: list[StreamRow] = []

    def _profiled(self, target: Target, name: str) -> contextlib.AbstractContextManager[None]:
        """py-spy on the gateway and peers when --profile is on; direct is not profiled."""
        if self.profile_dir is None or target.is_direct:
            return contextlib.nullcontext()
        return profiling.recording(target.pid, self.profile_dir / f"{name}.stacks.txt")

    def _measured(
        self, target: Target, name: str, run: Callable[[], Any]
    ) -> tuple[Any, float, float]:
        """Runs `run` with the target's CPU time and peak RSS taken around it."""
        procfs.reset_peak_rss(target.pid)
        meter = procfs.CpuMeter(target.pid)
        meter.start()
        with self._profiled(target, name):
            result = run()
        return result, meter.stop() * 1000, procfs.peak_rss_mib(target.pid)

    def _warmup(self, target: Target) -> int:
        """Peers always get a warm-up, even in --quick: LiteLLM spends about a second on its
        first request (lazy imports), which would otherwise be a whole quick run."""
        if target.name in (DIRECT, "gateway"):
            return self.settings.warmup
        return max(self.settings.warmup, 1)

    def http(self, scenario: Scenario, concurrency: int, target: Target) -> HttpRow:
        path, body = route(target, scenario)
        pattern = ANSWER_PATTERNS[path]
        name = f"{_slug(scenario.name)}-c{concurrency}-{target.name}"
        script = write_script(self.workdir, name, body, pattern)
        url = target.url + path
        warm_errors = 0
        if warmup := self._warmup(target):
            warm = run_wrk(url, script, connections=concurrency, seconds=warmup)
            warm_errors = warm.errors
        result, cpu_ms, rss = self._measured(
            target,
            name,
            lambda: run_wrk(url, script, connections=concurrency, seconds=self.settings.seconds),
        )
        row = HttpRow(
            scenario=scenario.name,
            concurrency=concurrency,
            target=target.name,
            requests=result.requests,
            errors=result.errors + warm_errors,
            seconds=round(result.duration_s, 3),
            requests_per_second=round(result.ok_per_second, 1),
            p50_ms=result.p50_ms,
            p99_ms=result.p99_ms,
            cpu_ms_per_request=round(cpu_ms / max(result.requests, 1), 4),
            peak_rss_mib=round(rss, 1),
        )
        self.http_rows.append(row)
        return row

    def stream(self, scenario: Scenario, concurrency: int, target: Target) -> StreamRow:
        path, body = route(target, scenario)
        shape: StreamShape = STREAM_SHAPES[path]
        name = f"{_slug(scenario.name)}-c{concurrency}-{target.name}"
        load = StreamLoad(
            url=target.url + path,
            body=body,
            shape=shape,
            expected_tokens=self.settings.chunks,
            concurrency=concurrency,
            seconds=self.settings.stream_seconds,
            max_streams=self.settings.max_streams,
        )
        warm_errors = 0
        if warmup := self._warmup(target):
            warm = _run_async(run_streams(replace(load, seconds=warmup)))
            warm_errors = warm.errors
        stats, cpu_ms, rss = self._measured(target, name, lambda: _run_async(run_streams(load)))
        for sample in stats.error_samples:
            print(f"  {name}: failed stream: {sample}", file=sys.stderr)
        row = StreamRow(
            scenario=scenario.name,
            concurrency=concurrency,
            target=target.name,
            streams=stats.streams,
            errors=stats.errors + warm_errors,
            seconds=round(stats.seconds, 3),
            chunks_per_second=round(stats.tokens_per_second, 1),
            first_event_p50_ms=round(percentile(stats.first_event_ms, 50), 3),
            first_event_p99_ms=round(percentile(stats.first_event_ms, 99), 3),
            first_token_p50_ms=round(percentile(stats.first_token_ms, 50), 3),
            cpu_ms_per_stream=round(cpu_ms / max(stats.streams + stats.errors, 1), 3),
            peak_rss_mib=round(rss, 1),
        )
        self.stream_rows.append(row)
        return row

    def _selected(self, scenarios: list[Scenario]) -> list[Scenario]:
        only = self.settings.only
        return [s for s in scenarios if not only or any(part in s.name for part in only)]

    def scenario_groups(self) -> list[tuple[int, list[Scenario], list[Scenario]]]:
        """(backend tokens per write, http scenarios, stream scenarios): one fake backend (and
        its gateway) per group, since the fake backend paces all its streams alike."""
        default = self.settings.chunks_per_write
        streams = self._selected(stream_scenarios(self.settings.paced))
        groups = [(default, self._selected(http_scenarios()), [])]
        for scenario in streams:
            per_write = default if scenario.per_write is None else scenario.per_write
            if per_write != groups[-1][0]:
                groups.append((per_write, [], []))
            groups[-1][2].append(scenario)
        return [group for group in groups if group[1] or group[2]]

    def run(self, targets: Sequence[Target], http: list[Scenario], streams: list[Scenario]) -> None:
        """Direct first in each group, so every target's row has its baseline from moments ago."""
        for scenario in http:
            for concurrency in self.settings.concurrencies:
                for target in targets:
                    row = self.http(scenario, concurrency, target)
                    _progress(row, f"{row.requests_per_second:.0f} req/s")
        for scenario in streams:
            for concurrency in self.settings.stream_concurrencies:
                for target in targets:
                    if scenario.path != MESSAGES and target.name not in (DIRECT, "gateway"):
                        continue  # peers are compared on the Anthropic stream only
                    srow = self.stream(scenario, concurrency, target)
                    _progress(srow, f"{srow.chunks_per_second:.0f} chunks/s")


def _run_async(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _slug(text: str) -> str:
    return "".join(char if char.isalnum() else "-" for char in text).strip("-")


def _progress(row: HttpRow | StreamRow, rate: str) -> None:
    # Progress goes to stderr so stdout holds only the report.
    where = f"{row.scenario} c={row.concurrency} {row.target}"
    print(f"  .. {where}: {rate}, {row.errors} errors", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmark mlx-gateway against the direct path."
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds: checks, not speed")
    parser.add_argument("--seconds", type=int, help="seconds per measured wrk run (default 10)")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up before each run")
    parser.add_argument("--chunks", type=int, help="token chunks per streamed answer (200)")
    parser.add_argument(
        "--chunks-per-write",
        type=int,
        help="token chunks the fake backend sends per write (default 0: all at once)",
    )
    parser.add_argument(
        "--peer", action="append", default=[], choices=sorted(peers.PEERS), help="add a peer"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the gateway during every scenario"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="run only the scenarios whose name contains TEXT (repeatable)",
    )
    parser.add_argument(
        "--routing",
        action="store_true",
        help="only the routing rows (1, 2, 4 backends) and the overload row",
    )
    parser.add_argument(
        "--results-dir", type=Path, help=f"where the JSON goes (default {RESULTS_DIR})"
    )
    parser.add_argument(
        "--soak",
        type=float,
        metavar="SECONDS",
        help="instead of the tables: steady mixed load for SECONDS; RSS slope and descriptors",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {
        "soak": args.soak,
        "peers": tuple(args.peer),
        "profile": args.profile,
        "only": tuple(args.only),
        "routing": args.routing,
    }
    if args.seconds is not None:
        overrides["seconds"] = args.seconds
        overrides["stream_seconds"] = float(args.seconds) / 2
    if args.warmup is not None:
        overrides["warmup"] = args.warmup
    if args.chunks is not None:
        overrides["chunks"] = args.chunks
    if args.results_dir is not None:
        overrides["results_dir"] = args.results_dir
    if args.chunks_per_write is not None:
        overrides["chunks_per_write"] = args.chunks_per_write
    return replace(settings, **overrides)


def _meta(settings: Settings, plan: services.CorePlan, stamp: str) -> dict[str, Any]:
    from mlx_gateway import __version__

    large, codex = payloads.large(), payloads.codex_large()
    return {
        "started": stamp,
        "gateway_version": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cores": plan.describe(),
        "settings": {**dataclasses.asdict(settings), "results_dir": str(settings.results_dir)},
        "payload_bytes": {
            "large_anthropic": len(large.client),
            "large_openai": len(large.openai),
            "small_anthropic": len(payloads.small(stream=False).client),
            "large_responses": len(codex.client),
            "large_responses_openai": len(codex.openai),
        },
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@contextlib.contextmanager
def _targets(settings: Settings, plan: services.CorePlan, logs: Path) -> Iterator[list[Target]]:
    with ExitStack() as stack:
        fake = stack.enter_context(
            services.fake_backend(logs, settings.chunks, settings.chunks_per_write)
        )
        gateway = stack.enter_context(services.gateway(logs, fake.url, plan.gateway))
        targets = [
            Target(DIRECT, fake.url, fake.pid),
            Target("gateway", gateway.url, gateway.pid),
        ]
        for name in settings.peers:
            peer = stack.enter_context(peers.PEERS[name](logs, fake.url, plan.gateway))
            targets.append(Target(name, peer.url, peer.pid))
        yield targets


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    if settings.soak:
        plan = services.CorePlan.for_this_machine()
        plan.pin_this_process_to_load()
        return _soak(settings.soak, plan)
    try:
        require_wrk()
        if settings.profile:
            profiling.require_py_spy()
    except (WrkMissing, profiling.PySpyMissing) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    plan = services.CorePlan.for_this_machine()
    plan.pin_this_process_to_load()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    profile_dir = settings.results_dir / f"{stamp}-profile" if settings.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True)
    started = time.monotonic()
    if settings.routing:
        with tempfile.TemporaryDirectory(prefix="mlx-gateway-bench-") as tmp:
            concurrency = settings.concurrencies[-1]
            figures = routing.run(Path(tmp), plan, settings.seconds, concurrency)
        overload = figures["overload"]
        failed = overload.other or sum(row.errors for row in figures["routing"])
        return 1 if failed else 0
    with tempfile.TemporaryDirectory(prefix="mlx-gateway-bench-") as tmp:
        workdir = Path(tmp)
        bench = Bench(settings, workdir, profile_dir)
        try:
            for per_write, http, streams in bench.scenario_groups():
                group_settings = replace(settings, chunks_per_write=per_write)
                with _targets(group_settings, plan, workdir) as targets:
                    bench.run(targets, http, streams)
        except services.ServiceFailed as exc:
            print(f"bench: error: {exc}", file=sys.stderr)
            return 2
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            # A target that died mid-run (its /proc entry is gone) or a load tool that failed:
            # the services' logs say why.
            print(f"bench: error: {type(exc).__name__}: {exc}", file=sys.stderr)
            for log in sorted(workdir.glob("*.log")):
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                print(f"--- {log.name} (last lines)\n{tail}", file=sys.stderr)
            return 2
    meta = _meta(settings, plan, stamp)
    print_report(meta, bench, time.monotonic() - started)
    result_path = settings.results_dir / f"{stamp}.json"
    save_json(result_path, meta, bench.http_rows, bench.stream_rows)
    if profile_dir is not None:
        for stacks in sorted(profile_dir.glob("*.stacks.txt")):
            summary = profiling.summarise(stacks)
            stacks.with_name(stacks.name.replace(".stacks.txt", ".summary.txt")).write_text(summary)
        print(f"profiles: {profile_dir}")
    print(f"results: {result_path}")
    return 1 if total_errors(bench.http_rows, bench.stream_rows) else 0


def _soak(seconds: float, plan: services.CorePlan) -> int:
    with tempfile.TemporaryDirectory(prefix="mlx-gateway-soak-") as tmp:
        try:
            report = soak.run_soak(seconds, Path(tmp), plan)
        except services.ServiceFailed as exc:
            print(f"bench: error: {exc}", file=sys.stderr)
            return 2
    print("\n".join(report.lines()))
    return 1 if report.errors else 0


def print_report(meta: dict[str, Any], bench: Bench, elapsed: float) -> None:
    settings = bench.settings
    sizes = meta["payload_bytes"]
    mode = "quick (checks only, figures are not meaningful)" if settings.quick else "full"
    print(f"mlx-gateway {meta['gateway_version']} benchmark, {mode}, {elapsed:.0f} s")
    print(f"cpu: {meta['cpu']}; {meta['cores']}")
    print(
        f"large = Claude-Code-like request, {sizes['large_anthropic']} bytes "
        f"({sizes['large_openai']} as OpenAI); large /v1/responses = Codex-like request, "
        f"{sizes['large_responses']} bytes ({sizes['large_responses_openai']} as OpenAI); "
        f"wrk {settings.seconds} s per run after "
        f"{settings.warmup} s warm-up; streams of {settings.chunks} one-token chunks, "
        f"{settings.chunks_per_write or 'all'} per backend write"
        + ("; paced: 1 per write" if settings.paced else "")
    )
    if settings.profile:
        print("py-spy was attached to the gateway: figures are a little lower than without")
    print()
    if bench.http_rows:
        print(http_table(bench.http_rows))
        print()
    if bench.stream_rows:
        print(stream_table(bench.stream_rows))
        print()
    print(direct_table(bench.http_rows, bench.stream_rows))
    print()
    for note in headroom_notes(bench.http_rows, bench.stream_rows):
        print(note)
    print(f"errors: {total_errors(bench.http_rows, bench.stream_rows)}")
