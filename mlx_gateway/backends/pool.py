"""The backends of one gateway: which one serves a request, how many requests each takes at
once, who waits, and which are down.

Routing: the backends that serve the resolved model, ordered for the conversation by rendezvous
hashing (affinity.py), so that its turns reach the server holding its prompt cache; among them
the first that is up and has room. Only when there is a choice is the conversation's key
computed (the routes pass a function), so one backend costs no hashing; the orders of the last
few thousand conversations are kept, so a conversation's later turns cost a dict lookup.

Admission: each backend takes `limit` requests at once (0: any number); when every backend
that could serve is full, the request waits in one bounded queue, first come first served,
for a place on any of them. A full queue, or a wait past `queue_timeout`, is an Overloaded
error (529, or 429 for OpenAI clients) with `retry-after`. A request cancelled while it waits
(its client left) frees its place at once, and a place handed to it as it left goes on.

Failover: a request whose backend cannot be reached, or answers 503 or 429, is tried on the
next backend in its order as long as nothing of the answer has reached the client; after that
the stream machine reports the failure in the stream itself.

Health: a backend that cannot be reached is marked down at once (passively, by the request that
saw it) and checked again by one monitor task: every `DOWN_MIN` seconds, doubling up to
`DOWN_MAX`, while down; every `UP_INTERVAL` seconds while up. A backend that comes back is probed
for its kind again. A request never goes to a down backend while another can serve it; when all
are down, it tries the best one anyway, which finds out at once whether it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from mlx_gateway.backends import probe
from mlx_gateway.backends.affinity import node_seed, order_by_seeds
from mlx_gateway.backends.backend import Backend
from mlx_gateway.errors import (
    BackendFailed,
    BackendUnavailable,
    GatewayError,
    NotFound,
    Overloaded,
    RateLimited,
)

log = logging.getLogger("mlx_gateway.pool")

T = TypeVar("T")

DOWN_MIN = 1.0
DOWN_MAX = 15.0
UP_INTERVAL = 30.0
# Told to clients shed by a full queue: long enough for a slot to free, short enough to retry.
SHED_RETRY_AFTER = 5.0
ORDERS_KEPT = 4096


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[Backend]
    candidates: Sequence[Backend]


def may_fail_over(error: GatewayError) -> bool:
    """Errors that say "not this server, not now", never "not this request"."""
    if isinstance(error, BackendFailed):
        return error.backend_status == 503
    return isinstance(error, BackendUnavailable | RateLimited)


class BackendPool:
    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        queue_size: int,
        queue_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backends = list(backends)
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.clock = clock
        self.shed = 0
        self._down = 0  # backends marked down: while none is, the order needs no second pass
        self._waiters: list[_Waiter] = []
        # Per model: its backends, their name hashes and weights (see affinity.py).
        self._serving: dict[str, tuple[list[Backend], list[int], list[float] | None]] = {}
        # The order of recent conversations: a memo of a pure function, bounded, so it is the
        # same in every process and costs a dict lookup for a conversation's next turns.
        self._orders: dict[tuple[str, str], list[Backend]] = {}
        self._monitor: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        for backend in self.backends:
            await backend.start()
        self._wake = asyncio.Event()
        self._monitor = asyncio.ensure_future(self._watch())

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
        for backend in self.backends:
            await backend.close()

    # ---- routing --------------------------------------------------------------------------------

    def candidates(self, model: str, affinity: Callable[[], str]) -> list[Backend]:
        """The backends serving `model`, in the conversation's order, those up first."""
        serving = self._serving.get(model)
        if serving is None:
            serving = self._serving[model] = self._nodes(model)
        backends, seeds, weights = serving
        if len(backends) == 1:
            return backends
        key = (model, affinity())
        ordered = self._orders.get(key)
        if ordered is None:
            if len(self._orders) >= ORDERS_KEPT:
                self._orders.clear()  # a bound, not a policy: the orders are cheap to redo
            ordered = [backends[index] for index in order_by_seeds(key[1], seeds, weights)]
            self._orders[key] = ordered
        if not self._down:
            return ordered
        return [b for b in ordered if b.up] + [b for b in ordered if not b.up]

    def _nodes(self, model: str) -> tuple[list[Backend], list[int], list[float] | None]:
        backends = [backend for backend in self.backends if backend.serves(model)]
        if not backends:
            raise NotFound(f"no backend serves the model {model}")
        seeds = [node_seed(backend.url) for backend in backends]
        weights = [backend.spec.weight for backend in backends]
        return backends, seeds, None if len(set(weights)) == 1 else weights

    def pick(self, model: str, affinity: Callable[[], str]) -> Backend:
        """The backend that would serve, without taking a place (token counts)."""
        return self.candidates(model, affinity)[0]

    async def run(
        self,
        model: str,
        affinity: Callable[[], str],
        attempt: Callable[[Backend], Awaitable[T]],
        committed: Callable[[], bool],
    ) -> T:
        """Runs `attempt` on a backend, holding a place on it until it returns; fails over to
        the next candidate while `committed()` says nothing has reached the client."""
        order = self.candidates(model, affinity)
        while True:
            backend = await self._admit(order)
            try:
                await backend.ready()
                return await attempt(backend)
            except GatewayError as error:
                order = self._after_failure(backend, error, order, committed())
            finally:
                self._release(backend)

    def _after_failure(
        self, backend: Backend, error: GatewayError, order: list[Backend], committed: bool
    ) -> list[Backend]:
        """The candidates left to try, or the error raised again."""
        backend.errors += 1
        if isinstance(error, BackendUnavailable) and error.unreachable:
            self.mark_down(backend, error.message)
        rest = [other for other in order if other is not backend]
        if committed or not rest or not may_fail_over(error):
            raise error
        backend.failovers += 1
        log.warning("%s failed before answering (%s); trying %s", backend.url, error, rest[0].url)
        return rest

    # ---- admission ------------------------------------------------------------------------------

    def _take(self, candidates: Sequence[Backend]) -> Backend | None:
        for backend in candidates:
            if backend.up and backend.has_room():
                backend.in_flight += 1
                backend.requests += 1
                return backend
        return None

    async def _admit(self, candidates: Sequence[Backend]) -> Backend:
        taken = self._take(candidates)
        if taken is not None:
            return taken
        if not any(backend.up for backend in candidates):
            best = candidates[0]  # all down: the best one finds out at once whether it is back
            best.in_flight += 1
            best.requests += 1
            return best
        if len(self._waiters) >= self.queue_size:
            raise self._overloaded(f"{len(self._waiters)} requests already wait")
        return await self._wait(candidates)

    async def _wait(self, candidates: Sequence[Backend]) -> Backend:
        waiter = _Waiter(asyncio.get_running_loop().create_future(), candidates)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout):
                return await waiter.future
        except BaseException as exc:
            future = waiter.future
            if future.done() and not future.cancelled():
                self._release(future.result())  # handed over as the wait ended: pass it on
            if isinstance(exc, TimeoutError):
                raise self._overloaded(f"no place within {self.queue_timeout:g} s") from None
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _overloaded(self, why: str) -> Overloaded:
        self.shed += 1
        message = f"every backend serving this model is busy ({why}); retry shortly"
        return Overloaded(message, SHED_RETRY_AFTER)

    def _release(self, backend: Backend) -> None:
        backend.in_flight -= 1
        if self._waiters:
            self._dispatch()

    def _dispatch(self) -> None:
        """Hands free places to waiters, first come first served."""
        for waiter in list(self._waiters):
            if waiter.future.done():
                continue
            taken = self._take(waiter.candidates)
            if taken is not None:
                waiter.future.set_result(taken)
                self._waiters.remove(waiter)

    # ---- health ---------------------------------------------------------------------------------

    def mark_down(self, backend: Backend, reason: str) -> None:
        backend.failures += 1
        delay = min(DOWN_MIN * 2 ** (backend.failures - 1), DOWN_MAX)
        backend.next_check = self.clock() + delay
        if backend.up:
            backend.up = False
            self._down += 1
            backend.last_error = reason  # the first reason, not the checks' that follow
            log.warning("backend %s is down: %s", backend.url, reason)
        if self._wake is not None:
            self._wake.set()

    def mark_up(self, backend: Backend) -> None:
        backend.failures = 0
        backend.next_check = self.clock() + UP_INTERVAL
        if not backend.up:
            backend.up = True
            self._down -= 1
            log.warning("backend %s is back", backend.url)
            self._dispatch()

    async def _watch(self) -> None:
        """The one monitor task: checks each backend when it is due, sleeps until the next."""
        assert self._wake is not None
        await asyncio.gather(*(b.ready() for b in self.backends), return_exceptions=True)
        for backend in self.backends:
            self._first_state(backend)
        while True:
            due = [b for b in self.backends if b.next_check <= self.clock()]
            await asyncio.gather(*(self.check(backend) for backend in due))
            delay = min(b.next_check for b in self.backends) - self.clock()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(delay, 0.05))

    def _first_state(self, backend: Backend) -> None:
        identity = backend.identity
        if identity is not None and not identity.reachable:
            self.mark_down(backend, "no answer to the start-up probe")
        elif backend.up:
            backend.next_check = self.clock() + UP_INTERVAL

    async def check(self, backend: Backend) -> None:
        """One active check: the kind's cheap path; a backend that comes back is probed again."""
        path, timeout = backend.profile.health_path, backend.settings.probe_timeout
        if not await probe.alive(backend.url, path, timeout):
            self.mark_down(backend, f"no answer to GET {path}")
            return
        identity = backend.identity
        if not backend.up or identity is None or identity.kind is None:
            await backend.identify()
        self.mark_up(backend)

    # ---- what the pool reports ------------------------------------------------------------------

    def state(self, *, private: bool = False) -> dict[str, Any]:
        """Plain data: overall status, the queue, and each backend's state."""
        up = sum(backend.up for backend in self.backends)
        status = "ok" if up == len(self.backends) else "degraded" if up else "down"
        return {
            "status": status,
            "queued": len(self._waiters),
            "queue_size": self.queue_size,
            "shed": self.shed,
            "backends": [backend.state(private=private) for backend in self.backends],
        }
