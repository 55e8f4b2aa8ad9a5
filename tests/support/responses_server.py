"""A scripted OpenAI Responses API server (`POST /v1/responses`), for driving Codex in tests.

It plays the model the way the gateway's Responses endpoint will: Codex talks to it directly, so a
scenario proves the Codex harness and pins what Codex sends and accepts; the same scenarios can
later run through the gateway with the scripted chat-completions backend behind it.

Like `tests.support.scripted_backend.ScriptedBackend` it is a real aiohttp server on a free
loopback port, on its own event loop in a background thread, recording every request
(`requests`) and answering with queued replies or a responder. A reply is a `ResponseSpec`
(streamed as SSE, see `tests.support.responses_events`), a `Cut` (the stream aborted after some
events), or an `HttpError`. `CodexScript` is a responder that answers by the turn the
conversation is at, so a retried request gets the same turn again.

`GET /v1/models` answers the OpenAI list (`data`) and, in the same object, the `models` array of
Codex's own catalog shape, which is what Codex decodes when it fetches models; no other route
exists, so a request Codex should not make shows up as a recorded 404.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self, TypeAlias

import pytest
from aiohttp import web

from tests.support.ports import free_port
from tests.support.responses_events import (
    CustomToolCall,
    FunctionCall,
    ResponseSpec,
    encode_event,
    stream_events,
)
from tests.support.scripted_backend import HttpError, RecordedRequest

__all__ = [
    "CodexScript",
    "Cut",
    "ResponsesServer",
    "call_id",
    "calls_in",
    "outputs_in",
    "responses_server",
]

RESPONSES_PATH: Final = "/v1/responses"
MODELS_PATH: Final = "/v1/models"
SSE_HEADERS: Final = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class Cut:
    """Stream the first `after` events of `spec`, then abort the connection."""

    spec: ResponseSpec
    after: int


Reply: TypeAlias = ResponseSpec | Cut | HttpError
Responder: TypeAlias = Callable[[RecordedRequest], Reply]


class ResponsesServer:
    """A Responses API endpoint answering queued replies (or a responder's) and recording."""

    def __init__(
        self, model: str = "scripted-model", catalog: Sequence[dict[str, Any]] = ()
    ) -> None:
        self.model = model
        self.catalog = list(catalog)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self._responder: Responder | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def queue(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    def set_responder(self, responder: Responder | None) -> None:
        self._responder = responder

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the `POST /v1/responses` requests, in order."""
        with self._lock:
            posts = [r for r in self.requests if (r.method, r.path) == ("POST", RESPONSES_PATH)]
        return [request.json() for request in posts]

    async def _start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        if (request.method, request.path) == ("POST", RESPONSES_PATH):
            return await self._answer(request, self._next_reply(recorded))
        if (request.method, request.path) == ("GET", MODELS_PATH):
            return web.json_response(self._models())
        error = {"message": f"responses server: no route for {request.method} {request.path}"}
        return web.json_response({"error": error}, status=404)

    async def _record(self, request: web.Request) -> RecordedRequest:
        headers = {name.lower(): value for name, value in request.headers.items()}
        body = await request.read()
        query = request.query_string
        recorded = RecordedRequest(request.method, request.path, query, headers, body)
        with self._lock:
            self.requests.append(recorded)
        return recorded

    def _next_reply(self, recorded: RecordedRequest) -> Reply:
        if self._responder is not None:
            try:
                return self._responder(recorded)
            except Exception as exc:  # a broken script fails the run visibly, not by a hang
                return _error(500, f"responses server: responder failed: {exc!r}")
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        return _error(400, "responses server: no reply queued")

    async def _answer(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if isinstance(reply, HttpError):
            body = reply.body if isinstance(reply.body, dict) else _error(0, str(reply.body)).body
            return web.json_response(body, status=reply.status, headers=reply.headers)
        spec, after = (reply.spec, reply.after) if isinstance(reply, Cut) else (reply, None)
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        for number, event in enumerate(stream_events(spec)):
            if number == after:
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write(encode_event(event))
        await response.write_eof()
        return response

    def _models(self) -> dict[str, Any]:
        listed = {"id": self.model, "object": "model", "created": 0, "owned_by": "scripted"}
        return {"object": "list", "data": [listed], "models": self.catalog}


def _error(status: int, message: str) -> HttpError:
    return HttpError(status, {"error": {"message": message, "type": "invalid_request_error"}})


# --- turn-by-turn scripts --------------------------------------------------------------------


def call_id(turn: int, index: int) -> str:
    """The call id of the `index`-th tool call of turn `turn`: the script reads turns from it."""
    return f"call_t{turn}_{index}"


def calls_in(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool-call items (`function_call`, `custom_tool_call`) of a request's `input`."""
    kinds = ("function_call", "custom_tool_call")
    return [item for item in body.get("input", []) if item.get("type") in kinds]


def outputs_in(body: dict[str, Any]) -> dict[str, Any]:
    """The tool outputs of a request's `input`, by `call_id`."""
    kinds = ("function_call_output", "custom_tool_call_output")
    items = (item for item in body.get("input", []) if item.get("type") in kinds)
    return {item["call_id"]: item.get("output") for item in items}


TurnSource: TypeAlias = ResponseSpec | Cut | HttpError | Callable[[dict[str, Any]], ResponseSpec]


class CodexScript:
    """A responder answering turn N of `turns` to a conversation that holds N turns' tool calls.

    The turn is read from the call ids (`call_id(turn, index)`) of the tool calls Codex sends
    back, so a retried request gets the same turn again. A turn may be a function of the request
    body, to answer from the tool outputs it carries. `attempts[n]` counts requests for turn n.
    """

    def __init__(self, *turns: TurnSource) -> None:
        self.turns: Sequence[TurnSource] = turns
        self.attempts: Counter[int] = Counter()
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Reply:
        body = request.json()
        index = len({_turn_of(item.get("call_id", "")) for item in calls_in(body)})
        with self._lock:
            self.attempts[index] += 1
        if index >= len(self.turns):
            return _error(400, f"codex script: no turn {index} (the script has {len(self.turns)})")
        source = self.turns[index]
        return source(body) if callable(source) else source


def _turn_of(ident: str) -> str:
    return ident.split("_")[1] if ident.startswith("call_t") else ident


def shell(command: str, turn: int, index: int = 0) -> FunctionCall:
    """Codex's shell tool (`exec_command`, unified exec) running `command`."""
    return FunctionCall("exec_command", {"cmd": command}, call_id(turn, index))


def apply_patch(patch: str, turn: int, index: int = 0) -> CustomToolCall:
    """Codex's freeform `apply_patch` tool with a patch in its `*** Begin Patch` grammar."""
    return CustomToolCall("apply_patch", patch, call_id(turn, index))


@pytest.fixture
def responses_server() -> Iterator[ResponsesServer]:
    """A started `ResponsesServer`, stopped after the test."""
    with ResponsesServer() as server:
        yield server
