"""The HTTP server edge, on granian's RSGI interface: requests are read and routed here, answers
and event streams written, and every failure handed back as a GatewayError for the app to render
in the caller's protocol. Handlers see only `Request`, `Reply` and `EventStream`.

Why granian and not aiohttp's server, which the gateway used before: HTTP parsing, keep-alive and
response framing run in granian's compiled core, off the Python hot path. With the same handlers
the benchmark's small request went from about 3,800 to 5,300 requests per second on one core.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings, HTTP2Settings
from granian.log import LogLevels
from granian.rsgi import ProtocolClosed  # type: ignore[attr-defined]  # re-exported by granian
from granian.server.embed import Server

from mlx_gateway.errors import (
    GatewayError,
    IncompleteBody,
    LoopDetected,
    MethodNotAllowed,
    NestedTooDeeply,
    NotFound,
    RequestTimeout,
    RequestTooLarge,
)
from mlx_gateway.server.observe import CLIENT_GONE, Observer, RequestRecord

log = logging.getLogger("mlx_gateway")

Headers = list[tuple[str, str]]


class HeaderView(Protocol):
    """The request's headers; names are lower case."""

    def __contains__(self, name: str) -> bool: ...

    def get(self, name: str, default: Any = None) -> Any: ...


class Request:
    """What a handler sees of a request; `stream` is set once it starts a streamed answer;
    `record` takes what the handler learns for the access log and the metrics;
    `extra_headers` go on every answer to it (those of an allowed web origin)."""

    __slots__ = (
        "_proto",
        "body",
        "client",
        "extra_headers",
        "headers",
        "method",
        "path",
        "record",
        "stream",
    )

    def __init__(
        self,
        method: str,
        path: str,
        headers: HeaderView,
        body: bytes,
        proto: Any,
        *,
        record: RequestRecord | None = None,
        client: str = "",
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.client = client  # "address:port" of the peer
        self.stream: EventStream | None = None
        self.extra_headers: Headers = []
        self.record = record if record is not None else RequestRecord(method, path)
        self._proto = proto

    def committed(self) -> bool:
        """Whether the answer has begun: from then on a failure can only end the stream."""
        return self.stream is not None

    def open_stream(self, headers: Headers) -> EventStream:
        """Starts a 200 answer whose body is written piece by piece."""
        if self.extra_headers:
            headers = headers + self.extra_headers
        self.stream = EventStream(self._proto.response_stream(200, headers))
        return self.stream


class Reply:
    """A whole answer."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, body: bytes, status: int = 200, headers: Headers | None = None) -> None:
        self.body = body
        self.status = status
        self.headers = headers if headers is not None else JSON_HEADERS


JSON_HEADERS: Headers = [("content-type", "application/json")]

_json = msgspec.json.Encoder()


def json_reply(body: Any, status: int = 200) -> Reply:
    return Reply(_json.encode(body), status)


class EventStream:
    """The body of a streamed answer. A client that went away shows as ConnectionResetError.

    granian ends the body when its transport object is freed, not when the handler returns, so
    the transport is held here only and released by `end`: a reference cycle that outlives the
    request (an exception's traceback) must not keep the client waiting for the end."""

    __slots__ = ("_transport",)

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    async def write(self, data: bytes) -> None:
        if self._transport is None:
            raise ConnectionResetError("the stream has ended")
        try:
            await self._transport.send_bytes(data)
        except ProtocolClosed as exc:
            raise ConnectionResetError("client went away") from exc

    async def close(self, data: bytes = b"") -> None:
        """Writes the last piece and ends the body."""
        if data:
            await self.write(data)
        self.end()

    def end(self) -> None:
        self._transport = None


Handler = Callable[[Request], Awaitable[Reply | EventStream]]
ErrorRenderer = Callable[[Request, GatewayError], Reply]


class Gatekeeper(Protocol):
    """Who may use the gateway (server/guard.py): checks run before a request's route."""

    def preflight(self, request: Request) -> Headers | None: ...

    def check(self, request: Request) -> None: ...

    def cors_headers(self, request: Request) -> Headers: ...

    def admit(self, request: Request) -> str: ...

    def release(self, client: str) -> None: ...


class RSGIApp:
    """Checks who asks, routes by path then method, reads the body under a size and a time
    limit, and cancels a handler whose client went away (a local model should not keep
    generating an answer nobody reads)."""

    def __init__(
        self,
        routes: Mapping[str, Mapping[str, Handler]],
        render_error: ErrorRenderer,
        guard: Gatekeeper,
        limits: BodyLimits,
        *,
        on_start: Callable[[], Awaitable[None]],
        on_stop: Callable[[], Awaitable[None]],
        observer: Observer | None = None,
        loop_header: str = "",
    ) -> None:
        self.routes = routes
        self.loop_header = loop_header
        self.render_error = render_error
        self.guard = guard
        self.limits = limits
        self.on_start = on_start
        self.on_stop = on_stop
        self.observer = observer if observer is not None else Observer()

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        record = self.observer.begin(scope.method, scope.path)
        request = Request(
            scope.method, scope.path, scope.headers, b"", proto, record=record, client=scope.client
        )
        try:
            answer = await self._answer(request, proto)
        finally:
            self.observer.end(record)
        if answer is not None:
            headers = answer.headers + request.extra_headers if request.extra_headers else None
            proto.response_bytes(answer.status, headers or answer.headers, answer.body)

    async def _answer(self, request: Request, proto: Any) -> Reply | None:
        """The whole answer to write, or None when a stream was written (or nobody listens)."""
        record = request.record
        try:
            answer = await self._admitted(request, proto)
        except GatewayError as error:
            record.failed(error)
            answer = self.render_error(request, error)
        except ConnectionResetError as gone:
            log.debug("%s on %s %s", gone, request.method, request.path)
            record.status = CLIENT_GONE
            return None
        except RecursionError:
            # Only a request nested past what Python follows gets this deep (limits.py).
            too_deep = NestedTooDeeply()
            record.failed(too_deep)
            answer = self.render_error(request, too_deep)
        except Exception:
            log.exception("unexpected failure on %s %s", request.method, request.path)
            failure = GatewayError("internal gateway error; see the gateway log")
            record.failed(failure)
            answer = self.render_error(request, failure)
        finally:
            if request.stream is not None:
                request.stream.end()
        if isinstance(answer, Reply) and request.stream is None:
            record.status = answer.status
            return answer
        record.status = 200
        return None

    async def _admitted(self, request: Request, proto: Any) -> Reply | EventStream:
        """Asks the guard, then reads the body and runs the route's handler."""
        guard = self.guard
        preflight = guard.preflight(request)
        if preflight is not None:
            return Reply(b"", 204, preflight)
        guard.check(request)
        request.extra_headers = guard.cors_headers(request)
        handler = self._route(request)
        client = guard.admit(request)
        try:
            request.body = await self._read_body(request, proto)
            return await _cancelled_when_client_leaves(handler(request), proto)
        finally:
            guard.release(client)

    def _route(self, request: Request) -> Handler:
        if self.loop_header and self.loop_header in request.headers:
            raise LoopDetected(
                "this request came from an mlx-gateway: a gateway's --mlx-url points at this "
                "gateway (or at one that forwards back to it); point --mlx-url at the model server"
            )
        methods = self.routes.get(request.path)
        if methods is None:
            raise NotFound(f"no route for {request.method} {request.path}")
        request.record.route = request.path
        handler = methods.get(request.method)
        if handler is None:
            raise MethodNotAllowed(f"method {request.method} is not allowed on {request.path}")
        return handler

    async def _read_body(self, request: Request, proto: Any) -> bytes:
        """The whole body, within the time limit; a body cut short is the client's fault."""
        seconds = self.limits.body_timeout
        try:
            async with asyncio.timeout(seconds):
                return await self._receive(request, proto)
        except TimeoutError:
            raise RequestTimeout(f"the request body did not arrive within {seconds:g} s") from None
        except ProtocolClosed:
            raise IncompleteBody("the request body ended before it was complete") from None

    async def _receive(self, request: Request, proto: Any) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.limits.max_body_bytes:
                raise self._too_large()
            body: bytes = await proto()
            if len(body) != int(declared):
                raise IncompleteBody("the request body ended before its Content-Length")
            return body
        pieces, size = [], 0  # chunked: counted as it comes
        async for piece in proto:
            size += len(piece)
            if size > self.limits.max_body_bytes:
                raise self._too_large()
            pieces.append(piece)
        return b"".join(pieces)

    def _too_large(self) -> RequestTooLarge:
        limit_mb = self.limits.max_body_bytes / (1024 * 1024)
        return RequestTooLarge(f"request body is larger than the limit of {limit_mb:g} MB")


@dataclass(frozen=True, slots=True)
class BodyLimits:
    max_body_bytes: int
    body_timeout: float


async def _cancelled_when_client_leaves(
    answer: Awaitable[Reply | EventStream], proto: Any
) -> Reply | EventStream:
    """Awaits the handler; if the client disconnects first, the handler is cancelled where it
    waits (which closes its backend request) and ConnectionResetError is raised instead."""
    task = asyncio.current_task()
    assert task is not None
    watch = proto.client_disconnect()  # a future already, which ensure_future would only check

    def cancel_answer(_: object) -> None:
        task.cancel()

    watch.add_done_callback(cancel_answer)
    try:
        return await answer
    except asyncio.CancelledError:
        if not watch.done() or watch.cancelled():
            raise
        task.uncancel()
        raise ConnectionResetError("client went away before the answer") from None
    finally:
        watch.remove_done_callback(cancel_answer)
        watch.cancel()


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What granian itself enforces on client connections, before the gateway sees a request."""

    header_timeout: float  # seconds to send the headers; also an idle keep-alive's limit
    max_connections: int  # per worker; more wait in the listen backlog until one closes
    max_header_bytes: int  # a head past this is a 431
    max_streams: int  # concurrent requests on one HTTP/2 connection


async def serve(app: RSGIApp, host: str, port: int, limits: ConnectionLimits) -> None:
    """Serves until SIGINT or SIGTERM. granian binds with SO_REUSEPORT, so `--workers`
    processes share the port; cli.claim_port keeps a lone gateway's port its own."""
    server = Server(
        app,
        address=host,
        port=port,
        interface=Interfaces.RSGI,
        http=HTTPModes.auto,
        websockets=False,
        backlog=128,
        backpressure=limits.max_connections,
        http1_settings=HTTP1Settings(
            header_read_timeout=int(limits.header_timeout * 1000),
            max_buffer_size=max(limits.max_header_bytes, 8192),
        ),
        http2_settings=HTTP2Settings(
            max_concurrent_streams=limits.max_streams,
            max_headers_size=limits.max_header_bytes,
        ),
        # The server's own errors go through the gateway's log; its notices do not.
        log_level=LogLevels.error,
        log_dictconfig={"loggers": {"_granian": {"handlers": [], "propagate": True}}},
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, server.stop)
    await app.on_start()
    try:
        await server.serve()
    finally:
        await app.on_stop()
