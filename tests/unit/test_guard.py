"""Who may call, decided without a socket: keys, hosts, origins, details, in-flight counts."""

from __future__ import annotations

import dataclasses

import pytest

from mlx_gateway.config import Config
from mlx_gateway.errors import (
    Forbidden,
    GatewayError,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)
from mlx_gateway.server.guard import Guard, client_host
from mlx_gateway.server.rsgi import Request


def request(
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    path: str = "/v1/messages",
    client: str = "127.0.0.1:5000",
) -> Request:
    headers = {"host": "127.0.0.1:8080", **(headers or {})}
    return Request(method, path, headers, b"", None, client=client)


def guard(**settings: object) -> Guard:
    return Guard(dataclasses.replace(Config(), **settings))  # type: ignore[arg-type]


CASES: list[tuple[dict[str, object], dict[str, str], type[GatewayError] | None]] = [
    ({}, {}, None),
    ({"api_key": ("k",)}, {}, Unauthorized),
    ({"api_key": ("k",)}, {"x-api-key": "k"}, None),
    ({"api_key": ("k", "j")}, {"authorization": "Bearer j"}, None),
    ({"api_key": ("k",)}, {"authorization": "bearer k"}, None),
    ({"api_key": ("k",)}, {"authorization": "Basic k"}, Unauthorized),
    ({"api_key": ("k",)}, {"x-api-key": "k2"}, Unauthorized),
    ({}, {"host": "evil.example"}, Forbidden),
    ({}, {"host": "evil.example:8080"}, Forbidden),
    ({}, {"host": "localhost:8080"}, None),
    ({}, {"host": "[::1]:8080"}, None),
    ({}, {"host": "10.0.0.5:8080"}, None),
    ({"allowed_host": ("box.lan",)}, {"host": "BOX.lan:8080"}, None),
    ({"allowed_host": ("*",)}, {"host": "anything.example"}, None),
    ({}, {"origin": "http://page.example"}, Forbidden),
    ({"cors_origin": ("http://page.example",)}, {"origin": "http://page.example"}, None),
    ({"cors_origin": ("*",)}, {"origin": "http://other.example"}, None),
    ({}, {"content-type": "text/plain;charset=UTF-8"}, UnsupportedMediaType),
    ({}, {"content-type": "application/x-www-form-urlencoded"}, UnsupportedMediaType),
    ({}, {"content-type": "application/json; charset=utf-8"}, None),
]


@pytest.mark.parametrize(("settings", "headers", "error"), CASES)
def test_check(
    settings: dict[str, object], headers: dict[str, str], error: type[GatewayError] | None
) -> None:
    if error is None:
        guard(**settings).check(request(headers))
    else:
        with pytest.raises(error):
            guard(**settings).check(request(headers))


def test_health_is_open_without_a_key_but_details_need_loopback_or_a_key() -> None:
    keyed = guard(api_key=("k",))
    keyed.check(request(path="/health", method="GET"))
    assert keyed.may_see_details(request(client="127.0.0.1:1"))
    assert keyed.may_see_details(request(client="[::1]:1"))
    assert not keyed.may_see_details(request(client="192.168.1.9:1"))
    assert keyed.may_see_details(request({"x-api-key": "k"}, client="192.168.1.9:1"))
    assert not guard().may_see_details(request(client="192.168.1.9:1"))


def test_in_flight_requests_are_counted_per_address() -> None:
    limited = guard(max_client_requests=2)
    first = limited.admit(request(client="10.0.0.1:1"))
    limited.admit(request(client="10.0.0.1:2"))
    with pytest.raises(TooManyRequests):
        limited.admit(request(client="10.0.0.1:3"))
    limited.admit(request(client="10.0.0.2:1"))  # another address has its own slots
    limited.release(first)
    limited.admit(request(client="10.0.0.1:4"))


def test_preflight() -> None:
    allowed = guard(cors_origin=("http://page.example",))
    ask = {"access-control-request-method": "POST"}
    with pytest.raises(Forbidden):
        allowed.preflight(request(ask, method="OPTIONS"))  # no Origin
    headers = allowed.preflight(request({**ask, "origin": "http://page.example"}, method="OPTIONS"))
    assert headers is not None
    assert ("access-control-allow-origin", "http://page.example") in headers
    assert allowed.preflight(request(method="OPTIONS")) is None  # not a preflight


@pytest.mark.parametrize(
    ("client", "host"),
    [("127.0.0.1:5", "127.0.0.1"), ("[::1]:5", "::1"), ("::1:5", "::1"), ("unix", "unix")],
)
def test_client_host(client: str, host: str) -> None:
    assert client_host(client) == host
