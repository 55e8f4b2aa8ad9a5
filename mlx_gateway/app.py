"""The HTTP edge: routes, lifespan, and errors rendered in the caller's protocol."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec
from aiohttp import web

from mlx_gateway import anthropic as an
from mlx_gateway.answer import assemble_message, to_anthropic_message
from mlx_gateway.backends import resolve_profile
from mlx_gateway.config import Config
from mlx_gateway.context import PromptContext
from mlx_gateway.errors import (
    GatewayError,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    anthropic_error_body,
    openai_error_body,
)
from mlx_gateway.models import ModelRouter
from mlx_gateway.openai import (
    ChatCompletionChunk,
    decode_chunk,
    decode_chunk_array,
    decode_completion,
    raw_json,
    read_chat_request,
)
from mlx_gateway.sse import DONE, DataRun, SSEDecoder, SSEEvent, encode_data, encode_event
from mlx_gateway.stream import PING, Event, StreamTranslator
from mlx_gateway.tokens import count_request
from mlx_gateway.translate import gateway_watches_stops, to_openai_request
from mlx_gateway.upstream import Upstream

log = logging.getLogger("mlx_gateway")

_json = msgspec.json.Encoder()
_json_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
JSON_TYPE = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Gateway:
    """Per-app state and the route handlers; built inside the app's lifespan."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.profile = resolve_profile(config.backend, config.backend_base_url)
        self.router = ModelRouter(config.mlx_model, config.model_map)
        self.message_ids = MessageIds()
        self.upstream = Upstream(
            config.backend_base_url, self.profile, config.timeout, config.total_timeout
        )
        # The model's context window and prompt counts, discovered and cached per backend model.
        self.context = PromptContext(
            self.profile, self.upstream, configured_window=config.context_window
        )

    # ---- Anthropic ----------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        parsed = an.decode_messages_request(await request.read())
        model = self.router.resolve(parsed.model)
        upstream_stream = parsed.stream or gateway_watches_stops(parsed, self.profile)
        payload = to_openai_request(
            parsed, model=model, profile=self.profile, stream=upstream_stream
        )
        # Before any stream starts: a prompt that cannot fit is a 400, an answer limit that
        # would run past the window is lowered (nothing is counted while no window is known).
        max_tokens, prompt = await self.context.fit(model, payload, parsed.max_tokens)
        payload["max_tokens"] = max_tokens
        body = _json.encode(payload)
        if upstream_stream:
            translator = StreamTranslator(
                model=model,
                message_id=self.message_ids.new(),
                estimated_input_tokens=(
                    prompt.tokens if prompt else estimate_tokens(request.content_length or 0)
                ),
                stop_sequences=parsed.stop_sequences,
            )
            if parsed.stream:
                return await self._stream_anthropic(request, body, translator)
            return json_response(await self._collect(body, translator))
        answer = await self.upstream.complete(body)
        message = to_anthropic_message(
            decode_completion(answer),
            model=model,
            message_id=self.message_ids.new(),
            stop_sequences=parsed.stop_sequences,
        )
        return json_response(message)

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        """Counts the prompt of the request `/v1/messages` would send for the same body."""
        parsed = an.decode_count_tokens_request(await request.read())
        model = self.router.resolve(parsed.model)
        body = count_request(parsed, model=model, profile=self.profile)
        counted = await self.context.count(model, body)
        return json_response({"input_tokens": counted.tokens})

    # ---- OpenAI -------------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        chat = read_chat_request(await request.read())
        payload = chat.fields  # raw JSON values, sent on as they came
        payload["model"] = raw_json(self.router.resolve(chat.model))
        options = payload.get("stream_options")
        if options is not None and _json_decoder.decode(options) == {}:
            # mlx_lm.server's stream crashes on an empty stream_options object.
            del payload["stream_options"]
        if chat.stream:
            return await self._stream_openai(request, _json.encode(payload))
        answer = await self.upstream.complete(_json.encode(payload))
        return web.Response(body=answer, content_type=JSON_TYPE)

    async def _stream_anthropic(
        self, request: web.Request, body: bytes, translator: StreamTranslator
    ) -> web.StreamResponse:
        async with self.upstream.stream(body) as pieces:
            response = await start_event_stream(request, head_with_first_write=True)
            writer = EventWriter(response)
            heartbeat = asyncio.create_task(writer.keep_alive(self.config.ping_interval))
            try:
                await writer.send(translator.start())
                await writer.close(await relay_anthropic(pieces, translator, writer))
            except ConnectionResetError:
                log.info("client went away mid-stream; closing the backend request")
            finally:
                heartbeat.cancel()
        return response

    async def _collect(self, body: bytes, translator: StreamTranslator) -> Event:
        """A non-streaming answer read from a backend stream, for when the gateway must watch
        the text as it comes (stop sequences): generation ends as soon as one is seen."""
        async with self.upstream.stream(body) as pieces:
            events = translator.start()
            async for batch in translated_batches(pieces, translator):
                events += batch
        return assemble_message(events + translator.finish())

    async def _stream_openai(self, request: web.Request, body: bytes) -> web.StreamResponse:
        async with self.upstream.stream(body) as pieces:
            response = await start_event_stream(request)
            ended = False
            try:
                async for piece in pieces:
                    await response.write(piece)
                    ended = piece.rstrip().endswith(b"[DONE]")
            except GatewayError as error:
                log.warning("backend stream failed: %s", error.message)
                await response.write(encode_data(_json.encode(openai_error_body(error))))
            else:
                if not ended:
                    await response.write(DONE)
            await response.write_eof()
        return response

    async def models(self, _: web.Request) -> web.StreamResponse:
        created = int(time.time())
        names = self.router.served_models() + self.router.alias_names()
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "mlx-gateway"}
            for name in names
        ]
        return json_response({"object": "list", "data": data})

    async def health(self, _: web.Request) -> web.StreamResponse:
        return json_response(
            {
                "status": "ok",
                "service": "mlx-gateway",
                "backend": self.config.backend_base_url,
                "model": self.config.mlx_model,
            }
        )


_PING_BYTES = encode_event("ping", b'{"type":"ping"}')


class _HeadersWithFirstWrite(web.StreamResponse):
    """The head leaves with the first write, one send instead of two (as aiohttp's Response
    does). Only for the Anthropic stream, whose first write, message_start, follows at once; an
    OpenAI stream's head goes out alone, before the backend's first token."""

    _send_headers_immediately = False


_EVENT_STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


async def start_event_stream(
    request: web.Request, *, head_with_first_write: bool = False
) -> web.StreamResponse:
    kind = _HeadersWithFirstWrite if head_with_first_write else web.StreamResponse
    response = kind(headers=_EVENT_STREAM_HEADERS)
    await response.prepare(request)
    return response


def encode_events(events: list[Event]) -> bytes:
    encode = _json.encode
    return b"".join([encode_event(event["type"], encode(event)) for event in events])


class EventWriter:
    """Encodes a batch of events into one write, and pings while the backend is silent."""

    __slots__ = ("_last_write", "_loop", "_response")

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response
        self._loop = asyncio.get_running_loop()
        self._last_write = self._loop.time()

    async def send(self, events: list[Event]) -> None:
        if events:
            self._last_write = self._loop.time()
            await self._response.write(encode_events(events))

    async def close(self, events: list[Event]) -> None:
        """The last events and the end of the response go out in one write."""
        await self._response.write_eof(encode_events(events))

    async def keep_alive(self, interval: float) -> None:
        """One task per stream instead of a timer per chunk: the hot path only stores a time."""
        while True:
            await asyncio.sleep(interval - (self._loop.time() - self._last_write))
            if self._loop.time() - self._last_write >= interval:
                self._last_write = self._loop.time()
                await self._response.write(_PING_BYTES)


async def relay_anthropic(
    pieces: AsyncIterator[bytes], translator: StreamTranslator, writer: EventWriter
) -> list[Event]:
    """Feeds the backend's bytes through the decoder and the translator; returns the closing
    events (the normal end, or an error event when the backend broke after the 200)."""
    try:
        async for batch in translated_batches(pieces, translator):
            await writer.send(batch)
    except GatewayError as error:
        log.warning("backend stream failed: %s", error.message)
        return translator.fail(error)
    return translator.finish()


async def translated_batches(
    pieces: AsyncIterator[bytes], translator: StreamTranslator
) -> AsyncIterator[list[Event]]:
    """The events for each piece of backend bytes, in order; ends early once the translator saw
    a stop sequence (leaving the caller's block then closes the backend request)."""
    decoder = SSEDecoder()
    async for piece in pieces:
        yield translate_sse(decoder.feed_runs(piece), translator)
        if translator.stopped:
            return
    yield translate_sse(decoder.flush(), translator)


def translate_sse(items: Sequence[SSEEvent | DataRun], translator: StreamTranslator) -> list[Event]:
    """Chunks that came in one read are decoded and translated together (see feed_batch); a
    keepalive comment among them becomes a ping in its place."""
    events: list[Event] = []
    chunks: list[ChatCompletionChunk] = []
    for item in items:
        if isinstance(item, DataRun):
            chunks += run_chunks(item)
        elif item.comment is not None:
            if chunks:
                events += translator.feed_batch(chunks)
                chunks = []
            events.append(PING)
        elif is_chunk_data(item.data):
            chunks.append(decode_chunk(item.data))
    if chunks:
        events += translator.feed_batch(chunks)
    return events


def run_chunks(run: DataRun) -> list[ChatCompletionChunk]:
    """A run's chunks decoded as one JSON array; one by one only when that fails, so that the
    error names the chunk that is not one."""
    array, count = run.joined(b","), run.count
    if array == b"[DONE]" or array.endswith(b",[DONE]"):  # the end marker after the last chunk
        array, count = array[:-7], count - 1
    chunks = decode_chunk_array(b"[" + array + b"]", count) if count else []
    if chunks is None:
        chunks = [decode_chunk(e.data) for e in run.events() if is_chunk_data(e.data)]
    return chunks


def is_chunk_data(data: str) -> bool:
    """Not empty and not the stream's end marker."""
    return bool(data) and data != "[DONE]"


def estimate_tokens(byte_count: int) -> int:
    """A first figure for message_start; the final usage carries the backend's real count."""
    return max(byte_count // 4, 1)


class MessageIds:
    """`msg_` and 24 hex digits: 16 drawn once per gateway from the system's entropy, then a
    count. Ids must be unique, not secret, and this costs no system call per message."""

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = "msg_" + secrets.token_hex(8)
        self._count = 0

    def new(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count & 0xFFFFFFFF:08x}"


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type=JSON_TYPE)


def speaks_anthropic(request: web.Request) -> bool:
    """Errors go out in the caller's protocol: the path says it, else Anthropic's headers do."""
    path = request.path
    if path.startswith("/v1/messages"):
        return True
    if path.startswith(("/v1/chat", "/v1/models", "/v1/completions", "/v1/embeddings")):
        return False
    return "anthropic-version" in request.headers or "x-api-key" in request.headers


def error_response(request: web.Request, error: GatewayError) -> web.Response:
    body = anthropic_error_body(error) if speaks_anthropic(request) else openai_error_body(error)
    response = json_response(body, status=error.status)
    response.headers["x-should-retry"] = "true" if error.retryable else "false"
    return response


def _http_exception_as_error(exc: web.HTTPException, request: web.Request) -> GatewayError:
    if exc.status == 404:
        return NotFound(f"no route for {request.method} {request.path}")
    if exc.status == 405:
        return MethodNotAllowed(f"method {request.method} is not allowed on {request.path}")
    if exc.status == 413:
        return RequestTooLarge(f"request body is larger than the limit: {exc.text}")
    return GatewayError(exc.text or exc.reason)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as error:
        level = logging.WARNING if error.status >= 500 else logging.INFO
        log.log(level, "%s %s -> %d %s", request.method, request.path, error.status, error.message)
        return error_response(request, error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(request, _http_exception_as_error(exc, request))
    except Exception:
        log.exception("unexpected failure on %s %s", request.method, request.path)
        return error_response(request, GatewayError("internal gateway error; see the gateway log"))


def create_app(config: Config) -> web.Application:
    """Builds the app; the backend pool is opened and closed by the app's lifespan."""
    app = web.Application(
        middlewares=[error_middleware], client_max_size=int(config.max_body_mb * 1024 * 1024)
    )
    gateway = Gateway(config)

    async def lifespan(_: web.Application) -> Any:
        await gateway.upstream.start()
        yield
        await gateway.upstream.close()

    app.cleanup_ctx.append(lifespan)
    app.router.add_post("/v1/messages", gateway.messages)
    app.router.add_post("/v1/messages/count_tokens", gateway.count_tokens)
    app.router.add_post("/v1/chat/completions", gateway.chat_completions)
    app.router.add_post("/chat/completions", gateway.chat_completions)
    app.router.add_get("/v1/models", gateway.models)
    app.router.add_get("/health", gateway.health)
    return app
