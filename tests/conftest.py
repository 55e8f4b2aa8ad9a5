"""Fixtures shared by every suite: the scripted backend, the real mlx_lm.server and llama-server,
the gateway."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.gateway import GatewayProcess, running_gateway

pytest_plugins = [
    "tests.support.scripted_backend",
    "tests.support.mlx_backend",
    "tests.support.llama_backend",
]

StartGateway = Callable[..., GatewayProcess]


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """Starts the real gateway process: `start_gateway(backend_url, *flags, env=...)`."""
    with ExitStack() as stack:

        def start(
            backend_url: str,
            *flags: str,
            env: dict[str, str] | None = None,
            startup_timeout: float = 20,
        ) -> GatewayProcess:
            return stack.enter_context(
                running_gateway(
                    backend_url,
                    *flags,
                    tmp_dir=tmp_path,
                    env=env,
                    startup_timeout=startup_timeout,
                )
            )

        yield start
