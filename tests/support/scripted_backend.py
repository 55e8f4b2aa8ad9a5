"""A scripted OpenAI-compatible model server for integration tests.

Tests queue the replies the "model" gives (`Completion`, `Stream`, `HttpError`, ...) and afterwards
inspect what it received (`requests`, `last_json()`, `disconnects`). It is a real HTTP server on a
loopback port so the gateway under test talks to it exactly as it talks to mlx_lm.server or Ollama.

The server runs on its own event loop in a background thread: synchronous tests driving the
official SDK clients and async code can share it, and a test can block (`wait_for_requests`) while
the server keeps answering. The port is chosen when the object is built, so a test can give the
gateway the URL of a backend that is not running yet, and `stop()` / `start()` takes the backend
down and brings it back on the same address.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Self, TypeAlias

import pytest
from aiohttp import web

from tests.support.ports import free_port

__all__ = [
    "Completion", "Delay", "Drop", "DropConnection", "Hang", "HttpError", "Malformed", "Pause",
    "RecordedRequest", "Reply", "ScriptedBackend", "Stream", "chunk", "scripted_backend",
    "text_stream",
]

DEFAULT_MODEL = "scripted-model"
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")  # some clients omit /v1
SSE_HEADERS: Final = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
DEFAULT_USAGE: Final = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}  # copied


def default_usage() -> dict[str, Any]:
    return dict(DEFAULT_USAGE)


# --- replies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pause:
    """Inside a `Stream`: wait before the next item."""

    seconds: float


@dataclass(frozen=True)
class Drop:
    """Inside a `Stream`: abort the connection here, without a terminating chunk."""


StreamItem: TypeAlias = dict[str, Any] | bytes | Pause | Drop


@dataclass(frozen=True)
class Completion:
    """A non-streamed `chat.completion` answer."""

    text: str | None = "hello"
    finish_reason: str | None = "stop"
    usage: dict[str, Any] | None = field(default_factory=default_usage)
    tool_calls: list[dict[str, Any]] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    extra_message: dict[str, Any] | None = None
    extra_choice: dict[str, Any] | None = None  # e.g. vLLM's {"stop_reason": "END"}
    delay: float = 0
    model: str | None = None


@dataclass(frozen=True)
class Stream:
    """A `text/event-stream` answer: dict chunks go out as `data:` events, bytes verbatim."""

    chunks: list[StreamItem]
    usage: dict[str, Any] | None = field(default_factory=default_usage)
    done: bool = True
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpError:
    """An error status; a dict body is sent as JSON, str/bytes as text unless told otherwise."""

    status: int
    body: bytes | str | dict[str, Any]
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Malformed:
    """A body that claims to be JSON and is not."""

    body: bytes = b"{not json"
    status: int = 200
    content_type: str = "application/json"


@dataclass(frozen=True)
class DropConnection:
    """Close the connection without answering."""


@dataclass(frozen=True)
class Hang:
    """Never answer; ends only when the client disconnects or the server stops."""


@dataclass(frozen=True)
class Delay:
    """Wait, then answer with `then`."""

    seconds: float
    then: Reply


Reply: TypeAlias = Completion | Stream | HttpError | Malformed | DropConnection | Hang | Delay


def chunk(
    delta: dict[str, Any],
    finish_reason: str | None = None,
    *,
    model: str = DEFAULT_MODEL,
    chunk_id: str = "chatcmpl-scripted",
) -> dict[str, Any]:
    """One `chat.completion.chunk` with a single choice."""
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def text_stream(
    text_pieces: Sequence[str],
    finish_reason: str = "stop",
    usage: dict[str, Any] | None = DEFAULT_USAGE,
    *,
    reasoning_pieces: Sequence[str] = (),
    reasoning_field: str = "reasoning_content",
    tool_call_deltas: Sequence[dict[str, Any]] = (),
    model: str = DEFAULT_MODEL,
) -> Stream:
    """A realistic stream: role chunk, reasoning, text, tool-call deltas, then the finish chunk."""
    chunks: list[StreamItem] = [chunk({"role": "assistant", "content": ""}, model=model)]
    chunks += [chunk({reasoning_field: piece}, model=model) for piece in reasoning_pieces]
    chunks += [chunk({"content": piece}, model=model) for piece in text_pieces]
    chunks += [chunk({"tool_calls": [delta]}, model=model) for delta in tool_call_deltas]
    chunks.append(chunk({}, finish_reason, model=model))
    return Stream(chunks, usage=None if usage is None else dict(usage))


# --- what was received ---------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as received; header names are lower-cased."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Answer: TypeAlias = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]


class ScriptedBackend:
    """An OpenAI-compatible server that answers chat completions with queued replies.

    `requests` holds every request received, in order. `disconnects` holds the index (into
    `requests`) of each chat request whose client went away before its reply was complete: a
    stream cut short, or a `Hang` / `Delay` / delayed `Completion` abandoned while it waited.
    Connections the script closes itself (`Drop`, `DropConnection`) and replies cancelled by
    `stop()` are not disconnects.
    """

    def __init__(self, model: str = DEFAULT_MODEL, port: int | None = None) -> None:
        self.model = model
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[RecordedRequest] = []
        self.disconnects: list[int] = []
        self._replies: deque[Reply] = deque()
        self._responder: Callable[[RecordedRequest], Reply] | None = None
        self._changed = threading.Condition()  # guards the lists above; wakes the wait_for_* calls
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._answers: dict[type[Any], Answer] = {
            Completion: self._complete,
            Stream: self._stream,
            HttpError: self._http_error,
            Malformed: self._malformed,
            DropConnection: self._drop_connection,
            Hang: self._hang,
            Delay: self._delay,
        }

    # --- control, from the test's thread

    def start(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=_run_loop, args=(loop,), name=f"scripted-backend-{self.port}", daemon=True
        )
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=10)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            raise
        self._loop, self._thread = loop, thread

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if threading.current_thread() is thread:
            raise RuntimeError("scripted backend: stop() called from its own loop (a responder?)")
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._loop = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def queue(self, *replies: Reply) -> None:
        with self._changed:
            self._replies.extend(replies)

    def set_responder(self, fn: Callable[[RecordedRequest], Reply] | None) -> None:
        self._responder = fn

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:
        self._wait_until(lambda: len(self.requests) >= n, timeout, f"{n} request(s)")

    def wait_for_chat_requests(self, n: int, timeout: float = 5.0) -> None:
        """Like wait_for_requests, counting chat requests only (not the gateway's probes)."""
        self._wait_until(lambda: len(self.chat_requests) >= n, timeout, f"{n} chat request(s)")

    def wait_for_disconnect(self, timeout: float = 5.0, n: int = 1) -> None:
        self._wait_until(lambda: len(self.disconnects) >= n, timeout, f"{n} disconnect(s)")

    def last_json(self) -> dict[str, Any]:
        with self._changed:
            posts = [request for request in self.requests if request.method == "POST"]
        if not posts:
            raise AssertionError("scripted backend: no POST received")
        body: dict[str, Any] = posts[-1].json()
        return body

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The chat-completion requests only (without model listings or health checks)."""
        with self._changed:
            return [r for r in self.requests if r.method == "POST" and r.path in CHAT_PATHS]

    def _wait_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(done, timeout):
                seen = [f"{r.method} {r.path}" for r in self.requests]
                raise AssertionError(
                    f"scripted backend: no {what} within {timeout}s; requests: {seen}, "
                    f"disconnects: {self.disconnects}"
                )

    # --- lifecycle, on the server's loop

    async def _serve(self) -> None:
        # Agent conversations with tool schemas easily exceed aiohttp's 1 MiB default.
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # handler_cancellation: a handler is cancelled as soon as its client goes away, which is
        # how a hanging or paused reply notices the disconnect.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def _shutdown(self) -> None:
        # Open handlers (hangs, long streams) are cancelled rather than awaited so stop() is quick.
        self._stopping = True
        try:
            for task in self._handlers:
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
        finally:
            self._stopping = False

    # --- serving

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        index = self._record(request, await request.read())
        if request.method == "GET" and request.path == "/v1/models":
            return web.json_response(self._models())
        if request.method == "GET" and request.path == "/health":
            return web.json_response({"status": "ok"})
        if request.method == "POST" and request.path in CHAT_PATHS:
            return await self._chat(request, index)
        error = f"scripted backend: no route for {request.method} {request.path}"
        return web.json_response({"error": error}, status=404)

    def _record(self, request: web.Request, body: bytes) -> int:
        """Appends the request to `requests`, except the gateway's start-up check, which would
        otherwise be every test's first request; returns its index (-1 when not recorded)."""
        headers = {name.lower(): value for name, value in request.headers.items()}
        if "x-mlx-gateway-probe" in headers:
            return -1
        recorded = RecordedRequest(
            request.method, request.path, request.query_string, headers, body
        )
        with self._changed:
            self.requests.append(recorded)
            self._changed.notify_all()
            return len(self.requests) - 1

    def _record_disconnect(self, index: int) -> None:
        with self._changed:
            self.disconnects.append(index)
            self._changed.notify_all()

    def _models(self) -> dict[str, Any]:
        # mlx_lm.server's own answer (no `owned_by`): the gateway's probe takes the scripted
        # backend for the server it stands in for.
        model = {"id": self.model, "object": "model", "created": 0}
        return {"object": "list", "data": [model]}

    async def _chat(self, request: web.Request, index: int) -> web.StreamResponse:
        reply = self._next_reply(self.requests[index])
        if reply is None:
            error = "scripted backend: no reply queued"
            return web.json_response({"error": error}, status=500)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            return await self._answer(request, reply)
        except asyncio.CancelledError:  # the client went away while the reply waited, or stop()
            if not self._stopping:
                self._record_disconnect(index)
            raise
        except ConnectionResetError:  # the client went away while the reply was being written
            self._record_disconnect(index)
            return web.Response()  # nobody is listening; aiohttp drops it quietly
        finally:
            self._handlers.discard(task)

    def _next_reply(self, recorded: RecordedRequest) -> Reply | None:
        responder = self._responder
        if responder is not None:
            try:
                return responder(recorded)
            except Exception as exc:  # a broken script should fail the test visibly, not hang it
                return HttpError(500, {"error": f"scripted backend: responder failed: {exc!r}"})
        with self._changed:
            return self._replies.popleft() if self._replies else None

    async def _answer(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        return await self._answers[type(reply)](request, reply)

    async def _complete(self, request: web.Request, reply: Completion) -> web.StreamResponse:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        model = reply.model or _model_of(await request.read(), self.model)
        return web.json_response(_completion_body(reply, model))

    async def _stream(self, request: web.Request, reply: Stream) -> web.StreamResponse:
        model = _model_of(await request.read(), self.model)
        response = web.StreamResponse(headers={**SSE_HEADERS, **reply.headers})
        await response.prepare(request)  # sends the status line and headers right away
        for item in _stream_items(reply, model):
            if isinstance(item, Pause):
                await asyncio.sleep(item.seconds)
            elif isinstance(item, Drop):
                _abort(request)
                return response
            else:
                await response.write(item)  # goes to the socket now: aiohttp does not buffer
        await response.write_eof()
        return response

    async def _http_error(self, request: web.Request, reply: HttpError) -> web.StreamResponse:
        if isinstance(reply.body, dict):
            body, content_type = json.dumps(reply.body).encode(), "application/json"
        elif isinstance(reply.body, str):
            body, content_type = reply.body.encode(), "text/plain; charset=utf-8"
        else:
            body, content_type = reply.body, "text/plain"
        headers = {"Content-Type": reply.content_type or content_type, **reply.headers}
        return web.Response(status=reply.status, body=body, headers=headers)

    async def _malformed(self, request: web.Request, reply: Malformed) -> web.StreamResponse:
        as_error = HttpError(reply.status, reply.body, reply.content_type)
        return await self._http_error(request, as_error)

    async def _drop_connection(
        self, request: web.Request, reply: DropConnection
    ) -> web.StreamResponse:
        _abort(request)
        return web.Response()  # never sent: writing to the aborted transport fails quietly

    async def _hang(self, request: web.Request, reply: Hang) -> web.StreamResponse:
        await asyncio.Event().wait()  # nobody sets it: only a disconnect or stop() ends the wait
        raise AssertionError("unreachable")

    async def _delay(self, request: web.Request, reply: Delay) -> web.StreamResponse:
        await asyncio.sleep(reply.seconds)
        return await self._answer(request, reply.then)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()  # RST-like close: no chunk terminator, no response


def _model_of(body: bytes, fallback: str) -> str:
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return fallback
    return model if isinstance(model, str) else fallback


def _completion_body(reply: Completion, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    optional = {
        "tool_calls": reply.tool_calls,
        "reasoning_content": reply.reasoning_content,
        "reasoning": reply.reasoning,
    }
    message.update({key: value for key, value in optional.items() if value is not None})
    message.update(reply.extra_message or {})
    body: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": reply.finish_reason,
                **(reply.extra_choice or {}),
            }
        ],
    }
    if reply.usage is not None:
        body["usage"] = reply.usage
    return body


def _stream_items(reply: Stream, model: str) -> Iterator[bytes | Pause | Drop]:
    """The stream as wire bytes and control items, ending with the usage chunk and [DONE]."""
    for item in reply.chunks:
        yield _event(item) if isinstance(item, dict) else item
    if reply.usage is not None:
        first = next((item for item in reply.chunks if isinstance(item, dict)), {})
        usage_chunk = {
            "id": first.get("id", f"chatcmpl-{uuid.uuid4().hex[:24]}"),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": first.get("model", model),
            "choices": [],
            "usage": reply.usage,
        }
        yield _event(usage_chunk)
    if reply.done:
        yield b"data: [DONE]\n\n"


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


@pytest.fixture
def scripted_backend() -> Iterator[ScriptedBackend]:
    """A started `ScriptedBackend`, stopped after the test."""
    with ScriptedBackend() as backend:
        yield backend
