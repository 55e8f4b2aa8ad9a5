"""The backend HTTP client against scripted raw-socket servers: framing (Content-Length, chunked,
until close), keep-alive and the pool, timeouts, every failure and how upstream.py maps it."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mlx_gateway.backends import httpclient
from mlx_gateway.backends.httpclient import ConnectError, HttpClient, PayloadError, TransportError
from mlx_gateway.backends.profiles import PROFILES
from mlx_gateway.backends.upstream import Upstream, mapped_transport_errors
from mlx_gateway.errors import BackendUnavailable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback server whose connections run `handler`; counts connections, keeps heads."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self.bodies.append(body)
        return body


def answer(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status.encode(),
        len(body),
        extra,
        body,
    )


def run(coroutine: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coroutine, 10)

    return asyncio.run(main())


def client(server: Server, **options: Any) -> HttpClient:
    return HttpClient(
        server.url, timeout=options.pop("timeout", 5), total_timeout=options.pop("total", 10)
    )


def serve_forever(reply: Callable[[bytes], bytes], server_ref: list[Server]) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await server_ref[0].read_request(reader)
            writer.write(reply(body))
            await writer.drain()

    return handler


# ---- framing and the pool ------------------------------------------------------------------------


def test_content_length_answers_reuse_one_connection() -> None:
    async def main() -> None:
        ref: list[Server] = []
        async with Server(serve_forever(lambda body: answer(b"echo:" + body), ref)) as server:
            ref.append(server)
            http = client(server)
            for n in range(3):
                response = await http.request("POST", "/v1/x", b"n=%d" % n)
                assert response.status == 200
                assert await response.read() == b"echo:n=%d" % n
            assert server.connections == 1
            http.close()

    run(main())


def test_request_head_carries_host_length_headers_and_the_url_prefix() -> None:
    async def main() -> None:
        ref: list[Server] = []
        async with Server(serve_forever(lambda _: answer(b"{}"), ref)) as server:
            ref.append(server)
            http = HttpClient(server.url + "/api", timeout=5, total_timeout=10)
            response = await http.request(
                "POST", "/v1/chat", b"{}", headers=b"Content-Type: application/json\r\n"
            )
            await response.read()
            response = await http.request("GET", "/v1/models")
            await response.read()
            http.close()
        host = server.url.removeprefix("http://").encode()
        post, get = server.heads
        assert post.startswith(b"POST /api/v1/chat HTTP/1.1\r\n")
        assert b"\r\nHost: " + host + b"\r\n" in post
        assert b"\r\nContent-Type: application/json\r\n" in post
        assert b"\r\nContent-Length: 2\r\n" in post
        assert get.startswith(b"GET /api/v1/models HTTP/1.1\r\n")
        assert b"Content-Length" not in get

    run(main())


def test_chunked_body_comes_piece_by_piece_as_it_arrives() -> None:
    async def main() -> None:
        go_on = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await go_on.wait()
            writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
            await writer.drain()
            await server.read_request(reader)
            writer.write(answer(b"again"))
            await writer.drain()

        async with Server(handler) as server:
            http = client(server)
            response = await http.request("POST", "/s", b"{}")
            pieces = response.__aiter__()
            assert await pieces.__anext__() == b"first"
            go_on.set()
            assert [piece async for piece in pieces] == [b"second"]
            second = await http.request("POST", "/s", b"{}")  # the same connection, pooled
            assert await second.read() == b"again"
            assert server.connections == 1
            http.close()

    run(main())


def test_body_until_the_connection_closes() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n")
            await writer.drain()
            writer.write(b"data: 2\n\n")
            writer.close()

        async with Server(handler) as server:
            http = client(server)
            response = await http.request("POST", "/s", b"{}")
            assert await response.read() == b"data: 1\n\ndata: 2\n\n"
            assert not http._idle  # not reusable
            http.close()

    run(main())


def test_connection_close_answer_is_not_pooled() -> None:
    async def main() -> None:
        ref: list[Server] = []
        reply = answer(b"ok", extra=b"Connection: close\r\n")
        async with Server(serve_forever(lambda _: reply, ref)) as server:
            ref.append(server)
            http = client(server)
            for _ in range(2):
                response = await http.request("POST", "/x", b"{}")
                assert await response.read() == b"ok"
            assert server.connections == 2
            http.close()

    run(main())


def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(answer(b"one"))
            await writer.drain()  # then closes: an idle keep-alive connection goes away

        async with Server(handler) as server:
            http = client(server)
            response = await http.request("POST", "/x", b"{}")
            assert await response.read() == b"one"
            await asyncio.sleep(0.05)
            response = await http.request("POST", "/x", b"{}")
            assert await response.read() == b"one"
            assert server.connections == 2
            http.close()

    run(main())


def test_idle_connections_older_than_keepalive_are_not_reused() -> None:
    async def main() -> None:
        ref: list[Server] = []
        async with Server(serve_forever(lambda _: answer(b"ok"), ref)) as server:
            ref.append(server)
            http = HttpClient(server.url, timeout=5, total_timeout=10, keepalive=0.01)
            for _ in range(2):
                response = await http.request("POST", "/x", b"{}")
                await response.read()
                await asyncio.sleep(0.03)
            assert server.connections == 2
            http.close()

    run(main())


@pytest.mark.parametrize(
    ("server_timeout", "connections"),
    [(b"timeout=1.05, max=100", 2), (b"timeout=30", 1), (b"max=100", 1)],
)
def test_a_connection_is_not_reused_past_the_idle_limit_the_server_states(
    server_timeout: bytes, connections: int
) -> None:
    """llama-server says `Keep-Alive: timeout=5` and closes idle connections then: a POST sent
    on one as it closes could not be sent again, so the pool gives it up a second earlier."""

    async def main() -> None:
        ref: list[Server] = []
        reply = answer(b"ok", extra=b"Keep-Alive: " + server_timeout + b"\r\n")
        async with Server(serve_forever(lambda _: reply, ref)) as server:
            ref.append(server)
            http = HttpClient(server.url, timeout=5, total_timeout=10, keepalive=30)
            for _ in range(2):
                response = await http.request("POST", "/x", b"{}")
                await response.read()
                await asyncio.sleep(0.1)
            assert server.connections == connections
            http.close()

    run(main())


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"timeout=5, max=100", 5.0), (b"max=3, Timeout = 2.5", 2.5), (b"max=3", None),
     (b"timeout=soon", None), (b"", None)],
)
def test_keepalive_timeout_is_read_from_the_header(value: bytes, seconds: float | None) -> None:
    assert httpclient.keepalive_timeout(value) == seconds


def test_idle_connections_are_closed_on_a_timer_without_another_request() -> None:
    """After a burst the descriptors go back by themselves, not when the pool is next used."""

    async def main() -> None:
        ref: list[Server] = []
        async with Server(serve_forever(lambda _: answer(b"ok"), ref)) as server:
            ref.append(server)
            http = HttpClient(server.url, timeout=5, total_timeout=10, keepalive=0.2)
            responses = await asyncio.gather(*(http.request("POST", "/x", b"{}") for _ in range(5)))
            await asyncio.gather(*(response.read() for response in responses))
            assert http.idle_count == 5
            for _ in range(100):  # bounded: 5 s at most
                if http.idle_count == 0:
                    break
                await asyncio.sleep(0.05)
            assert http.idle_count == 0
            http.close()

    run(main())


def test_the_pool_keeps_at_most_max_idle_connections() -> None:
    async def main() -> None:
        ref: list[Server] = []
        async with Server(serve_forever(lambda _: answer(b"ok"), ref)) as server:
            ref.append(server)
            http = HttpClient(server.url, timeout=5, total_timeout=10, max_idle=2)
            responses = await asyncio.gather(*(http.request("POST", "/x", b"{}") for _ in range(6)))
            await asyncio.gather(*(response.read() for response in responses))
            assert (server.connections, http.idle_count) == (6, 2)
            http.close()
            assert http.idle_count == 0

    run(main())


def test_closing_an_unfinished_body_drops_the_connection() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await writer.drain()
            await reader.read()  # until the client closes
            closed.set()

        closed = asyncio.Event()
        async with Server(handler) as server:
            http = client(server)
            response = await http.request("POST", "/s", b"{}")
            assert await response.__anext__() == b"abc"
            response.close()
            await asyncio.wait_for(closed.wait(), 5)
            assert not http._idle
            http.close()

    run(main())


def test_a_big_body_pauses_reading_and_still_arrives_whole(monkeypatch: Any) -> None:
    monkeypatch.setattr(httpclient, "HIGH_WATER", 1000)
    payload = bytes(range(256)) * 400

    async def main() -> None:
        ref: list[Server] = []
        async with Server(serve_forever(lambda _: answer(payload), ref)) as server:
            ref.append(server)
            http = client(server)
            response = await http.request("POST", "/x", b"{}")
            received = b""
            async for piece in response:
                received += piece
                await asyncio.sleep(0)
            assert received == payload
            http.close()

    run(main())


# ---- failures ------------------------------------------------------------------------------------


def test_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def main() -> None:
        http = HttpClient(f"http://127.0.0.1:{port}", timeout=5, total_timeout=10)
        with pytest.raises(ConnectError) as caught:
            await http.request("POST", "/x", b"{}")
        assert (caught.value.host, caught.value.port) == ("127.0.0.1", port)
        with pytest.raises(BackendUnavailable) as mapped, mapped_transport_errors(5):
            await http.request("POST", "/x", b"{}")
        assert mapped.value.message.startswith(
            f"MLX backend unavailable: cannot connect to 127.0.0.1:{port} ("
        )

    run(main())


def test_closed_before_answering_is_server_disconnected() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
            await server.read_request(reader)

        async with Server(handler) as server:
            http = client(server)
            with pytest.raises(TransportError, match="Server disconnected"):
                await http.request("POST", "/x", b"{}")
            with pytest.raises(BackendUnavailable) as mapped, mapped_transport_errors(5):
                await http.request("POST", "/x", b"{}")
            assert mapped.value.message == "MLX backend unavailable: Server disconnected"

    run(main())


def test_body_cut_short_is_a_payload_error() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
            await writer.drain()

        async with Server(handler) as server:
            http = client(server)
            response = await http.request("POST", "/x", b"{}")
            with pytest.raises(BackendUnavailable) as mapped, mapped_transport_errors(5):
                await response.read()
            assert mapped.value.message.startswith(
                "MLX backend unavailable: connection broke while reading the answer ("
            )

    run(main())


def test_an_answer_that_is_not_http_is_a_payload_error() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"SMTP ready\r\n\r\n")
            await writer.drain()
            await reader.read()

        async with Server(handler) as server:
            http = client(server)
            with pytest.raises(PayloadError, match="not valid HTTP"):
                await http.request("POST", "/x", b"{}")

    run(main())


def test_silence_times_out_and_maps_to_no_answer_within() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            await asyncio.sleep(5)

        async with Server(handler) as server:
            http = client(server, timeout=0.1)
            with pytest.raises(BackendUnavailable) as mapped, mapped_transport_errors(0.1):
                await http.request("POST", "/x", b"{}")
            assert mapped.value.message == "MLX backend unavailable: no answer within 0.1 s"

    run(main())


async def send_pieces(writer: asyncio.StreamWriter, count: int, every: float) -> None:
    """A chunked answer's head, then `count` one-byte pieces `every` seconds apart."""
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(count):
        await asyncio.sleep(every)
        writer.write(b"1\r\nx\r\n")
        await writer.drain()


def test_a_stream_that_keeps_producing_outlives_the_silence_timeout() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            await send_pieces(writer, count=6, every=0.05)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await reader.read()

        async with Server(handler) as server:
            http = client(server, timeout=0.15)
            response = await http.request("POST", "/s", b"{}")
            assert await response.read() == b"x" * 6
            http.close()

    run(main())


def test_silence_after_some_pieces_times_out_the_stream() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            await send_pieces(writer, count=3, every=0.05)
            await asyncio.sleep(5)

        async with Server(handler) as server:
            http = client(server, timeout=0.3)
            response = await http.request("POST", "/s", b"{}")
            pieces: list[bytes] = []

            async def read_all() -> None:
                async for piece in response:
                    pieces.append(piece)

            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await read_all()
            assert b"".join(pieces) == b"xxx"
            assert 0.3 <= time.monotonic() - started < 2

    run(main())


def test_a_pooled_connection_times_each_exchange_afresh() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for delay in (0.0, 0.15):  # the second answer comes just within the timeout
                await server.read_request(reader)
                await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
            await reader.read()

        async with Server(handler) as server:
            http = client(server, timeout=0.25)
            first = await http.request("POST", "/a", b"{}")
            assert await first.read() == b"ok"
            await asyncio.sleep(0.2)  # idle in the pool for most of a timeout
            second = await http.request("POST", "/b", b"{}")
            assert await second.read() == b"ok"
            assert server.connections == 1
            http.close()

    run(main())


def test_the_total_timeout_ends_even_a_producing_stream() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            await send_pieces(writer, count=100, every=0.02)

        async with Server(handler) as server:
            http = client(server, timeout=1, total=0.2)
            response = await http.request("POST", "/s", b"{}")
            with pytest.raises(TimeoutError):
                await response.read()

    run(main())


def test_get_is_retried_once_on_a_new_connection_but_post_is_not() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Each connection answers one request, then drops the next one unanswered: what a
            # pooled connection looks like when the server closed it just as it was reused.
            await server.read_request(reader)
            writer.write(answer(b"connection %d" % server.connections))
            await writer.drain()
            await server.read_request(reader)

        async with Server(handler) as server:
            http = client(server)
            assert await (await http.request("GET", "/m")).read() == b"connection 1"
            assert await (await http.request("GET", "/m")).read() == b"connection 2"
            with pytest.raises(TransportError, match="Server disconnected"):
                await http.request("POST", "/x", b"{}")
            assert server.connections == 2
            http.close()

    run(main())


# ---- the upstream on top of it -------------------------------------------------------------------


def test_upstream_maps_status_errors_and_streams_pieces() -> None:
    async def main() -> None:
        replies = [
            answer(b'{"error": "bad thing"}', status="400 Bad Request"),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'f\r\ndata: {"a":1}\n\n\r\n0\r\n\r\n',
        ]

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while replies:
                await server.read_request(reader)
                writer.write(replies.pop(0))
                await writer.drain()

        async with Server(handler) as server:
            upstream = Upstream(server.url, PROFILES["mlx_lm"], timeout=5, total_timeout=10)
            await upstream.start()
            with pytest.raises(Exception, match="bad thing"):
                await upstream.complete(b"{}")
            async with upstream.stream(b"{}") as pieces:
                assert [piece async for piece in pieces] == [b'data: {"a":1}\n\n']
            assert b"Accept: text/event-stream" in server.heads[-1]
            await upstream.close()

    run(main())


def test_upstream_needs_start() -> None:
    upstream = Upstream("http://127.0.0.1:1", PROFILES["mlx_lm"], timeout=5, total_timeout=10)
    with pytest.raises(RuntimeError, match="start"):
        _ = upstream.client
