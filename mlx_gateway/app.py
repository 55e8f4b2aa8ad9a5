"""The HTTP edge: routes, lifespan, and errors rendered in the caller's protocol."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec

from mlx_gateway import anthropic as an
from mlx_gateway.answer import assemble_message, to_anthropic_message
from mlx_gateway.backends import resolve_profile
from mlx_gateway.config import Config
from mlx_gateway.context import PromptContext
from mlx_gateway.errors import GatewayError, anthropic_error_body, openai_error_body
from mlx_gateway.models import ModelRouter
from mlx_gateway.openai import (
    ChatCompletionChunk,
    decode_chunk,
    decode_chunk_array,
    decode_completion,
    raw_json,
    read_chat_request,
)
from mlx_gateway.server import (
    JSON_HEADERS,
    EventStream,
    Handler,
    Headers,
    Reply,
    Request,
    RSGIApp,
)
from mlx_gateway.sse import (
    DATA_FIELD,
    DONE,
    NEXT_DATA_EVENT,
    DataRun,
    SSEDecoder,
    SSEEvent,
    encode_data,
    encode_event,
)
from mlx_gateway.stream import PING, Event, StreamTranslator, plain_text
from mlx_gateway.textruns import TextTemplate
from mlx_gateway.tokens import count_request
from mlx_gateway.translate import gateway_watches_stops, to_openai_request
from mlx_gateway.upstream import Upstream

log = logging.getLogger("mlx_gateway")

_json = msgspec.json.Encoder()
# Bytes searched for as ints: `b"x" in data` first tries the needle as an int, and the TypeError
# it raises and clears costs more than the search.
_LF, _CR = 0x0A, 0x0D
_json_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


class Gateway:
    """Per-app state and the route handlers; built inside the app's lifespan."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.profile = resolve_profile(config.backend, config.backend_base_url)
        self.router = ModelRouter(config.mlx_model, config.model_map)
        self.message_ids = MessageIds()
        self.heartbeat = Heartbeat(config.ping_interval)
        self.upstream = Upstream(
            config.backend_base_url, self.profile, config.timeout, config.total_timeout
        )
        # The model's context window and prompt counts, discovered and cached per backend model.
        self.context = PromptContext(
            self.profile, self.upstream, configured_window=config.context_window
        )

    # ---- Anthropic ----------------------------------------------------------------------------

    async def messages(self, request: Request) -> Reply | EventStream:
        parsed = an.decode_messages_request(request.body)
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
                    prompt.tokens if prompt else estimate_tokens(len(request.body))
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

    async def count_tokens(self, request: Request) -> Reply | EventStream:
        """Counts the prompt of the request `/v1/messages` would send for the same body."""
        parsed = an.decode_count_tokens_request(request.body)
        model = self.router.resolve(parsed.model)
        body = count_request(parsed, model=model, profile=self.profile)
        counted = await self.context.count(model, body)
        return json_response({"input_tokens": counted.tokens})

    # ---- OpenAI -------------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Reply | EventStream:
        chat = read_chat_request(request.body)
        payload = chat.fields  # raw JSON values, sent on as they came
        payload["model"] = raw_json(self.router.resolve(chat.model))
        options = payload.get("stream_options")
        if options is not None and _json_decoder.decode(options) == {}:
            # mlx_lm.server's stream crashes on an empty stream_options object.
            del payload["stream_options"]
        if chat.stream:
            return await self._stream_openai(request, _json.encode(payload))
        answer = await self.upstream.complete(_json.encode(payload))
        return Reply(answer)

    async def _stream_anthropic(
        self, request: Request, body: bytes, translator: StreamTranslator
    ) -> Reply | EventStream:
        async with self.upstream.stream(body) as pieces:
            stream = request.open_stream(EVENT_STREAM_HEADERS)
            writer = EventWriter(stream)
            self.heartbeat.watch(writer)
            try:
                await writer.send(translator.start())
                await writer.close(await relay_anthropic(pieces, translator, writer))
            finally:
                self.heartbeat.forget(writer)
        return stream

    async def _collect(self, body: bytes, translator: StreamTranslator) -> Event:
        """A non-streaming answer read from a backend stream, for when the gateway must watch
        the text as it comes (stop sequences): generation ends as soon as one is seen."""
        async with self.upstream.stream(body) as pieces:
            events = translator.start()
            async for batch in translated_batches(pieces, translator):
                events += batch
        return assemble_message(events + translator.finish())

    async def _stream_openai(self, request: Request, body: bytes) -> Reply | EventStream:
        async with self.upstream.stream(body) as pieces:
            stream = request.open_stream(EVENT_STREAM_HEADERS)
            ended = False
            try:
                async for piece in pieces:
                    await stream.write(piece)
                    ended = piece.rstrip().endswith(b"[DONE]")
            except GatewayError as error:
                log.warning("backend stream failed: %s", error.message)
                await stream.write(encode_data(_json.encode(openai_error_body(error))))
            else:
                if not ended:
                    await stream.write(DONE)
        return stream

    async def models(self, _: Request) -> Reply | EventStream:
        created = int(time.time())
        names = self.router.served_models() + self.router.alias_names()
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "mlx-gateway"}
            for name in names
        ]
        return json_response({"object": "list", "data": data})

    async def health(self, _: Request) -> Reply | EventStream:
        return json_response(
            {
                "status": "ok",
                "service": "mlx-gateway",
                "backend": self.config.backend_base_url,
                "model": self.config.mlx_model,
            }
        )


_PING_BYTES = encode_event("ping", b'{"type":"ping"}')


EVENT_STREAM_HEADERS: Headers = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
]


def encode_events(events: list[Event]) -> bytes:
    encode = _json.encode
    return b"".join([encode_event(event["type"], encode(event)) for event in events])


class EventWriter:
    """Encodes a batch of events into one write; `last_write` tells the heartbeat when the
    client last heard from the stream."""

    __slots__ = ("_ping", "_stream", "last_write")

    def __init__(self, stream: EventStream) -> None:
        self._stream = stream
        self._ping: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self.last_write = asyncio.get_running_loop().time()

    async def send(self, events: list[Event]) -> None:
        if events:
            self.last_write = asyncio.get_running_loop().time()
            await self._stream.write(encode_events(events))

    async def close(self, events: list[Event]) -> None:
        await self._stream.close(encode_events(events))

    def ping(self, now: float) -> None:
        self.last_write = now
        self._ping = asyncio.ensure_future(self._send_ping())

    async def _send_ping(self) -> None:
        # A client that left, or a stream that ended meanwhile, is the stream's own task's affair.
        with contextlib.suppress(ConnectionResetError):
            await self._stream.write(_PING_BYTES)


class Heartbeat:
    """Pings every stream that has been silent for `interval` seconds, within a quarter of it.

    One timer for the whole gateway, running only while streams are open, instead of a task
    per stream (created, put to sleep and cancelled: about 16,000 instructions a stream). A
    stream only stores the time of its last write."""

    __slots__ = ("_interval", "_timer", "_writers")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._writers: set[EventWriter] = set()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, writer: EventWriter) -> None:
        self._writers.add(writer)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval / 4, self._tick)

    def forget(self, writer: EventWriter) -> None:
        self._writers.discard(writer)

    def _tick(self) -> None:
        if not self._writers:
            self._timer = None
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for writer in self._writers:
            if now - writer.last_write >= self._interval:
                writer.ping(now)
        self._timer = loop.call_later(self._interval / 4, self._tick)


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
    reader = ChunkReader(translator)
    async for piece in pieces:
        yield reader.feed(piece)
        if translator.stopped:
            return
    yield reader.flush()


class ChunkReader:
    """One backend stream's bytes to the translator's events, read by read. Chunks that came
    in one read are decoded and translated together (see feed_batch); a keepalive comment
    among them becomes a ping in its place; leading events of plain text that fit the stream's
    template are not decoded at all (textruns.py), nor even seen by the event decoder when a
    read begins with them."""

    __slots__ = ("_decoder", "_learn_from", "_template", "_translator")

    def __init__(self, translator: StreamTranslator, learn_from: int = 8) -> None:
        """`learn_from`: a template is learned only from a read that begins at least this many
        events: learning costs about what decoding eight chunks does."""
        self._translator = translator
        self._learn_from = learn_from
        self._decoder = SSEDecoder()
        self._template: TextTemplate | None = None

    def feed(self, piece: bytes) -> list[Event]:
        if self._template is None and piece.find(NEXT_DATA_EVENT) < 0:
            # Nothing to learn a template from: one event a read, as when tokens come slowly.
            return self._translate(self._decoder.feed_runs(piece), False)
        if not self._decoder.at_event_start():
            return self._translate(self._decoder.feed_runs(piece), True)
        events: list[Event] = []
        piece = self._text_run(piece, events)
        if piece:  # the template has been tried on it already
            events += self._translate(self._decoder.feed_runs(piece), False)
        return events

    def flush(self) -> list[Event]:
        return self._translate(self._decoder.flush(), False)

    def _translate(self, items: Sequence[SSEEvent | DataRun], templates: bool) -> list[Event]:
        events: list[Event] = []
        chunks: list[ChatCompletionChunk] = []
        for item in items:
            if isinstance(item, DataRun):
                if not templates:
                    chunks += run_chunks(item)
                    continue
                self._feed_chunks(chunks, events)
                rest = self._text_run(item.raw, events)
                if rest is item.raw:
                    chunks += run_chunks(item)
                elif rest:
                    chunks += run_chunks(DataRun(rest, rest.count(NEXT_DATA_EVENT) + 1, item.id))
            elif item.comment is not None:
                self._feed_chunks(chunks, events)
                events.append(PING)
            elif is_chunk_data(item.data):
                chunks.append(decode_chunk(item.data))
        self._feed_chunks(chunks, events)
        return events

    def _feed_chunks(self, chunks: list[ChatCompletionChunk], events: list[Event]) -> None:
        if chunks:
            events += self._translator.feed_batch(chunks)
            chunks.clear()

    def _text_run(self, data: bytes, events: list[Event]) -> bytes:
        """Sends on the leading events of `data` (bytes from the start of an event) that fit the
        template, learning it first when there is none yet and `data` is long enough to repay
        that; returns the bytes left for the decoder."""
        if not data.startswith(DATA_FIELD):
            return data
        if self._template is None:
            if not _starts_events(data, self._learn_from):
                return data
            data = self._learn(data, events)
        template = self._template
        if template is None:
            return data
        text = template.split(data)
        if text is None:
            return data
        translated = self._translator.feed_escaped_text(text)
        if translated is None:
            return data
        self._decoder.skipped()
        events += translated
        return text.rest

    def _learn(self, data: bytes, events: list[Event]) -> bytes:
        """Decodes the leading events up to the first that is plain text (a role chunk often
        comes first) and learns the template from that one; returns the bytes after them."""
        for _ in range(2):
            end = data.find(b"\n\n")
            payload = data[6:end]
            if end < 0 or _LF in payload or _CR in payload or payload in (b"", b"[DONE]"):
                return data
            chunk = decode_chunk(payload)
            text = plain_text(chunk)  # before the translator, which may take the chunk apart
            self._decoder.skipped()
            events += self._translator.feed_batch([chunk])
            data = data[end + 2 :]
            if text:
                self._template = TextTemplate.learn(payload, text)
                break
            if not data.startswith(DATA_FIELD):
                break
        return data


def _starts_events(data: bytes, count: int) -> bool:
    """Whether at least `count` events begin in `data`, which begins with one."""
    at = 0
    for _ in range(count - 1):
        at = data.find(NEXT_DATA_EVENT, at) + 1
        if not at:
            return False
    return True


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


def json_response(body: Any, status: int = 200) -> Reply:
    return Reply(_json.encode(body), status)


def speaks_anthropic(request: Request) -> bool:
    """Errors go out in the caller's protocol: the path says it, else Anthropic's headers do."""
    path = request.path
    if path.startswith("/v1/messages"):
        return True
    if path.startswith(("/v1/chat", "/v1/models", "/v1/completions", "/v1/embeddings")):
        return False
    return "anthropic-version" in request.headers or "x-api-key" in request.headers


def error_reply(request: Request, error: GatewayError) -> Reply:
    level = logging.WARNING if error.status >= 500 else logging.INFO
    log.log(level, "%s %s -> %d %s", request.method, request.path, error.status, error.message)
    body = anthropic_error_body(error) if speaks_anthropic(request) else openai_error_body(error)
    retry = "true" if error.retryable else "false"
    return Reply(_json.encode(body), error.status, [*JSON_HEADERS, ("x-should-retry", retry)])


def create_app(config: Config) -> RSGIApp:
    """Builds the app; the backend pool is opened when serving starts and closed when it ends."""
    gateway = Gateway(config)
    chat: dict[str, Handler] = {"POST": gateway.chat_completions}
    routes: dict[str, dict[str, Handler]] = {
        "/v1/messages": {"POST": gateway.messages},
        "/v1/messages/count_tokens": {"POST": gateway.count_tokens},
        "/v1/chat/completions": chat,
        "/chat/completions": chat,
        "/v1/models": {"GET": gateway.models, "HEAD": gateway.models},
        "/health": {"GET": gateway.health, "HEAD": gateway.health},
    }
    return RSGIApp(
        routes,
        error_reply,
        max_body_bytes=int(config.max_body_mb * 1024 * 1024),
        on_start=gateway.upstream.start,
        on_stop=gateway.upstream.close,
    )
