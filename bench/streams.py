"""A small streaming load client: time to first event, tokens per second, and a check of each
stream's ending.

wrk cannot see inside a response as it arrives, so streams are driven from here. On the direct
path this client shares a core with the fake backend, and whatever it spends per read lowers the
baseline every ratio is taken against; so it is a bare asyncio Protocol speaking just enough
HTTP/1.1 (keep-alive, chunked or sized bodies), that counts markers with `bytes.count` in
`data_received`, keeping a short tail so a marker split across two reads is still seen once.
An aiohttp client spent about three times as much per read.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench.fake_backend import TOKEN_MARKER


@dataclass(frozen=True, slots=True)
class StreamShape:
    """How to recognise tokens and a proper ending in one protocol's stream."""

    token_marker: bytes
    end_marker: bytes
    # How often each token's text appears in a good stream: the Responses API repeats the whole
    # text in output_text.done, content_part.done, output_item.done and response.completed.
    repeats: int = 1


# Tokens are counted by their own text, not by events: a gateway may send several tokens that
# arrived together as one delta, and what the client gets is the tokens.
ANTHROPIC_STREAM = StreamShape(token_marker=TOKEN_MARKER, end_marker=b'"message_stop"')
OPENAI_STREAM = StreamShape(token_marker=TOKEN_MARKER, end_marker=b"data: [DONE]")
RESPONSES_STREAM = StreamShape(
    token_marker=TOKEN_MARKER, end_marker=b'"type":"response.completed"', repeats=5
)


@dataclass(slots=True)
class StreamStats:
    streams: int = 0
    errors: int = 0
    tokens: int = 0  # tokens of the streams that ended properly
    seconds: float = 0.0
    first_event_ms: list[float] = field(default_factory=list)
    first_token_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def fail(self, reason: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(reason)


@dataclass(frozen=True, slots=True)
class StreamLoad:
    url: str
    body: bytes
    shape: StreamShape
    expected_tokens: int
    concurrency: int
    seconds: float  # no new stream starts after this
    max_streams: int  # a bound on the loop whatever the speed


class _Counter:
    """Counts a marker across pieces; the kept tail is shorter than the marker, so nothing
    is counted twice."""

    __slots__ = ("count", "marker", "tail")

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.tail = b""
        self.count = 0

    def feed(self, piece: bytes) -> bool:
        """Returns True when this piece completed at least one marker."""
        data = self.tail + piece
        found = data.count(self.marker)
        self.count += found
        self.tail = data[-(len(self.marker) - 1) :]
        return found > 0


@dataclass(slots=True)
class _Outcome:
    status: int
    tokens: int
    endings: int
    first_event: float | None
    first_token: float | None
    sample: bytes  # the start of the body, to show when the stream failed


_HEAD_END = b"\r\n\r\n"
_LAST_CHUNK = b"\r\n0\r\n\r\n"


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one streamed request at a time."""

    def __init__(self, shape: StreamShape) -> None:
        self._shape = shape
        self._transport: asyncio.Transport | None = None
        self._future: asyncio.Future[_Outcome] | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self._head = bytearray()
        self._in_body = False
        self._status = 0
        self._chunked = False
        self._remaining = -1  # bytes left of a sized body; -1 when the size is not known
        self._last = b""  # the last bytes of a chunked body, to see the closing chunk
        self._sample = b""
        self._tokens = _Counter(self._shape.token_marker)
        self._endings = _Counter(self._shape.end_marker)
        self._first_event: float | None = None
        self._first_token: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        future, self._future = self._future, None
        if future is None or future.done():
            return
        if self._in_body and not self._chunked and self._remaining < 0:
            future.set_result(self._outcome())  # a body that ends with the connection
        else:
            future.set_exception(exc or ConnectionError("connection closed mid-response"))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def request(self, data: bytes) -> asyncio.Future[_Outcome]:
        assert self._transport is not None
        self._reset()
        self._future = asyncio.get_running_loop().create_future()
        self._transport.write(data)
        return self._future

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self._in_body:
            self._head += data
            end = self._head.find(_HEAD_END)
            if end < 0:
                return
            data = bytes(self._head[end + len(_HEAD_END) :])
            self._start_body(bytes(self._head[:end]))
            if not data:
                return
        if self._first_event is None:
            self._first_event = now
        if len(self._sample) < 300:
            self._sample += data[:300]
        if self._tokens.feed(data) and self._first_token is None:
            self._first_token = now
        self._endings.feed(data)
        if self._body_complete(data):
            future, self._future = self._future, None
            if future is not None and not future.done():
                future.set_result(self._outcome())

    def _start_body(self, head: bytes) -> None:
        self._in_body = True
        lines = head.decode("latin-1").split("\r\n")
        self._status = int(lines[0].split(" ", 2)[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "transfer-encoding" and "chunked" in value.lower():
                self._chunked = True
                self._last = b"\r\n"  # lets an empty body's lone closing chunk match too
            elif name == "content-length":
                self._remaining = int(value)

    def _body_complete(self, data: bytes) -> bool:
        if self._chunked:
            # No pipelining, so the closing chunk is the very end of what the server sent.
            self._last = (self._last + data)[-len(_LAST_CHUNK) :]
            return self._last == _LAST_CHUNK
        if self._remaining >= 0:
            self._remaining -= len(data)
            return self._remaining <= 0
        return False

    def _outcome(self) -> _Outcome:
        return _Outcome(
            status=self._status,
            tokens=self._tokens.count,
            endings=self._endings.count,
            first_event=self._first_event,
            first_token=self._first_token,
            sample=self._sample,
        )


def _request_bytes(load: StreamLoad) -> tuple[str, int, bytes]:
    url = urlsplit(load.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(load.body)}\r\n\r\n"
    )
    return host, port, head.encode() + load.body


def _record(outcome: _Outcome, started: float, load: StreamLoad, stats: StreamStats) -> None:
    if outcome.status != 200:
        stats.fail(f"HTTP {outcome.status}: {outcome.sample[:200]!r}")
        return
    tokens = outcome.tokens // load.shape.repeats
    if outcome.endings != 1 or outcome.tokens != load.expected_tokens * load.shape.repeats:
        stats.fail(f"{tokens} tokens, {outcome.endings} end markers")
        return
    if outcome.first_event is not None and outcome.first_token is not None:
        stats.first_event_ms.append((outcome.first_event - started) * 1000)
        stats.first_token_ms.append((outcome.first_token - started) * 1000)
    stats.streams += 1
    stats.tokens += tokens


async def _worker(load: StreamLoad, stats: StreamStats, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    host, port, request = _request_bytes(load)
    connection: _Connection | None = None
    try:
        while time.perf_counter() < deadline and stats.streams + stats.errors < load.max_streams:
            if connection is None or connection.closed:
                _, connection = await loop.create_connection(
                    lambda: _Connection(load.shape), host, port
                )
            started = time.perf_counter()
            try:
                outcome = await asyncio.wait_for(connection.request(request), timeout=60)
            except (OSError, TimeoutError) as exc:
                stats.fail(f"{type(exc).__name__}: {exc}")
                connection.close()
                connection = None
                continue
            _record(outcome, started, load, stats)
    finally:
        if connection is not None:
            connection.close()


async def run_streams(load: StreamLoad) -> StreamStats:
    stats = StreamStats()
    started = time.perf_counter()
    deadline = started + load.seconds
    await asyncio.gather(*(_worker(load, stats, deadline) for _ in range(load.concurrency)))
    stats.seconds = time.perf_counter() - started
    return stats
