"""`python -m bench --quick` runs end to end: every scenario on every path, every response checked.

It proves the benchmark works (fake backend, gateway, wrk and its Lua checks, the stream client,
the report and the JSON), not how fast anything is. wrk must be installed (`apt-get install -y
wrk`): without it the benchmark fails loudly, and so does this test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HTTP_ROWS = (
    "small /v1/messages",
    "large /v1/messages",
    "small /v1/chat/completions",
    "small /v1/responses",
    "large /v1/responses",
)
STREAM_ROWS = (
    "stream /v1/messages",
    "stream /v1/chat/completions",
    "stream /v1/responses",
    "paced stream /v1/messages",
    "paced stream /v1/chat/completions",
    "paced stream /v1/responses",
)


def test_quick_benchmark_runs_and_every_response_checks_out(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    gateway_rows = [line for line in result.stdout.splitlines() if " gateway " in line]
    for name in HTTP_ROWS + STREAM_ROWS:
        rows = [line for line in gateway_rows if line.startswith(name + " ")]
        assert len(rows) == 1, f"no single gateway row for {name!r}:\n{result.stdout}"
        assert rows[0].split()[-1] == "0", f"errors in {rows[0]!r}"
    assert "errors: 0" in result.stdout.splitlines(), result.stdout

    (saved,) = tmp_path.glob("*.json")
    document = json.loads(saved.read_text())
    assert document["errors"] == 0
    assert {row["scenario"] for row in document["http"]} == set(HTTP_ROWS)
    assert {row["scenario"] for row in document["streams"]} == set(STREAM_ROWS)
    assert {row["target"] for row in document["http"]} == {"direct", "gateway"}
    assert all(row["requests"] > 0 for row in document["http"])
    assert all(row["streams"] > 0 for row in document["streams"])


def test_soak_reports_memory_slope_and_descriptors() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--soak", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("soak: ") and " 0 errors" in line for line in lines)
    assert any(line.startswith("rss: ") and "MiB/min" in line for line in lines)
    assert any(line.startswith("open descriptors: ") for line in lines)
