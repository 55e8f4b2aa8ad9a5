"""Driving a wing's stream machine from the backend's bytes, and writing its events to a
client: one encoded write per batch, and one heartbeat timer that pings silent streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import msgspec

from mlx_gateway.anthropic.stream import PING
from mlx_gateway.errors import BadBackendResponse, GatewayError
from mlx_gateway.parse.blocks import Event
from mlx_gateway.parse.chunkreader import ChunkReader, ChunkTranslator
from mlx_gateway.parse.sse import encode_event
from mlx_gateway.server.rsgi import EventStream, Headers, Request
from mlx_gateway.textlog import log_failure

log = logging.getLogger("mlx_gateway")

_json = msgspec.json.Encoder()


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

    __slots__ = ("_encode", "_ping", "_ping_bytes", "_stream", "last_write")

    def __init__(
        self,
        stream: EventStream,
        encode: Callable[[list[Event]], bytes] = encode_events,
        ping: Event = PING,
    ) -> None:
        """`encode` and `ping`: the wing's event encoding and its ping (Anthropic's by default)."""
        self._stream = stream
        self._encode = encode
        self._ping_bytes = encode([ping])
        self._ping: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self.last_write = asyncio.get_running_loop().time()

    async def send(self, events: list[Event]) -> None:
        if events:
            self.last_write = asyncio.get_running_loop().time()
            await self._stream.write(self._encode(events))

    async def close(self, events: list[Event]) -> None:
        await self._stream.close(self._encode(events))

    def ping(self, now: float) -> None:
        self.last_write = now
        self._ping = asyncio.ensure_future(self._send_ping())

    async def _send_ping(self) -> None:
        # A client that left, or a stream that ended meanwhile, is the stream's own task's affair.
        with contextlib.suppress(ConnectionResetError):
            await self._stream.write(self._ping_bytes)


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


class StreamMachine(ChunkTranslator[Event], Protocol):
    """A wing's stream machine as the relay drives it (anthropic/stream.py, responses/stream.py)."""

    @property
    def stopped(self) -> bool: ...

    @property
    def complete(self) -> bool: ...

    def start(self) -> list[Event]: ...

    def finish(self) -> list[Event]: ...

    def fail(self, error: GatewayError) -> list[Event]: ...


async def write_stream(
    request: Request,
    pieces: AsyncIterator[bytes],
    machine: StreamMachine,
    heartbeat: Heartbeat,
    encode: Callable[[list[Event]], bytes] = encode_events,
    *,
    on_close: Callable[[list[Event]], None] | None = None,
) -> EventStream:
    """Opens the client's event stream and writes the machine's events for the backend's bytes,
    pinged while silent, in the wing's encoding (Anthropic's by default). `on_close` sees the
    closing events (final usage, or the failure) before they are written."""
    stream = request.open_stream(EVENT_STREAM_HEADERS)
    writer = EventWriter(stream, encode, machine.ping)
    heartbeat.watch(writer)
    try:
        await writer.send(machine.start())
        closing = await relay(request.record.timed(pieces), machine, writer)
        if on_close is not None:
            on_close(closing)
        await writer.close(closing)
    finally:
        heartbeat.forget(writer)
    return stream


async def relay(
    pieces: AsyncIterator[bytes], machine: StreamMachine, writer: EventWriter
) -> list[Event]:
    """Feeds the backend's bytes through the decoder and the wing's machine; returns the closing
    events (the normal end, or the protocol's failure when the backend broke after the 200)."""
    try:
        async for batch in translated_batches(pieces, machine):
            await writer.send(batch)
    except GatewayError as error:
        log_failure(logging.WARNING, "backend stream failed", error)
        return machine.fail(error)
    return machine.finish()


async def translated_batches(
    pieces: AsyncIterator[bytes], machine: StreamMachine
) -> AsyncIterator[list[Event]]:
    """The events for each piece of backend bytes, in order; ends early once the machine saw
    a stop sequence (leaving the caller's block then closes the backend request)."""
    reader = ChunkReader(machine)
    async for piece in pieces:
        yield reader.feed(piece)
        if machine.stopped:
            return
    yield reader.flush()
    if not (machine.complete or reader.saw_done):
        raise BadBackendResponse(CUT_OFF)


# Neither a finish reason nor the end marker: the connection ended early, and whatever stop
# reason the gateway gave would be made up.
CUT_OFF = "the backend stream ended before the answer was complete"
