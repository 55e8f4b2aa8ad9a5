"""A fast fake OpenAI backend: `python -m bench.fake_backend --port P [--chunks N]`.

It has to be much faster than the gateway, or the benchmark would measure the fake instead of
the gateway. So it is a raw asyncio Protocol on uvloop (no framework, no JSON work per request):
every answer is built once at start-up as the exact bytes that go on the wire, and a request is
recognised with a few `bytes.find` calls.

- `POST /v1/chat/completions` (or `/chat/completions`) answers a fixed small `chat.completion`;
  with `"stream": true` in the body it answers N one-token chunks, a finish chunk, a usage chunk
  and `data: [DONE]`, as HTTP/1.1 chunked transfer encoding so the connection stays alive.
- `GET /v1/models` and `GET /health` answer small fixed bodies; anything else is a 404.

A stream goes out as a few writes: the headers with the role chunk at once (so the first event
is never held back), then the token frames, `--chunks-per-write` per event-loop turn (by default
all of them in one write), then the closing chunks. Concurrent streams interleave, and writing
pauses while the reader's socket buffer is full (flow control), so a slow reader is never buried.

Why whole bursts by default: the fake shares a core with the load tools, and at one frame per
write its syscall per token cost ~6 us per chunk, so the direct path (client -> fake) reached
only ~85k chunks/s, no faster than the gateway itself: the ratio then measured the load side.
In bursts the direct path does ~2M chunks/s, well over 10x the gateway. A gateway under load
sees multi-chunk reads either way (it reads whatever arrived while it was busy), and its CPU per
chunk moved only from ~12.5 us (one frame per write) to ~9.7 us (bursts) when measured; run
`python -m bench --chunks-per-write 1` to see the per-read share of the gateway's cost.

When it does write frame by frame, a long stream would keep the shared core for ~1.5 ms, and the
kernel (EEVDF "run to parity") lets it finish its slice before a woken client runs, which added
that much to time-to-first-event through the gateway only. So the fake gives the core away
(`sched_yield`) after every ~100 us of stream writing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import msgspec

CREATED = 1_700_000_000
MODEL = "bench-model"
COMPLETION_TEXT = "Hello from the benchmark backend."
HEADER_END = b"\r\n\r\n"
MAX_HEADER_BYTES = 64 * 1024
YIELD_EVERY_NS = 100_000


class StreamFlag(msgspec.Struct):
    stream: bool | None = False


_STREAM_FLAG = msgspec.json.Decoder(StreamFlag)


# Begins every token's text. It occurs nowhere else in either protocol's stream (JSON keys are
# quoted, never preceded by a space), so a client counts tokens by it however a gateway groups
# them into events.
TOKEN_MARKER = b" tok"


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _http_response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _chunk_frame(payload: bytes) -> bytes:
    """One HTTP/1.1 chunked-encoding frame around `payload`."""
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def _sse(data: Any) -> bytes:
    return b"data: " + (data if isinstance(data, bytes) else _compact(data)) + b"\n\n"


def completion_body() -> bytes:
    return _compact(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": COMPLETION_TEXT},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
        }
    )


def stream_writes(chunks: int, per_write: int) -> list[bytes]:
    """The whole streamed answer as the writes that send it: headers + role chunk alone first
    (so the first event is not held back), then `per_write` token frames per write, then the
    closing chunks."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    first = head + _chunk_frame(_sse(chunk({"role": "assistant"})))
    # Every token differs: LiteLLM ends a stream with an error after 100 identical chunks.
    tokens = [
        _chunk_frame(_sse(chunk({"content": f"{TOKEN_MARKER.decode()}{index}"})))
        for index in range(chunks)
    ]
    usage = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks},
    }
    tail = (
        _chunk_frame(_sse(chunk({}, "stop")))
        + _chunk_frame(_sse(usage))
        + _chunk_frame(_sse(b"[DONE]"))
        + b"0\r\n\r\n"
    )
    per_write = per_write if per_write > 0 else max(chunks, 1)
    groups = [b"".join(tokens[done : done + per_write]) for done in range(0, chunks, per_write)]
    return [first, *groups, tail]


@dataclass(frozen=True, slots=True)
class Answers:
    """Every response the server can give, precomputed."""

    completion: bytes
    stream: list[bytes]
    models: bytes
    health: bytes
    not_found: bytes
    bad_request: bytes

    @classmethod
    def build(cls, chunks: int, per_write: int = 0) -> Answers:
        models = _compact({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        error = _compact({"error": {"message": "not found", "type": "not_found"}})
        bad = _compact({"error": {"message": "bad request", "type": "invalid_request_error"}})
        return cls(
            completion=_http_response("200 OK", "application/json", completion_body()),
            stream=stream_writes(chunks, per_write),
            models=_http_response("200 OK", "application/json", models),
            health=_http_response("200 OK", "application/json", b'{"status":"ok"}'),
            not_found=_http_response("404 Not Found", "application/json", error),
            bad_request=_http_response("400 Bad Request", "application/json", bad),
        )


class CoreSharing:
    """Gives the core to other runnable processes every YIELD_EVERY_NS of writing (see above).
    One per server, not per connection: it bounds the whole process's turn."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = time.perf_counter_ns()

    def wrote(self) -> None:
        now = time.perf_counter_ns()
        if now - self._last >= YIELD_EVERY_NS:
            os.sched_yield()  # returns at once when nothing else wants the core
            self._last = time.perf_counter_ns()


class BackendProtocol(asyncio.Protocol):
    """One connection: parse a request, answer it, repeat (keep-alive, no pipelining needed)."""

    def __init__(
        self, answers: Answers, loop: asyncio.AbstractEventLoop, sharing: CoreSharing
    ) -> None:
        self._answers = answers
        self._sharing = sharing
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._body_start = -1  # offset of the body once the header block is complete
        self._body_length = 0
        self._head = b""
        self._stream_next = -1  # index of the next stream frame, -1 when not streaming
        self._paused = False
        self._scheduled: asyncio.Handle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 (asyncio's API)
        if self._scheduled is not None:
            self._scheduled.cancel()
        self._transport = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._stream_next >= 0 and self._scheduled is None:
            self._scheduled = self._loop.call_soon(self._write_next_frame)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._stream_next < 0:
            self._handle_requests()

    def _handle_requests(self) -> None:
        while self._transport is not None and self._stream_next < 0:
            if not self._take_request():
                return

    def _take_request(self) -> bool:
        """Answers the next complete request in the buffer; False if more bytes are needed."""
        if self._body_start < 0:
            end = self._buffer.find(HEADER_END)
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES and self._transport is not None:
                    self._transport.close()
                return False
            self._head = bytes(self._buffer[:end])
            self._body_start = end + len(HEADER_END)
            self._body_length = _content_length(self._head)
        stop = self._body_start + self._body_length
        if len(self._buffer) < stop:
            return False
        # The body is read in place: copying a 120 KB body would cost more than answering.
        with memoryview(self._buffer) as view:
            self._answer(self._head, view[self._body_start : stop])
        del self._buffer[:stop]
        self._body_start = -1
        return True

    def _answer(self, head: bytes, body: memoryview) -> None:
        assert self._transport is not None
        line_end = head.find(b"\r\n")
        method, _, rest = head[:line_end].partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        if method == b"POST" and path in (b"/v1/chat/completions", b"/chat/completions"):
            self._answer_chat(body)
        elif method == b"GET" and path in (b"/v1/models", b"/models"):
            self._transport.write(self._answers.models)
        elif method == b"GET" and path == b"/health":
            self._transport.write(self._answers.health)
        elif method in (b"GET", b"POST"):
            # Logged: a peer calling a route the fake lacks should be obvious in its log.
            print(f"404 {head[:line_end].decode('latin-1')}", file=sys.stderr, flush=True)
            self._transport.write(self._answers.not_found)
        else:
            self._transport.write(self._answers.bad_request)

    def _answer_chat(self, body: memoryview) -> None:
        assert self._transport is not None
        try:
            # msgspec skips every field but `stream` at C speed, whatever the key order or
            # spacing; a substring search was slower on 120 KB of JSON and less exact.
            wants_stream = _STREAM_FLAG.decode(body).stream
        except msgspec.DecodeError:
            self._transport.write(self._answers.bad_request)
            return
        if wants_stream:
            self._stream_next = 0
            self._write_next_frame()
        else:
            self._transport.write(self._answers.completion)

    def _write_next_frame(self) -> None:
        """Writes one frame and schedules the next for the following loop turn (see above)."""
        self._scheduled = None
        if self._transport is None or self._paused:
            return
        frames = self._answers.stream
        self._transport.write(frames[self._stream_next])
        self._stream_next += 1
        self._sharing.wrote()
        if self._stream_next < len(frames):
            self._scheduled = self._loop.call_soon(self._write_next_frame)
            return
        self._stream_next = -1
        if self._buffer:
            self._handle_requests()


def _content_length(head: bytes) -> int:
    """Content-Length from a header block; 0 when absent (GET, or a client we don't support)."""
    lowered = head.lower()
    at = lowered.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    start = at + len(b"\r\ncontent-length:")
    end = lowered.find(b"\r\n", start)
    return int(lowered[start : end if end >= 0 else len(lowered)].strip())


async def serve(host: str, port: int, chunks: int, per_write: int) -> None:
    loop = asyncio.get_running_loop()
    answers = Answers.build(chunks, per_write)
    sharing = CoreSharing()
    factory: Callable[[], asyncio.Protocol] = lambda: BackendProtocol(answers, loop, sharing)  # noqa: E731
    server = await loop.create_server(factory, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_backend", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=200, help="token chunks per streamed answer")
    parser.add_argument(
        "--chunks-per-write", type=int, default=0, help="token chunks per write (0: all)"
    )
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # the gateway depends on uvloop, so this is only a fallback
        asyncio.run(serve(args.host, args.port, args.chunks, args.chunks_per_write))
    else:
        uvloop.run(serve(args.host, args.port, args.chunks, args.chunks_per_write))


if __name__ == "__main__":
    main()
