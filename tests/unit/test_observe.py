"""The access line, usage read from answers, the metrics tally and its sum over workers, and the
status page's figures: all pure, fed with hand-made request records."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlx_gateway.errors import BackendUnavailable, InvalidRequest
from mlx_gateway.logs import JsonFormatter
from mlx_gateway.server.chat import usage_at_end
from mlx_gateway.server.metrics import Metrics, Tally, render
from mlx_gateway.server.observe import AccessEntry, Observer, RequestRecord
from mlx_gateway.server.status import StatusBoard

BACKEND = "http://127.0.0.1:8081"
ROUTED = f"POST /v1/messages 200 claude-sonnet-4-5 -> qwen3 @ {BACKEND}"


def record(
    path: str = "/v1/messages",
    status: int = 200,
    *,
    usage: tuple[int | None, int | None, int | None] = (100, 20, 60),
    ttft: float | None = 0.25,
    took: float = 1.0,
    finished: float = 1000.0,
) -> RequestRecord:
    made = RequestRecord("POST", path)
    made.route = path
    made.status = status
    made.routed("claude-sonnet-4-5", "qwen3", BACKEND)
    made.usage(*usage)
    made.first_piece = None if ttft is None else made.started + ttft
    made.took = took
    made.finished = finished
    return made


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


# ---- the access line ---------------------------------------------------------------------------


def test_text_line_names_models_backend_tokens_and_times() -> None:
    line = str(AccessEntry(record()))

    assert line == (
        f"POST /v1/messages 200 claude-sonnet-4-5 -> qwen3 @ {BACKEND} "
        "in=100 out=20 cached=60 ttft=250ms 1000ms"
    )


@pytest.mark.parametrize(
    ("usage", "ttft", "expected"),
    [
        ((None, None, None), None, f"{ROUTED} 1000ms"),
        ((12, 3, None), None, f"{ROUTED} in=12 out=3 cached=- 1000ms"),
    ],
)
def test_unknown_figures_are_left_out_or_dashed(
    usage: tuple[int | None, int | None, int | None], ttft: float | None, expected: str
) -> None:
    assert str(AccessEntry(record(usage=usage, ttft=ttft))) == expected


def test_a_failed_request_names_its_error_kind_not_its_body() -> None:
    failed = RequestRecord("POST", "/v1/messages")
    failed.failed(InvalidRequest("messages.0.content: expected a string"))
    failed.status = 400

    line = str(AccessEntry(failed))

    assert line.startswith("POST /v1/messages 400 ")
    assert line.endswith("(InvalidRequest)")
    assert "messages.0" not in line


def test_json_format_writes_the_fields_as_keys() -> None:
    entry = AccessEntry(record())
    log_record = logging.LogRecord("mlx_gateway.access", logging.INFO, "", 0, "%s", (entry,), None)

    line = json.loads(JsonFormatter().format(log_record))

    assert line["level"] == "info"
    assert line["model"] == "claude-sonnet-4-5"
    assert line["backend_model"] == "qwen3"
    assert line["backend"] == BACKEND
    assert (line["input_tokens"], line["output_tokens"], line["cached_tokens"]) == (100, 20, 60)
    assert line["ttft_ms"] == 250.0
    assert line["duration_ms"] == 1000.0
    assert "message" not in line


def test_json_format_keeps_other_lines_as_messages() -> None:
    log_record = logging.LogRecord("mlx_gateway", logging.WARNING, "", 0, "%s down", ("x",), None)

    line = json.loads(JsonFormatter().format(log_record))

    assert line == {**line, "level": "warning", "logger": "mlx_gateway", "message": "x down"}


def test_access_lines_are_logged_at_info_and_quiet_routes_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    observer = Observer()
    caplog.set_level(logging.DEBUG, logger="mlx_gateway.access")
    for path in ("/v1/messages", "/status.json"):
        made = observer.begin("GET", path)
        made.status = 200
        observer.end(made)

    levels = {entry.getMessage().split()[1]: entry.levelno for entry in caplog.records}

    assert levels == {"/v1/messages": logging.INFO, "/status.json": logging.DEBUG}
    assert observer.in_flight == 0


# ---- usage in a relayed OpenAI stream ---------------------------------------------------------

USAGE_CHUNK = (
    b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":4,'
    b'"prompt_tokens_details":{"cached_tokens":29}}}\n\n'
)
STREAM_END = b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n' + USAGE_CHUNK


@pytest.mark.parametrize("cut", range(len(STREAM_END + b"data: [DONE]\n\n") + 1))
def test_usage_is_found_in_the_last_two_pieces_wherever_they_are_cut(cut: int) -> None:
    tail = STREAM_END + b"data: [DONE]\n\n"
    usage = usage_at_end(tail[:cut] + tail[cut:])

    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (30, 4)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 29


@pytest.mark.parametrize(
    "tail",
    [b"data: [DONE]\n\n", b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n', b'"usage"'],
)
def test_a_stream_without_usage_leaves_tokens_unknown(tail: bytes) -> None:
    assert usage_at_end(tail) is None


# ---- the metrics tally --------------------------------------------------------------------------


def test_tally_renders_requests_tokens_and_histograms() -> None:
    tally = Tally()
    tally.count(record())
    tally.count(record(status=503, usage=(None, None, None), ttft=None, took=0.01))

    found = samples(render(tally, {"backends": [{"url": BACKEND, "kind": "mlx_lm", "up": True}]}))

    ok = (("backend", BACKEND), ("route", "/v1/messages"), ("status", "200"))
    failed = (("backend", BACKEND), ("route", "/v1/messages"), ("status", "503"))
    assert found[("mlx_gateway_requests_total", ok)] == 1
    assert found[("mlx_gateway_requests_total", failed)] == 1
    for kind, value in (("input", 100), ("output", 20), ("cached", 60)):
        assert found[("mlx_gateway_tokens_total", (("backend", BACKEND), ("kind", kind)))] == value
    route = (("route", "/v1/messages"),)
    assert found[("mlx_gateway_ttft_seconds_count", route)] == 1
    assert found[("mlx_gateway_ttft_seconds_bucket", (("le", "0.25"), *route))] == 1
    assert found[("mlx_gateway_ttft_seconds_bucket", (("le", "0.1"), *route))] == 0
    assert found[("mlx_gateway_request_duration_seconds_count", route)] == 2
    assert found[("mlx_gateway_request_duration_seconds_sum", route)] == pytest.approx(1.01)
    assert found[("mlx_gateway_backend_up", (("backend", BACKEND), ("kind", "mlx_lm")))] == 1


def test_quiet_routes_are_counted_but_not_timed() -> None:
    tally = Tally()
    tally.count(record("/metrics"))

    assert list(tally.requests.values()) == [1]
    assert tally.duration == {}
    assert tally.tokens == {}


def test_workers_tallies_are_summed_and_dead_workers_gauges_dropped(tmp_path: Path) -> None:
    other = Tally(in_flight=5, queued=2)
    other.count(record())
    (tmp_path / "worker-999999999.json").write_bytes(json.dumps(_plain(other)).encode())
    metrics = Metrics(lambda: {"queued": 1, "backends": []}, lambda: 3, tmp_path)
    metrics.note(record())

    found = samples(metrics.scrape())

    ok = (("backend", BACKEND), ("route", "/v1/messages"), ("status", "200"))
    assert found[("mlx_gateway_requests_total", ok)] == 2
    assert found[("mlx_gateway_tokens_total", (("backend", BACKEND), ("kind", "input")))] == 200
    assert found[("mlx_gateway_in_flight", ())] == 3  # pid 999999999 is not alive
    assert found[("mlx_gateway_queue_depth", ())] == 1


def _plain(tally: Tally) -> object:
    return msgspec.to_builtins(tally)


# ---- the status page's figures -------------------------------------------------------------------


def test_status_board_keeps_recent_requests_errors_and_minute_figures() -> None:
    now = [1000.0]
    board = StatusBoard(clock=lambda: now[0])
    board.note(record(usage=(100, 20, 60), ttft=0.5, took=2.5, finished=990.0))
    failed = record(status=503, usage=(None, None, None), ttft=None, finished=995.0)
    failed.failed(BackendUnavailable("cannot connect"))
    board.note(failed)
    board.note(record("/status.json"))
    board.note(record(finished=100.0))  # long ago: in the totals, not in the last minute

    summary = board.summary()

    assert summary["totals"]["requests"] == 3
    assert summary["totals"]["errors"] == 1
    assert [entry["status"] for entry in summary["recent"]] == [200, 503, 200]
    assert summary["errors"][0]["message"] == "MLX backend unavailable: cannot connect"
    minute = summary["last_minute"]
    assert minute["requests"] == 2
    assert minute["tokens_per_s"] == 10.0  # 20 tokens in the 2 s after the first piece
    assert minute["ttft_ms"] == 500.0
    assert minute["cache_reuse"] == 0.6
    assert summary["cache_reuse"] == 0.6
