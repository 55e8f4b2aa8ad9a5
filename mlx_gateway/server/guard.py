"""Who may use the gateway: API keys, the Host header, web origins, and how many requests one
client address may hold at once. A local model server is reachable from every web page the
user opens (a page can POST to http://127.0.0.1 as a CORS "simple request", and rebind a DNS
name of its own to 127.0.0.1 to read the answers), so what a browser can send is refused
unless the user allowed that origin.
"""

from __future__ import annotations

import hmac
import ipaddress

from mlx_gateway.config import Config, is_loopback
from mlx_gateway.errors import Forbidden, TooManyRequests, Unauthorized, UnsupportedMediaType
from mlx_gateway.server.rsgi import Headers, HeaderView, Request

# The content types a browser may send cross-origin without asking first (CORS "simple
# requests"); no API client sends them.
_SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_PREFLIGHT_MAX_AGE = "600"
OPEN_PATHS = ("/health",)


class Guard:
    """The checks run on every request before its route; built once per app from Config."""

    def __init__(self, config: Config) -> None:
        self._keys = tuple(key.encode() for key in config.api_key)
        hosts = {*_LOOPBACK_NAMES, config.host.strip("[]").lower(), *config.allowed_host}
        self._any_host = "*" in hosts
        self._hosts = frozenset(host.lower() for host in hosts)
        self._any_origin = "*" in config.cors_origin
        self._origins = frozenset(origin.rstrip("/").lower() for origin in config.cors_origin)
        self._max_per_client = config.max_client_requests
        self._in_flight: dict[str, int] = {}

    def check(self, request: Request) -> None:
        """Raises the error a request that may not go on gets."""
        headers = request.headers
        self._check_host(headers.get("host"))
        self._check_origin(headers.get("origin"))
        if request.method == "POST" and _media_type(headers) in _SIMPLE_TYPES:
            raise UnsupportedMediaType("the request body must be application/json")
        if self._keys and request.path not in OPEN_PATHS and not self.has_valid_key(headers):
            raise Unauthorized("invalid or missing API key (x-api-key or Authorization: Bearer)")

    def has_valid_key(self, headers: HeaderView) -> bool:
        offered = _offered_key(headers)
        # Every key is compared, in constant time, so timing tells nothing about any of them.
        matches = [hmac.compare_digest(offered, key) for key in self._keys]
        return any(matches)

    def may_see_details(self, request: Request) -> bool:
        """Backend URLs and models are for this machine, or for a caller with a key."""
        return from_loopback(request.client) or (
            bool(self._keys) and self.has_valid_key(request.headers)
        )

    def cors_headers(self, request: Request) -> Headers:
        """What an allowed origin's answers carry; nothing for other callers."""
        origin = request.headers.get("origin")
        if origin is None or not self._origin_allowed(origin):
            return []
        return [("access-control-allow-origin", origin), ("vary", "origin")]

    def preflight(self, request: Request) -> Headers | None:
        """The headers of the answer to a CORS preflight, or None when it is not one."""
        headers = request.headers
        if request.method != "OPTIONS" or "access-control-request-method" not in headers:
            return None
        self._check_host(headers.get("host"))
        origin = headers.get("origin")
        if origin is None or not self._origin_allowed(origin):
            raise Forbidden(f"origin {origin} is not allowed (--cors-origin)")
        asked = headers.get("access-control-request-headers") or "content-type"
        return [
            *self.cors_headers(request),
            ("access-control-allow-methods", "GET, POST, OPTIONS"),
            ("access-control-allow-headers", asked),
            ("access-control-max-age", _PREFLIGHT_MAX_AGE),
        ]

    def admit(self, request: Request) -> str:
        """Counts a request against its client address; `release` with what this returned."""
        client = client_host(request.client)
        count = self._in_flight.get(client, 0)
        if count >= self._max_per_client:
            raise TooManyRequests(
                f"more than {self._max_per_client} requests in flight from {client}"
            )
        self._in_flight[client] = count + 1
        return client

    def release(self, client: str) -> None:
        count = self._in_flight.pop(client, 1) - 1
        if count:
            self._in_flight[client] = count

    def _check_host(self, host: str | None) -> None:
        if self._any_host or host is None:
            return  # HTTP/1.0 without Host cannot be a browser's request
        name = _host_name(host)
        # DNS rebinding needs a name the attacker controls; an address typed as such cannot be.
        if name not in self._hosts and not _is_address(name):
            raise Forbidden(f"host {name} is not allowed (--allowed-host)")

    def _check_origin(self, origin: str | None) -> None:
        if origin is not None and not self._origin_allowed(origin):
            raise Forbidden(f"origin {origin} is not allowed (--cors-origin)")

    def _origin_allowed(self, origin: str) -> bool:
        return self._any_origin or origin.rstrip("/").lower() in self._origins


def _offered_key(headers: HeaderView) -> bytes:
    key = headers.get("x-api-key")
    if key is None:
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else ""
    return str(key).encode()


def _media_type(headers: HeaderView) -> str:
    return str(headers.get("content-type") or "").partition(";")[0].strip().lower()


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8080
        return host[1:].partition("]")[0]
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() and ":" not in name else host


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def from_loopback(client: str) -> bool:
    """Whether the peer (`address:port`, `[v6]:port`, or an address alone) is this machine."""
    return is_loopback(client_host(client)) or is_loopback(client)


def client_host(client: str) -> str:
    """The address of `host:port` as RSGI gives it (`[::1]:port` or `::1:port` for IPv6)."""
    host, _, port = client.rpartition(":")
    return (host if port.isdigit() else client).strip("[]")
