"""Child processes that end with the gateway: `--workers` processes, the supervised backend and
the session gateway of `mlx-gateway code`.

A parent that stops normally stops its children itself. One that is killed outright (SIGKILL,
the OOM killer) cannot, so on Linux each child asks the kernel for SIGTERM when its parent dies
(prctl PR_SET_PDEATHSIG). The signal follows the parent *thread* that started the child, so
children are started from threads that live as long as they do. Elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return function


def prepare() -> None:
    """Loads prctl in the parent. A child forked from a process with threads may only do what
    takes no lock another thread could have held at the fork; with the function loaded already,
    `die_with_parent` is one foreign call and takes none (no import, no dlopen, no logging)."""
    _prctl()


def die_with_parent() -> None:
    """In a child: be sent SIGTERM when the parent goes away."""
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def die_with(parent_pid: int) -> None:
    """In a spawned child, where the parent may already be gone by the time it runs: SIGTERM
    on parent death, and an immediate exit if the parent has died already."""
    die_with_parent()
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)
