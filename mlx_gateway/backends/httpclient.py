"""A small HTTP/1.1 client for the one backend the gateway talks to.

It does only what a gateway needs of one origin: pooled keep-alive connections, a request with a
bytes body, the answer's status and its body whole or piece by piece as it arrives, and three
timeouts (connecting, silence while an answer is awaited, and a ceiling on the whole exchange).
The HTTP framing itself (status line, headers, Content-Length, chunked bodies, keep-alive rules)
is parsed by httptools, the llhttp binding that uvicorn uses, so no byte of HTTP syntax is
interpreted here; a body without either length header runs until the server closes.

Why not aiohttp's client, which the gateway used before: on the benchmark's small request it
spent ~80 us per exchange (request and response objects, header multidicts, cookie filtering,
timer handles, traces), twice the cost of the rest of the gateway together; this exchange costs
~10 us. Failures are raised as the exceptions below (plus TimeoutError and OSError), which
upstream.py maps to gateway errors exactly as it mapped aiohttp's.

A POST is never sent twice. A GET that meets a pooled connection the server has just closed is
retried once on a new connection, as aiohttp does for idempotent requests.
"""

from __future__ import annotations

import asyncio
import select
import ssl
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

__all__ = ["ConnectError", "HttpClient", "PayloadError", "Response", "TransportError"]

HIGH_WATER = 1 << 20  # buffered body bytes at which reading from the socket pauses


class TransportError(Exception):
    """The exchange failed after connecting (the message says how)."""


class ConnectError(TransportError):
    def __init__(self, host: str, port: int, os_error: OSError) -> None:
        super().__init__(f"cannot connect to {host}:{port} ({os_error})")
        self.host = host
        self.port = port
        self.os_error = os_error


class PayloadError(TransportError):
    """The answer had begun, and its body broke off or was not valid HTTP."""


class _Connection(asyncio.Protocol):
    """One socket; carries one exchange at a time. httptools calls the ``on_*`` methods."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        # httptools calls on_body once per chunk of a chunked body, that is once per token of a
        # stream: it is the list's own append, with no Python frame (the high-water check is
        # per read, in data_received). The list is cleared, never replaced, to keep it bound.
        self._pieces: list[bytes] = []
        self.on_body: Callable[[bytes], None] = self._pieces.append
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.idle_since = 0.0
        # The server's own idle limit (`Keep-Alive: timeout=N`), when it states one.
        self.server_idle_limit: float | None = None
        self._begin(0.0)

    def _begin(self, deadline: float) -> None:
        self._deadline = deadline
        self._last_read = self._loop.time()
        self.status = 0
        self._pieces.clear()
        self._size = 0
        self._framed = False  # Content-Length or Transfer-Encoding seen
        self.retry_after: bytes | None = None
        self.done = False
        self.keep_alive = False
        self._error: BaseException | None = None
        self._paused = False

    # ---- the exchange -------------------------------------------------------------------------

    def send(self, head: bytes, body: bytes | None, deadline: float) -> None:
        if self._transport is None or self.closed:
            raise TransportError("Server disconnected")
        self._begin(deadline)
        self._transport.writelines((head, body) if body else (head,))

    async def read_head(self) -> int:
        while not self.status:
            await self._wait()
        return self.status

    async def next_piece(self) -> bytes | None:
        """The body bytes received since the last call; None once the body is complete."""
        while not self._pieces:
            if self.done:
                return None
            await self._wait()
        return self._take()

    async def body(self) -> bytes:
        """The whole body, for answers that are read whole (nothing to hold back for)."""
        while not self.done:
            self._resume()
            await self._wait()
        return self._take()

    def _take(self) -> bytes:
        body = b"".join(self._pieces)  # one piece comes back as itself, uncopied
        self._pieces.clear()
        self._size = 0
        self._resume()
        return body

    def _resume(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        if self.closed:
            raise TransportError("Server disconnected")
        self._waiter = self._loop.create_future()
        self._timer = self._loop.call_at(self._wake_time(), self._check_time)
        try:
            await self._waiter
        finally:
            self._waiter = None
            self._timer.cancel()

    def _wake_time(self) -> float:
        return min(self._last_read + self._timeout, self._deadline)

    def _check_time(self) -> None:
        """Silence for `timeout` seconds, or the whole exchange past its deadline, ends it."""
        if self._waiter is None or self._waiter.done():
            return
        if self._loop.time() >= self._wake_time():
            self._waiter.set_exception(TimeoutError())
        else:
            self._timer = self._loop.call_at(self._wake_time(), self._check_time)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def looks_alive(self) -> bool:
        """Whether an idle connection has nothing to read. Anything readable on it is the
        server's close that the loop has not handled yet: llama-server closes the connection
        after every streamed answer although it says keep-alive, and a POST sent on it then
        fails and cannot be sent again. One poll(2) with no wait, as curl checks a connection
        before reusing it."""
        socket = self._transport.get_extra_info("socket") if self._transport else None
        if socket is None:
            return True
        poller = select.poll()
        poller.register(socket.fileno(), select.POLLIN)
        return not poller.poll(0)

    # ---- asyncio ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def data_received(self, data: bytes) -> None:
        self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._error = PayloadError(f"the answer is not valid HTTP ({exc})")
            self.close()
        if self._pieces:
            self._size += len(data)  # framing included: a bound, not an exact count
            if self._size > HIGH_WATER and not self._paused and self._transport is not None:
                self._paused = True
                self._transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done and self._error is None:
            if self.status and not self._framed:
                self.done = True  # a body delimited by the end of the connection
            elif self.status:
                self._error = PayloadError("the connection closed before the body was complete")
            else:
                self._error = TransportError(str(exc) if exc else "Server disconnected")
        self._wake()

    # ---- httptools ----------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered in (b"content-length", b"transfer-encoding"):
            self._framed = True
        elif lowered == b"retry-after":  # the one header a gateway passes on (a 429's)
            self.retry_after = value
        elif lowered == b"keep-alive":
            self.server_idle_limit = keepalive_timeout(value)

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_message_complete(self) -> None:
        self.done = True
        self.keep_alive = self._parser.should_keep_alive()


class Response:
    """An answer whose head has arrived; its body is read with read() or by async iteration.
    The connection goes back to the pool once the body is complete; close() drops it early."""

    __slots__ = ("_client", "_connection", "retry_after", "status")

    def __init__(self, status: int, connection: _Connection, client: HttpClient) -> None:
        self.status = status
        self.retry_after = connection.retry_after
        self._connection: _Connection | None = connection
        self._client = client

    async def read(self) -> bytes:
        """The rest of the body, whole."""
        connection = self._connection
        if connection is None:
            return b""
        try:
            body = await connection.body()
        except BaseException:
            self.close()
            raise
        self._connection = None
        self._client.release(connection)
        return body

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        connection = self._connection
        if connection is None:
            raise StopAsyncIteration
        try:
            piece = await connection.next_piece()
        except BaseException:
            self.close()
            raise
        if piece is None:
            self._connection = None
            self._client.release(connection)
            raise StopAsyncIteration
        return piece

    def close(self) -> None:
        """Ends the exchange; an unfinished body closes the connection (the server stops)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class HttpClient:
    """Keep-alive connections to one origin (`base_url`, whose path prefixes every request)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        total_timeout: float,
        keepalive: float = 30.0,
        max_idle: int = 64,
    ) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        self._host_header = parts.netloc.rpartition("@")[2].encode("idna")
        self.timeout = timeout
        self.total_timeout = total_timeout
        self.keepalive = keepalive
        self.max_idle = max_idle
        self._idle: list[_Connection] = []  # oldest first; the newest is taken first
        self._sweep: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    async def request(
        self, method: str, path: str, body: bytes | None = None, *, headers: bytes = b""
    ) -> Response:
        """Sends the request and waits for the answer's head. `headers` are whole header lines
        (`Name: value\\r\\n`); Host and Content-Length are added here."""
        deadline = self._loop.time() + self.total_timeout
        head = self._head(method, path, body, headers)
        connection = self._pooled()
        reused = connection is not None
        if connection is None:
            connection = await self._connect(deadline)
        try:
            connection.send(head, body, deadline)
            status = await connection.read_head()
        except TransportError:
            connection.close()
            if not (reused and method == "GET"):
                raise
            connection = await self._connect(deadline)
            return await self._send_again(connection, head, body, deadline)
        except BaseException:
            connection.close()
            raise
        return Response(status, connection, self)

    async def _send_again(
        self, connection: _Connection, head: bytes, body: bytes | None, deadline: float
    ) -> Response:
        try:
            connection.send(head, body, deadline)
            status = await connection.read_head()
        except BaseException:
            connection.close()
            raise
        return Response(status, connection, self)

    def _head(self, method: str, path: str, body: bytes | None, headers: bytes) -> bytes:
        length = b"Content-Length: %d\r\n" % len(body) if body is not None else b""
        target = (self._prefix + path).encode()
        return b"%s %s HTTP/1.1\r\nHost: %s\r\n%s%s\r\n" % (
            method.encode(),
            target,
            self._host_header,
            headers,
            length,
        )

    def _pooled(self) -> _Connection | None:
        """The most recently used idle connection that is still open and fresh."""
        now = self._loop.time()
        while self._idle:
            connection = self._idle.pop()
            idle = now - connection.idle_since
            alive = not connection.closed and connection.looks_alive()
            if alive and idle < self._idle_limit(connection):
                return connection
            connection.close()
        return None

    def _idle_limit(self, connection: _Connection) -> float:
        """Ours, or a second under the server's: a POST on a connection the server is closing
        fails and cannot be sent again (llama-server closes connections idle for 5 s)."""
        server = connection.server_idle_limit
        return self.keepalive if server is None else min(self.keepalive, server - 1.0)

    async def _connect(self, deadline: float) -> _Connection:
        loop, server_hostname = self._loop, (self.host if self._ssl else None)
        try:
            async with asyncio.timeout(min(self.timeout, deadline - loop.time())):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, self.timeout),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=server_hostname,
                )
        except TimeoutError:
            raise
        except OSError as exc:
            raise ConnectError(self.host, self.port, exc) from None
        return connection

    def release(self, connection: _Connection) -> None:
        if not connection.keep_alive or connection.closed:
            connection.close()
            return
        connection.idle_since = self._loop.time()
        self._idle.append(connection)
        if len(self._idle) > self.max_idle:
            self._idle.pop(0).close()
        if self._sweep is None:
            self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        self._sweep = self._loop.call_at(self._idle[0].idle_since + self.keepalive, self._expire)

    def _expire(self) -> None:
        """Closes what has been idle for `keepalive` seconds, on a timer: after a burst the
        descriptors go back without waiting for the next request to find them stale."""
        self._sweep = None
        now, idle = self._loop.time(), self._idle
        while idle and (idle[0].closed or now - idle[0].idle_since >= self.keepalive):
            idle.pop(0).close()
        if idle:
            self._schedule_sweep()

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def keepalive_timeout(value: bytes) -> float | None:
    """`timeout=5, max=100` -> 5.0; None when the header states no timeout."""
    for part in value.split(b","):
        name, _, number = part.strip().partition(b"=")
        if name.strip().lower() == b"timeout":
            try:
                return float(number)
            except ValueError:
                return None
    return None
