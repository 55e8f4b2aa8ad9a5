"""`--profile`: py-spy samples the gateway while a scenario is measured, and the stacks are
summarised into where the time goes (own time per function, and time inside each function).

py-spy reads the process from outside (no code in the gateway changes) and samples only the
thread holding the GIL, so an event loop waiting in epoll or an idle worker thread does not
count (nor do the rare C calls that release the GIL). The raw collapsed stacks
are kept next to the summary: `flamegraph.pl` or speedscope.app turn them into a flame graph.
Figures measured with the profiler attached are a little lower; the rows are marked as such.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

INSTALL_HINT = "pip install py-spy"


class PySpyMissing(RuntimeError):
    def __init__(self) -> None:
        super().__init__(f"--profile needs py-spy: {INSTALL_HINT}")


def require_py_spy() -> str:
    path = shutil.which("py-spy")
    if path is None:
        raise PySpyMissing()
    return path


@contextmanager
def recording(pid: int, stacks_path: Path) -> Iterator[None]:
    """Samples `pid` until the block ends, then writes collapsed stacks to `stacks_path`."""
    command = [
        require_py_spy(),
        "record",
        "--pid",
        str(pid),
        "--rate",
        "250",
        # Only the thread holding the GIL: py-spy's idle check misses a worker thread blocked
        # on its queue (asyncio.to_thread's pool), which otherwise showed as 40% "busy".
        "--gil",
        "--format",
        "raw",
        "--output",
        str(stacks_path),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        # SIGINT is py-spy's "stop and write the file"; it exits on its own after that.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _frame_name(frame: str) -> str:
    """`handler (mlx_gateway/server/app.py:57)` -> `handler (mlx_gateway/server/app.py)`: lines vary
    within a function and would split its time into many rows."""
    name, _, location = frame.partition(" (")
    path = location.rstrip(")").rpartition(":")[0] or location.rstrip(")")
    for marker in ("site-packages/", "lib/python3.", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


def summarise(stacks_path: Path, top: int = 25) -> str:
    """Own time (the frame on top of the stack) and inclusive time per function, in percent
    of all non-idle samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in stacks_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")]
        # The first frame is the thread ("process 123:..."/"thread ..."), not code.
        frames = [frame for frame in frames if not frame.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples (the process was idle or py-spy could not attach)\n"
    lines = [f"{total} samples"]
    for title, counter in (("own time", own), ("inclusive time", inclusive)):
        lines.append(f"\n{title}:")
        lines += [
            f"  {100 * count / total:5.1f}%  {name}" for name, count in counter.most_common(top)
        ]
    return "\n".join(lines) + "\n"
