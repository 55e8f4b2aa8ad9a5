"""The end-to-end summary: each Claude Code scenario with how long it ran.

Tests record `claude_seconds` with `record_property`; the terminal summary lists them next to
the whole test's time (set-up of the gateway and backend included).
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from _pytest.terminal import TerminalReporter

PROPERTY = "claude_seconds"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gateway_flags(*flags): extra command-line flags for the gateway under test"
    )


def _rows(reporter: TerminalReporter) -> list[tuple[str, str, float, float]]:
    totals: defaultdict[str, float] = defaultdict(float)
    calls: dict[str, pytest.TestReport] = {}
    for reports in reporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                totals[report.nodeid] += report.duration
                if report.when == "call":
                    calls[report.nodeid] = report
    rows = []
    for nodeid, report in calls.items():
        claude = dict(report.user_properties).get(PROPERTY)
        if isinstance(claude, (int, float)):
            rows.append((nodeid.split("::")[-1], report.outcome, float(claude), totals[nodeid]))
    return rows


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    rows = _rows(terminalreporter)
    if not rows:
        return
    terminalreporter.section("Claude Code scenarios")
    terminalreporter.write_line(f"{'scenario':<58} {'outcome':<8} {'claude':>7} {'test':>7}")
    for name, outcome, claude, total in rows:
        terminalreporter.write_line(f"{name:<58} {outcome:<8} {claude:>6.2f}s {total:>6.2f}s")
    overall = sum(total for *_, total in rows)
    terminalreporter.write_line(f"{'total':<67} {overall:>15.2f}s")
