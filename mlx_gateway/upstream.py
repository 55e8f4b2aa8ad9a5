"""The only code that talks to the backend: one pooled aiohttp session, non-streaming and
streaming calls, and one context manager that maps every transport failure to a GatewayError,
also while a stream is being read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import aiohttp

from mlx_gateway.backends import BackendProfile
from mlx_gateway.context import context_overflow_error
from mlx_gateway.errors import (
    BackendFailed,
    BackendRejected,
    BackendUnavailable,
    GatewayError,
    InvalidRequest,
)
from mlx_gateway.openai import error_message_from_body

CHAT_PATH = "/v1/chat/completions"
_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
_MAX_ERROR_BODY = 2000


def backend_status_error(status: int, body: bytes, profile: BackendProfile) -> GatewayError:
    """A non-2xx answer as the error the client sees (see errors.py for why 4xx -> 400)."""
    message = error_message_from_body(body)
    overflow = context_overflow_error(message, body)
    if overflow is not None:
        return overflow
    if any(marker in message for marker in profile.image_refusal_markers):
        return InvalidRequest(f"the model does not accept images (backend said: {message})")
    if status >= 500:
        return BackendFailed(status, body.decode("utf-8", errors="replace")[:_MAX_ERROR_BODY])
    return BackendRejected(f"backend rejected the request (HTTP {status}): {message}")


@contextmanager
def mapped_transport_errors(timeout: float) -> Iterator[None]:
    try:
        yield
    except TimeoutError:
        raise BackendUnavailable(f"no answer within {timeout:g} s") from None
    except aiohttp.ClientConnectorError as exc:
        raise BackendUnavailable(
            f"cannot connect to {exc.host}:{exc.port} ({exc.os_error})"
        ) from None
    except aiohttp.ClientPayloadError as exc:
        raise BackendUnavailable(f"connection broke while reading the answer ({exc})") from None
    except aiohttp.ClientError as exc:
        raise BackendUnavailable(str(exc) or type(exc).__name__) from None
    except OSError as exc:
        raise BackendUnavailable(str(exc)) from None


class Upstream:
    """Owns the connection pool; made and closed inside the app's lifespan."""

    def __init__(
        self, base_url: str, profile: BackendProfile, timeout: float, total_timeout: float
    ) -> None:
        self.base_url = base_url
        self.profile = profile
        self.timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(
            total=total_timeout, sock_connect=timeout, sock_read=timeout
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._client_timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._session

    async def get_json_bytes(self, path: str) -> bytes:
        with mapped_transport_errors(self.timeout):
            async with self.session.get(self.base_url + path) as response:
                body = await response.read()
                if response.status >= 400:
                    raise backend_status_error(response.status, body, self.profile)
                return body

    async def post_json_bytes(self, path: str, body: bytes) -> bytes:
        """A JSON POST to one of the server's own endpoints (tokenize, model info)."""
        with mapped_transport_errors(self.timeout):
            async with self.session.post(
                self.base_url + path, data=body, headers=_JSON_HEADERS
            ) as response:
                answer = await response.read()
                if response.status >= 400:
                    raise backend_status_error(response.status, answer, self.profile)
                return answer

    async def complete(self, body: bytes) -> bytes:
        with mapped_transport_errors(self.timeout):
            async with self.session.post(
                self.base_url + CHAT_PATH, data=body, headers=_JSON_HEADERS
            ) as response:
                answer = await response.read()
                if response.status >= 400:
                    raise backend_status_error(response.status, answer, self.profile)
                return answer

    @asynccontextmanager
    async def stream(self, body: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        """Opens the stream (status errors raise here, before anything is sent to the client) and
        yields an iterator of raw byte pieces as they arrive. Leaving the block early closes the
        backend connection, so the model stops generating for a client that went away."""
        with mapped_transport_errors(self.timeout):
            response = await self.session.post(
                self.base_url + CHAT_PATH,
                data=body,
                headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
            )
        try:
            if response.status >= 400:
                with mapped_transport_errors(self.timeout):
                    answer = await response.read()
                raise backend_status_error(response.status, answer, self.profile)
            yield self._pieces(response)
        finally:
            # close(), not release(): an unfinished body must not go back to the pool.
            response.close()

    async def _pieces(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        iterator = response.content.iter_any().__aiter__()
        while True:
            with mapped_transport_errors(self.timeout):
                try:
                    piece = await iterator.__anext__()
                except StopAsyncIteration:
                    return
            yield piece
