"""One folder per pinned tool in the test cache, filled once per machine.

The tool is installed or built into a temporary sibling folder that is renamed into place only
after it works, so an interrupted install never leaves a half-filled folder behind; a file lock
keeps parallel test processes from filling it twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def ensure_cached(
    final: Path,
    executable: Callable[[Path], Path],
    works: Callable[[Path], bool],
    fill: Callable[[Path], None],
) -> Path:
    """`executable(final)` once `works` says so, after `fill`ing a staging folder if needed;
    `fill` raises when what it made does not work."""
    if works(executable(final)):
        return executable(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent / f".{final.name}.lock"):
        if not works(executable(final)):
            _fill_into(final, fill)
    return executable(final)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fill_into(final: Path, fill: Callable[[Path], None]) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        fill(staging)
        staging.chmod(0o755)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
