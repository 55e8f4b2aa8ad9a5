"""The error table: a backend's answer -> the error the client sees, per kind of server, and
how that error goes out (status per protocol, x-should-retry, retry-after)."""

from __future__ import annotations

import json

import pytest

from mlx_gateway.backends.profiles import PROFILES, start_hint
from mlx_gateway.backends.upstream import backend_status_error
from mlx_gateway.errors import (
    BackendFailed,
    BackendRefused,
    BackendRejected,
    GatewayError,
    Overloaded,
    RateLimited,
)
from mlx_gateway.server.app import error_reply
from mlx_gateway.server.guard import from_loopback
from mlx_gateway.server.rsgi import Request


def llama_error(code: int, message: str) -> bytes:
    """llama-server's error body shape."""
    return json.dumps(
        {"error": {"code": code, "message": message, "type": "server_error"}}
    ).encode()


@pytest.mark.parametrize(
    ("kind", "status", "body", "expected", "client_status"),
    [
        (
            "llama_cpp",
            500,
            llama_error(
                500,
                "image input is not supported - hint: if this is unexpected, you may need to "
                "provide the mmproj",
            ),
            BackendRefused,
            400,
        ),
        (
            "llama_cpp",
            500,
            llama_error(500, "tools param requires --jinja flag"),
            BackendRefused,
            400,
        ),
        (
            "mlx_lm",
            400,
            b'{"error": "Only \'text\' content type is supported."}',
            BackendRefused,
            400,
        ),
        (
            "vllm",
            400,
            b'{"object": "error", "message": "At most 0 image(s) may be provided in one request."}',
            BackendRefused,
            400,
        ),
        ("openai", 429, b'{"error": {"message": "slow down"}}', RateLimited, 429),
        ("llama_cpp", 500, llama_error(500, "something else broke"), BackendFailed, 502),
        ("vllm", 404, b'{"message": "The model `x` does not exist."}', BackendRejected, 400),
    ],
)
def test_backend_answers_map_by_the_kinds_table(
    kind: str, status: int, body: bytes, expected: type[GatewayError], client_status: int
) -> None:
    error = backend_status_error(status, body, PROFILES[kind])
    assert type(error) is expected
    assert error.status == client_status


def test_a_backend_429_keeps_its_retry_after() -> None:
    error = backend_status_error(429, b"busy", PROFILES["vllm"], b"7")
    assert isinstance(error, RateLimited)
    assert error.retry_after == 7.0
    assert backend_status_error(429, b"busy", PROFILES["vllm"], b"Wed, 21 Oct").retry_after is None


def test_refusals_say_what_is_refused() -> None:
    error = backend_status_error(
        500, llama_error(500, "tools param requires --jinja flag"), PROFILES["llama_cpp"]
    )
    assert error.message.startswith("the server cannot render tools for this model")
    assert "--jinja" in error.message


class _Headers(dict[str, str]):
    pass


def request(path: str, client: str = "127.0.0.1:5000") -> Request:
    return Request("POST", path, _Headers(), b"", None, client=client)


@pytest.mark.parametrize(
    ("error", "path", "status", "retry", "retry_after"),
    [
        (RateLimited("slow down", 2.5), "/v1/messages", 429, "true", "3"),
        (RateLimited("slow down"), "/v1/chat/completions", 429, "true", None),
        (Overloaded("busy", 5.0), "/v1/messages", 529, "true", "5"),
        (Overloaded("busy", 5.0), "/v1/chat/completions", 429, "true", "5"),
        (BackendRefused("the model does not accept images"), "/v1/messages", 400, "false", None),
    ],
)
def test_errors_go_out_with_status_retry_and_retry_after(
    error: GatewayError, path: str, status: int, retry: str, retry_after: str | None
) -> None:
    reply = error_reply(request(path), error)
    headers = dict(reply.headers)
    assert reply.status == status
    assert headers["x-should-retry"] == retry
    assert headers.get("retry-after") == retry_after
    body = json.loads(reply.body)
    if path.startswith("/v1/messages"):
        assert body["error"]["type"] == error.anthropic_type
    else:
        assert body["error"]["type"] == error.openai_type


def test_openai_rate_limit_body_has_its_code() -> None:
    body = json.loads(error_reply(request("/v1/chat/completions"), Overloaded("busy", 5)).body)
    assert body["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("client", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("192.168.1.4:5000", False),
        ("10.0.0.2:80", False),
        ("", False),
    ],
)
def test_loopback_clients(client: str, loopback: bool) -> None:
    assert from_loopback(client) is loopback


def test_start_hints_name_the_port_and_model() -> None:
    hint = start_hint(PROFILES["mlx_lm"], "http://localhost:8081", "mlx-community/Qwen3-8B-4bit")
    assert "`mlx_lm.server --model mlx-community/Qwen3-8B-4bit --port 8081`" in hint
    assert "`" not in start_hint(PROFILES["openai"], "http://localhost:8081", "m")
