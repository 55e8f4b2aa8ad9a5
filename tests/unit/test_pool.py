"""The backend pool without a network: admission, the queue, cancellation while queued,
failover before the first byte, health marks and affinity. Attempts are plain coroutines that
stand in for the routes' work on a backend."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from mlx_gateway.backends.backend import Backend, BackendSpec, Settings
from mlx_gateway.backends.pool import ORDERS_KEPT, SHED_RETRY_AFTER, BackendPool
from mlx_gateway.backends.probe import Identity
from mlx_gateway.errors import (
    BackendFailed,
    BackendRefused,
    BackendUnavailable,
    GatewayError,
    NotFound,
    Overloaded,
    RateLimited,
)

T = TypeVar("T")
SETTINGS = Settings(default_model="m", timeout=5, total_timeout=10)


def make_pool(*specs: BackendSpec, queue_size: int = 4, queue_timeout: float = 5.0) -> BackendPool:
    backends = []
    for spec in specs:
        backend = Backend(spec, SETTINGS)
        backend.apply(Identity("vllm"))
        backends.append(backend)
    return BackendPool(backends, queue_size=queue_size, queue_timeout=queue_timeout)


def spec(name: str, limit: int | None = 1, **fields: object) -> BackendSpec:
    return BackendSpec(f"http://{name}:8000", max_concurrency=limit, **fields)  # type: ignore[arg-type]


def run(coroutine: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coroutine())  # type: ignore[arg-type]


def key(value: str) -> Callable[[], str]:
    return lambda: value


async def answer_with_url(backend: Backend) -> str:
    return backend.url


def never() -> bool:
    return False


def test_a_full_backend_makes_the_next_request_wait_for_its_place() -> None:
    pool = make_pool(spec("a"))
    order: list[str] = []
    release = asyncio.Event

    async def scenario() -> None:
        gate = release()

        async def first(backend: Backend) -> None:
            order.append("first in")
            await gate.wait()
            order.append("first out")

        async def second(backend: Backend) -> None:
            order.append("second in")

        one = asyncio.ensure_future(pool.run("m", key("x"), first, never))
        await asyncio.sleep(0)
        two = asyncio.ensure_future(pool.run("m", key("y"), second, never))
        await asyncio.sleep(0.01)
        assert pool.state()["queued"] == 1
        gate.set()
        await asyncio.gather(one, two)

    run(scenario)
    assert order == ["first in", "first out", "second in"]
    assert pool.backends[0].in_flight == 0


def test_a_full_queue_sheds_with_overloaded_and_retry_after() -> None:
    pool = make_pool(spec("a"), queue_size=1)

    async def scenario() -> GatewayError:
        gate = asyncio.Event()

        async def hold(backend: Backend) -> None:
            await gate.wait()

        held = [asyncio.ensure_future(pool.run("m", key(str(n)), hold, never)) for n in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as shed:
            await pool.run("m", key("3"), hold, never)
        gate.set()
        await asyncio.gather(*held)
        return shed.value

    error = run(scenario)
    assert (error.status, error.status_for(anthropic=False)) == (529, 429)
    assert error.retry_after == SHED_RETRY_AFTER
    assert pool.state()["shed"] == 1


def test_a_wait_past_the_queue_timeout_is_overloaded() -> None:
    pool = make_pool(spec("a"), queue_timeout=0.05)

    async def scenario() -> None:
        gate = asyncio.Event()

        async def hold(backend: Backend) -> None:
            await gate.wait()

        held = asyncio.ensure_future(pool.run("m", key("1"), hold, never))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="no place within"):
            await pool.run("m", key("2"), hold, never)
        gate.set()
        await held

    run(scenario)
    assert pool.state()["queued"] == 0


def test_a_request_cancelled_while_queued_leaves_the_queue_at_once() -> None:
    pool = make_pool(spec("a"), queue_size=1)
    ran: list[str] = []

    async def scenario() -> None:
        gate = asyncio.Event()

        async def hold(backend: Backend) -> None:
            await gate.wait()

        async def note(backend: Backend) -> None:
            ran.append("third")

        held = asyncio.ensure_future(pool.run("m", key("1"), hold, never))
        await asyncio.sleep(0)
        queued = asyncio.ensure_future(pool.run("m", key("2"), note, never))
        await asyncio.sleep(0.01)
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        assert pool.state()["queued"] == 0
        third = asyncio.ensure_future(pool.run("m", key("3"), note, never))  # queue has room
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(held, third)

    run(scenario)
    assert ran == ["third"]
    assert pool.backends[0].in_flight == 0


def test_a_place_handed_over_as_the_waiter_leaves_goes_to_the_next() -> None:
    pool = make_pool(spec("a"))
    ran: list[str] = []

    async def scenario() -> None:
        gate = asyncio.Event()

        async def hold(backend: Backend) -> None:
            await gate.wait()

        async def note(backend: Backend) -> None:
            ran.append("third")

        held = asyncio.ensure_future(pool.run("m", key("1"), hold, never))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(pool.run("m", key("2"), hold, never))
        third = asyncio.ensure_future(pool.run("m", key("3"), note, never))
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.sleep(0)  # `held` ends and hands its place to `second`...
        second.cancel()  # ...which leaves before it ever runs
        await asyncio.gather(held, second, third, return_exceptions=True)

    run(scenario)
    assert ran == ["third"]
    assert pool.backends[0].in_flight == 0


@pytest.mark.parametrize(
    "failure",
    [
        BackendUnavailable("cannot connect", unreachable=True),
        BackendFailed(503, "loading"),
        RateLimited("slow down", 2.0),
    ],
    ids=["unreachable", "503", "429"],
)
def test_failover_before_the_first_byte(failure: GatewayError) -> None:
    pool = make_pool(spec("a", None), spec("b", None))
    first = pool.candidates("m", key("conversation"))[0]

    async def attempt(backend: Backend) -> str:
        if backend is first:
            raise failure
        return backend.url

    served = run(lambda: pool.run("m", key("conversation"), attempt, never))
    assert served != first.url
    assert first.failovers == 1
    assert first.up is not getattr(failure, "unreachable", False)


@pytest.mark.parametrize(
    ("failure", "committed"),
    [
        (BackendUnavailable("the stream broke", unreachable=True), True),
        (BackendRefused("the model does not accept images"), False),
        (BackendFailed(500, "boom"), False),
    ],
    ids=["after the first byte", "a refusal of this request", "a plain 5xx"],
)
def test_no_failover_when_another_backend_cannot_help(
    failure: GatewayError, committed: bool
) -> None:
    pool = make_pool(spec("a", None), spec("b", None))
    tried: list[str] = []

    async def attempt(backend: Backend) -> str:
        tried.append(backend.url)
        raise failure

    with pytest.raises(type(failure)):
        run(lambda: pool.run("m", key("k"), attempt, lambda: committed))
    assert len(tried) == 1


def test_down_backends_are_skipped_and_when_all_are_down_the_best_is_tried() -> None:
    pool = make_pool(spec("a", None), spec("b", None))
    best, other = pool.candidates("m", key("k"))
    pool.mark_down(best, "refused")
    assert run(lambda: pool.run("m", key("k"), answer_with_url, never)) == other.url
    pool.mark_down(other, "refused")
    assert pool.state()["status"] == "down"
    assert run(lambda: pool.run("m", key("k"), answer_with_url, never)) == best.url
    pool.mark_up(best)
    assert pool.state()["status"] == "degraded"


def test_the_same_conversation_goes_to_the_same_backend_and_others_spread() -> None:
    pool = make_pool(spec("a", None), spec("b", None), spec("c", None))
    same = {run(lambda: pool.run("m", key("session-1"), answer_with_url, never)) for _ in range(5)}
    assert len(same) == 1
    spread = {
        run(lambda n=n: pool.run("m", key(f"session-{n}"), answer_with_url, never))  # type: ignore[misc]
        for n in range(30)
    }
    assert len(spread) == 3


def test_a_full_affinity_backend_sends_the_request_to_the_next_choice() -> None:
    pool = make_pool(spec("a"), spec("b"))
    _best, other = pool.candidates("m", key("k"))

    async def scenario() -> str:
        gate = asyncio.Event()

        async def hold(backend: Backend) -> None:
            await gate.wait()

        held = asyncio.ensure_future(pool.run("m", key("k"), hold, never))
        await asyncio.sleep(0)
        served = await pool.run("m", key("k"), answer_with_url, never)
        gate.set()
        await held
        return served

    assert run(scenario) == other.url


def test_backends_serve_only_their_models() -> None:
    pool = make_pool(spec("a", None, models=("big",)), spec("b", None))
    assert [b.url for b in pool.candidates("big", key("k"))] in (
        ["http://a:8000", "http://b:8000"],
        ["http://b:8000", "http://a:8000"],
    )
    assert [b.url for b in pool.candidates("small", key("k"))] == ["http://b:8000"]
    only_big = make_pool(spec("a", None, models=("big",)))
    with pytest.raises(NotFound):
        only_big.candidates("small", key("k"))


def test_the_key_is_computed_only_when_there_is_a_choice() -> None:
    pool = make_pool(spec("a"))

    def no_key() -> str:
        raise AssertionError("computed for one backend")

    assert run(lambda: pool.run("m", no_key, answer_with_url, never)) == "http://a:8000"


@pytest.mark.parametrize(
    ("kind", "slots", "configured", "limit"),
    [
        ("mlx_lm", None, None, 1),
        ("vllm", None, None, 0),
        ("ollama", None, None, 0),
        ("llama_cpp", 4, None, 4),
        ("llama_cpp", None, None, 0),
        ("mlx_lm", None, 3, 3),
        ("mlx_lm", None, 0, 0),
    ],
)
def test_concurrency_defaults_from_the_kind(
    kind: str, slots: int | None, configured: int | None, limit: int
) -> None:
    backend = Backend(BackendSpec("http://a:1", max_concurrency=configured), SETTINGS)
    backend.apply(Identity(kind, slots=slots))
    assert (backend.profile.name, backend.limit) == (kind, limit)


def test_a_forced_kind_stays_and_an_unknown_one_keeps_the_port_guess() -> None:
    forced = Backend(BackendSpec("http://a:1", kind="llama_cpp"), SETTINGS)
    forced.apply(Identity("vllm"))
    assert forced.profile.name == "llama_cpp"
    guessed = Backend(BackendSpec("http://a:11434"), SETTINGS)
    guessed.apply(Identity(None, reachable=False))
    assert guessed.profile.name == "ollama"


def test_state_shows_urls_and_models_only_when_private() -> None:
    pool = make_pool(spec("a", None, models=("big",)))
    public = pool.state()["backends"][0]
    assert "url" not in public
    assert "models" not in public
    private = pool.state(private=True)["backends"][0]
    assert (private["url"], private["models"], private["up"]) == ("http://a:8000", ["big"], True)


def test_the_memo_of_orders_stays_bounded_and_agrees_with_the_hash() -> None:
    pool = make_pool(spec("a", None), spec("b", None), spec("c", None))
    first = [b.url for b in pool.candidates("m", key("conversation"))]
    for n in range(ORDERS_KEPT + 10):
        pool.candidates("m", key(f"k{n}"))
    assert len(pool._orders) <= ORDERS_KEPT
    assert [b.url for b in pool.candidates("m", key("conversation"))] == first
