"""CPU time and memory of a process, read from /proc (Linux only, like the rest of the bench)."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of all the process's threads so far.

    Fields 14 and 15 of /proc/<pid>/stat, counted after the command name, which is in
    parentheses and may itself contain spaces, hence the split at the last ')'.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the largest resident set since start, or since the last `reset_peak_rss`."""
    return _status_kib(pid, "VmHWM") / 1024


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def reset_peak_rss(pid: int) -> bool:
    """Resets VmHWM to the current RSS (writing 5 to clear_refs, Linux >= 4.0), so that each
    scenario reports its own peak. Needs the right to write there; False when that fails, and
    the peak then covers the process's whole life so far."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class CpuMeter:
    """CPU seconds a process used between `start()` and `stop()`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._start = 0.0

    def start(self) -> None:
        self._start = cpu_seconds(self.pid)

    def stop(self) -> float:
        return cpu_seconds(self.pid) - self._start
