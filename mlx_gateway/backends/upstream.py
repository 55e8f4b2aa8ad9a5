"""The only code that talks to the backend: one pooled client (httpclient.py), non-streaming and
streaming calls, and one context manager that maps every transport failure to a GatewayError,
also while a stream is being read.

Every request to the backend carries `X-MLX-Gateway-Hop`, and a gateway refuses requests that
carry it (server/app.py): a gateway whose backend is itself, or a gateway that forwards back to
it, answers 508 at once instead of sending the request round until something gives way.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec

from mlx_gateway.backends.context import context_overflow_error
from mlx_gateway.backends.httpclient import (
    ConnectError,
    HttpClient,
    PayloadError,
    Response,
    TransportError,
)
from mlx_gateway.backends.profiles import BackendProfile, start_hint
from mlx_gateway.errors import (
    BackendDown,
    BackendFailed,
    BackendRefused,
    BackendRejected,
    BackendUnavailable,
    GatewayError,
    LoopDetected,
    RateLimited,
)

CHAT_PATH = "/v1/chat/completions"
HOP_HEADER = "x-mlx-gateway-hop"  # lower case, as the server sees request headers
_HOP = b"X-MLX-Gateway-Hop: 1\r\n"
_ACCEPT_JSON = b"Accept: application/json\r\n" + _HOP
_JSON_HEADERS = b"Content-Type: application/json\r\n" + _ACCEPT_JSON
_SSE_HEADERS = b"Content-Type: application/json\r\nAccept: text/event-stream\r\n" + _HOP
# Marks the start-up check, so that a server's log (or a test's recording) can tell it apart.
_PROBE_HEADERS = _ACCEPT_JSON + b"X-MLX-Gateway-Probe: start-up\r\n"
_MAX_ERROR_BODY = 2000


def backend_status_error(
    status: int, body: bytes, profile: BackendProfile, retry_after: bytes | None = None
) -> GatewayError:
    """A non-2xx answer as the error the client sees (see errors.py for why 4xx -> 400): what
    refuses this request's content is a 400 whatever the status (the profile's table), a 429
    stays a retryable 429 with its `retry-after`, other 5xx are 502s."""
    message = error_message_from_body(body)[:_MAX_ERROR_BODY]
    if status == 508:  # another gateway refused a request that came round to it
        return LoopDetected(message)
    overflow = context_overflow_error(message, body)
    if overflow is not None:
        return overflow
    lowered = message.lower()
    for refusal in profile.refusals:
        if refusal.marker in lowered:
            return BackendRefused(f"{refusal.meaning} (backend said: {message})")
    if status == 429:
        return RateLimited(f"the backend is rate limiting: {message}", _seconds(retry_after))
    if status >= 500:
        return BackendFailed(status, body.decode("utf-8", errors="replace")[:_MAX_ERROR_BODY])
    return BackendRejected(f"backend rejected the request (HTTP {status}): {message}", status)


def _seconds(retry_after: bytes | None) -> float | None:
    """`retry-after` in seconds; an HTTP date is not worth parsing here (None)."""
    try:
        return max(float(retry_after), 0.0) if retry_after else None
    except ValueError:
        return None


class mapped_transport_errors:
    """Maps every transport failure to BackendUnavailable. A class rather than a generator
    context manager: it wraps every piece of every stream, and this costs a tenth as much."""

    __slots__ = ("timeout",)

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> None:
        if exc is not None:
            mapped = _transport_error(exc, self.timeout)
            if mapped is not None:
                raise mapped from None


def _transport_error(exc: BaseException, timeout: float) -> BackendUnavailable | None:
    if isinstance(exc, TimeoutError):
        return BackendUnavailable(f"no answer within {timeout:g} s")
    if isinstance(exc, ConnectError):
        return BackendUnavailable(
            f"cannot connect to {exc.host}:{exc.port} ({exc.os_error})", unreachable=True
        )
    if isinstance(exc, PayloadError):
        return BackendUnavailable(f"connection broke while reading the answer ({exc})")
    if isinstance(exc, TransportError | OSError):
        return BackendUnavailable(str(exc) or type(exc).__name__)
    return None


class DownWatch:
    """Decides when a backend that cannot be reached is known to be down, rather than briefly
    away: after `failures` connection failures in a row, or failures for `seconds`. A request
    that reaches the backend clears it. One small object, so that a fuller health model (a pool
    with probes) can take its place behind the same three calls."""

    def __init__(
        self,
        failures: int = 3,
        seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.seconds = seconds
        self.clock = clock
        self._count = 0
        self._since: float | None = None

    def failed(self) -> None:
        self._count += 1
        if self._since is None:
            self._since = self.clock()

    def reached(self) -> None:
        self._count, self._since = 0, None

    @property
    def down(self) -> bool:
        if self._since is None:
            return False
        return self._count >= self.failures or self.clock() - self._since >= self.seconds


@dataclass(frozen=True, slots=True)
class PoolSettings:
    idle_timeout: float = 30.0  # seconds an idle connection is kept open
    size: int = 64  # idle connections kept; more are closed, the oldest first


class Upstream:
    """Owns the connection pool; made and closed inside the app's lifespan."""

    def __init__(
        self,
        base_url: str,
        profile: BackendProfile,
        timeout: float,
        total_timeout: float,
        model: str = "",
        *,
        pool: PoolSettings | None = None,
    ) -> None:
        self.base_url = base_url
        self.profile = profile
        self.timeout = timeout
        self.total_timeout = total_timeout
        self.hint = start_hint(profile, base_url, model)
        self.watch = DownWatch()
        self.pool = pool or PoolSettings()
        self._client: HttpClient | None = None

    async def start(self) -> None:
        self._client = HttpClient(
            self.base_url,
            timeout=self.timeout,
            total_timeout=self.total_timeout,
            keepalive=self.pool.idle_timeout,
            max_idle=self.pool.size,
        )

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> HttpClient:
        if self._client is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._client

    async def get_json_bytes(self, path: str) -> bytes:
        return await self._exchange("GET", path, None, _ACCEPT_JSON)

    async def probe_models(self) -> bytes:
        """`GET /v1/models` as the start-up check."""
        return await self._exchange("GET", "/v1/models", None, _PROBE_HEADERS)

    async def post_json_bytes(self, path: str, body: bytes) -> bytes:
        """A JSON POST to one of the server's own endpoints (tokenize, model info)."""
        return await self._exchange("POST", path, body, _JSON_HEADERS)

    async def complete(self, body: bytes) -> bytes:
        return await self._exchange("POST", CHAT_PATH, body, _JSON_HEADERS)

    async def _exchange(self, method: str, path: str, body: bytes | None, headers: bytes) -> bytes:
        response = await self._open(method, path, body, headers)
        with mapped_transport_errors(self.timeout):
            answer = await response.read()
        if response.status >= 400:
            raise backend_status_error(response.status, answer, self.profile, response.retry_after)
        return answer

    async def _open(self, method: str, path: str, body: bytes | None, headers: bytes) -> Response:
        """Sends a request; a backend that cannot be reached is told with what to do about it,
        and once it is known to be down, as an error not worth retrying."""
        try:
            with mapped_transport_errors(self.timeout):
                response = await self.client.request(method, path, body, headers=headers)
        except BackendUnavailable as error:
            if not error.unreachable:
                raise
            self.watch.failed()
            kind = BackendDown if self.watch.down else BackendUnavailable
            raise kind(f"{error.reason}; {self.hint}", unreachable=True) from None
        self.watch.reached()
        return response

    @asynccontextmanager
    async def stream(self, body: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        """Opens the stream (status errors raise here, before anything is sent to the client) and
        yields an iterator of raw byte pieces as they arrive. Leaving the block early closes the
        backend connection, so the model stops generating for a client that went away."""
        response = await self._open("POST", CHAT_PATH, body, _SSE_HEADERS)
        try:
            if response.status >= 400:
                with mapped_transport_errors(self.timeout):
                    answer = await response.read()
                raise backend_status_error(
                    response.status, answer, self.profile, response.retry_after
                )
            yield _Pieces(response, self.timeout)
        finally:
            response.close()  # a no-op once the body is complete and pooled


class _Pieces:
    """The body of a stream as it arrives, with transport failures mapped on every read."""

    __slots__ = ("_errors", "_response")

    def __init__(self, response: Response, timeout: float) -> None:
        self._response = response
        self._errors = mapped_transport_errors(timeout)

    def __aiter__(self) -> _Pieces:
        return self

    async def __anext__(self) -> bytes:
        with self._errors:
            return await self._response.__anext__()


_object_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


def error_message_from_body(body: bytes) -> str:
    """The human part of a backend error body: `{"error": "..."}` (mlx_lm), `{"error": {"message"}}`
    (OpenAI, vLLM, llama.cpp, Ollama), `{"detail": ...}` (FastAPI servers), or the raw text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = _object_decoder.decode(body)
    except msgspec.DecodeError:
        return text[:_MAX_ERROR_BODY]
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed.get("detail", parsed.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if isinstance(error, str):
            return error
        if error is not None:
            return msgspec.json.encode(error).decode()
    return text[:_MAX_ERROR_BODY]
