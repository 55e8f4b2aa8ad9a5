"""A transparent HTTP proxy that records what Claude Code sent the gateway and what it got back.

Claude Code talks to the proxy (`ANTHROPIC_BASE_URL=proxy.url`), the proxy to the gateway. Bodies
are relayed piece by piece as they arrive, so streaming behaves as without the proxy, and every
exchange is kept whole: the tests check the gateway's Anthropic output event by event
(`tests.support.anthropic_stream`) and what Claude Code itself sent, which the scripted backend
behind the gateway cannot see. `Accept-Encoding` is not forwarded, so bodies are recorded as sent.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.ports import free_port

# Hop-by-hop and framing headers: each side of the proxy sets its own.
_SKIP = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "accept-encoding",
        "content-encoding",
    }
)


@dataclass(frozen=True)
class Exchange:
    """One request Claude Code made and the gateway's answer, bodies as bytes."""

    method: str
    path: str
    request: bytes
    status: int
    content_type: str
    response: bytes


def _forwardable(headers: Any) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.lower() not in _SKIP}


class RecordingProxy:
    """`with RecordingProxy(target_url) as proxy:` relays to `target_url` and records."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Numbered as requests arrive: a stream the client abandons is recorded as it got it,
        # in its place, even when the client's next request finishes first.
        self._recorded: dict[int, Exchange] = {}
        self._arrived = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def __enter__(self) -> RecordingProxy:
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

    @property
    def exchanges(self) -> list[Exchange]:
        return [self._recorded[slot] for slot in sorted(self._recorded)]

    async def _start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        slot, self._arrived = self._arrived, self._arrived + 1
        body = await request.read()
        async with self._session.request(
            request.method,
            self.target + request.path_qs,
            data=body,
            headers=_forwardable(request.headers),
        ) as upstream:
            headers = _forwardable(upstream.headers)
            response = web.StreamResponse(status=upstream.status, headers=headers)
            parts: list[bytes] = []
            try:
                await response.prepare(request)
                async for data in upstream.content.iter_any():
                    parts.append(data)
                    await response.write(data)
                await response.write_eof()
            except ConnectionResetError:
                pass  # the client left first (it had what it needed): keep what was sent
            finally:
                self._recorded[slot] = Exchange(
                    request.method,
                    request.path,
                    body,
                    upstream.status,
                    upstream.headers.get("Content-Type", ""),
                    b"".join(parts),
                )
        return response
