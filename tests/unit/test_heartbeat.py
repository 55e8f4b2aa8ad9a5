"""The gateway-wide heartbeat: silent streams get pings, busy ones none, and the timer stops when
no stream is open."""

from __future__ import annotations

import asyncio

from mlx_gateway.server.rsgi import EventStream
from mlx_gateway.server.streaming import EventWriter, Heartbeat

INTERVAL = 0.2


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_bytes(self, data: bytes) -> None:
        self.writes.append(data)


def pings(transport: RecordingTransport) -> int:
    return sum(write.startswith(b"event: ping\n") for write in transport.writes)


def test_a_silent_stream_is_pinged_and_a_busy_one_is_not() -> None:
    asyncio.run(_a_silent_stream_is_pinged_and_a_busy_one_is_not())


async def _a_silent_stream_is_pinged_and_a_busy_one_is_not() -> None:
    heartbeat = Heartbeat(INTERVAL)
    silent, busy = RecordingTransport(), RecordingTransport()
    silent_writer, busy_writer = EventWriter(EventStream(silent)), EventWriter(EventStream(busy))
    loop = asyncio.get_running_loop()
    started = loop.time()
    heartbeat.watch(silent_writer)
    heartbeat.watch(busy_writer)
    for _ in range(40):  # five intervals, or more on a loaded machine
        await busy_writer.send([{"type": "content_block_stop", "index": 0}])
        await asyncio.sleep(INTERVAL / 8)
    heartbeat.forget(silent_writer)
    heartbeat.forget(busy_writer)
    assert 2 <= pings(silent) <= (loop.time() - started) / INTERVAL
    assert pings(busy) == 0
    assert len(busy.writes) == 40


def test_the_timer_stops_once_no_stream_is_watched() -> None:
    asyncio.run(_the_timer_stops_once_no_stream_is_watched())


async def _the_timer_stops_once_no_stream_is_watched() -> None:
    heartbeat = Heartbeat(INTERVAL)
    transport = RecordingTransport()
    writer = EventWriter(EventStream(transport))
    heartbeat.watch(writer)
    heartbeat.forget(writer)
    await asyncio.sleep(INTERVAL)
    assert heartbeat._timer is None
    later = EventWriter(EventStream(transport))  # and it starts again for the next stream
    loop = asyncio.get_running_loop()
    started = loop.time()
    heartbeat.watch(later)
    await asyncio.sleep(INTERVAL * 1.5)
    heartbeat.forget(later)
    assert 1 <= pings(transport) <= (loop.time() - started) / INTERVAL


def test_a_ping_to_an_ended_stream_is_dropped_quietly() -> None:
    asyncio.run(_a_ping_to_an_ended_stream_is_dropped_quietly())


async def _a_ping_to_an_ended_stream_is_dropped_quietly() -> None:
    heartbeat = Heartbeat(INTERVAL)
    stream = EventStream(RecordingTransport())
    writer = EventWriter(stream)
    stream.end()
    heartbeat.watch(writer)
    loop = asyncio.get_running_loop()
    failures: list[object] = []
    loop.set_exception_handler(lambda _, context: failures.append(context))
    await asyncio.sleep(INTERVAL * 2)
    heartbeat.forget(writer)
    assert failures == []
