"""What the gateway checks as it starts, and when a backend counts as down."""

from __future__ import annotations

import pytest

from mlx_gateway.backends.profiles import PROFILES, start_hint
from mlx_gateway.backends.upstream import DownWatch
from mlx_gateway.config import Config
from mlx_gateway.startup import self_proxy_error, served_models, window_warning


@pytest.mark.parametrize(
    ("host", "port", "url", "refused"),
    [
        ("127.0.0.1", 8080, "http://localhost:8080", True),
        ("127.0.0.1", 8080, "http://127.0.0.1:8080/v1/", True),
        ("127.0.0.1", 8080, "http://0.0.0.0:8080", True),
        ("127.0.0.1", 8080, "http://[::1]:8080", False),  # nothing of ours listens on ::1
        ("::1", 8080, "http://[::1]:8080", True),
        ("0.0.0.0", 8080, "http://127.0.0.2:8080", True),
        ("0.0.0.0", 8080, "http://localhost:8080", True),
        ("127.0.0.1", 80, "http://localhost", True),
        ("127.0.0.1", 8080, "http://localhost:8081", False),
        ("127.0.0.1", 8080, "http://192.0.2.10:8080", False),  # another machine
        ("127.0.0.1", 8080, "http://no-such-host.invalid:8080", False),
    ],
)
def test_self_proxy(host: str, port: int, url: str, refused: bool) -> None:
    error = self_proxy_error(Config(host=host, port=port, mlx_url=(url,)))
    assert (error is not None) == refused
    if error:
        assert "--mlx-url" in error
        assert "model server" in error


def test_served_models() -> None:
    assert served_models(b'{"object":"list","data":[{"id":"a"},{"id":"b"}]}') == ["a", "b"]
    assert served_models(b"<html>hello</html>") is None
    assert served_models(b'{"detail":"Not Found"}') is None


def test_window_warning_names_the_flag() -> None:
    assert window_warning(40960) == ""
    warning = window_warning(8192)
    assert "8192" in warning
    assert "--context-window" in warning
    assert "20,000" in warning


@pytest.mark.parametrize(
    ("kind", "url", "command"),
    [
        ("mlx_lm", "http://localhost:8081", "mlx_lm.server --model M --port 8081"),
        ("vllm", "http://h:8000", "vllm serve M --port 8000"),
        ("llama_cpp", "http://h:9000", "llama-server -m <model.gguf> --jinja --port 9000"),
        ("ollama", "http://h:11434", "ollama serve"),
    ],
)
def test_start_hint(kind: str, url: str, command: str) -> None:
    hint = start_hint(PROFILES[kind], url, "M")
    assert f"`{command}`" in hint
    assert "--mlx-url" in hint
    assert "--mlx-url" in start_hint(PROFILES["openai"], url, "M")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_down_after_three_failures_in_a_row() -> None:
    watch = DownWatch(failures=3, seconds=5, clock=Clock())
    assert not watch.down
    watch.failed()
    watch.failed()
    assert not watch.down
    watch.failed()
    assert watch.down
    watch.reached()
    assert not watch.down
    watch.failed()
    assert not watch.down


def test_down_after_failing_for_a_while() -> None:
    clock = Clock()
    watch = DownWatch(failures=3, seconds=5, clock=clock)
    watch.failed()
    clock.now += 4.9
    assert not watch.down
    clock.now += 0.2
    assert watch.down
