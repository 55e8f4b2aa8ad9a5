"""Several backends behind one gateway process: affinity, failover before the first byte, a
backend killed under load, slow and full backends, the queue (shedding with retry-after, a
client that leaves while queued), the error table of a backend's answers, identity by probing,
and the real mlx_lm.server beside a scripted one."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess
from tests.support.mlx_backend import MlxBackend
from tests.support.ports import free_port
from tests.support.scripted_backend import (
    Completion,
    Delay,
    Drop,
    HttpError,
    RecordedRequest,
    Reply,
    ScriptedBackend,
    Stream,
    chunk,
    text_stream,
)


def hello(session: str, *, stream: bool = False) -> dict[str, Any]:
    user_id = f"user_abc_account__session_{session}"
    return {
        "model": "m",
        "max_tokens": 16,
        "stream": stream,
        "metadata": {"user_id": user_id},
        "messages": [{"role": "user", "content": "hi"}],
    }


def answering(name: str, delay: float = 0.0) -> Callable[[RecordedRequest], Reply]:
    """Each answer names the backend that gave it."""

    def respond(request: RecordedRequest) -> Reply:
        reply: Reply = text_stream([name]) if request.json().get("stream") else Completion(name)
        return Delay(delay, reply) if delay else reply

    return respond


@pytest.fixture
def backends() -> Iterator[list[ScriptedBackend]]:
    """Three started scripted backends, named a, b and c in their answers."""
    with ExitStack() as stack:
        started = [stack.enter_context(ScriptedBackend()) for _ in range(3)]
        for name, backend in zip("abc", started, strict=True):
            backend.set_responder(answering(name))
        yield started


def gateway_over(
    start_gateway: StartGateway, backends: list[ScriptedBackend], *flags: str
) -> GatewayProcess:
    urls = [arg for backend in backends[1:] for arg in ("--mlx-url", backend.url)]
    return start_gateway(backends[0].url, *urls, *flags)


def served_by(gateway: GatewayProcess, body: dict[str, Any], timeout: float = 10) -> str:
    response = httpx.post(f"{gateway.url}/v1/messages", json=body, timeout=timeout)
    assert response.status_code == 200, response.text
    return str(response.json()["content"][0]["text"])


def health(gateway: GatewayProcess) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{gateway.url}/health", timeout=5).json()
    return answer


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


# ---- affinity -------------------------------------------------------------------------------


def test_one_session_stays_on_one_backend_and_sessions_spread(
    backends: list[ScriptedBackend], start_gateway: StartGateway
) -> None:
    gateway = gateway_over(start_gateway, backends[:2])
    assert {served_by(gateway, hello("one")) for _ in range(6)} in ({"a"}, {"b"})
    spread = {served_by(gateway, hello(f"session-{n}")) for n in range(24)}
    assert spread == {"a", "b"}


def test_openai_requests_follow_prompt_cache_key(
    backends: list[ScriptedBackend], start_gateway: StartGateway
) -> None:
    gateway = gateway_over(start_gateway, backends)

    def chat(key: str) -> str:
        body = {
            "model": "m",
            "prompt_cache_key": key,
            "messages": [{"role": "user", "content": "x"}],
        }
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=10)
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["message"]["content"])

    assert len({chat("conversation-7") for _ in range(5)}) == 1
    assert {chat(f"k{n}") for n in range(30)} == {"a", "b", "c"}


# ---- failover and health --------------------------------------------------------------------


def test_a_killed_backend_is_failed_over_and_taken_back(
    backends: list[ScriptedBackend], start_gateway: StartGateway
) -> None:
    gateway = gateway_over(start_gateway, backends[:2])
    sessions = [f"s{n}" for n in range(12)]
    homes = {session: served_by(gateway, hello(session)) for session in sessions}
    backends[0].stop()  # "a" dies: its sessions fail over before any byte reached the client
    for session in sessions:
        assert served_by(gateway, hello(session)) == "b"
    state = health(gateway)
    assert state["status"] == "degraded"
    assert [b["up"] for b in state["backends"]] == [False, True]
    assert "cannot connect" in state["backends"][0]["last_error"]
    backends[0].start()  # back on the same port: the monitor finds it within seconds
    wait_for(lambda: health(gateway)["status"] == "ok", "the backend is back up")
    assert {session: served_by(gateway, hello(session)) for session in sessions} == homes


def test_no_request_fails_while_a_backend_is_killed_under_load(
    backends: list[ScriptedBackend], start_gateway: StartGateway
) -> None:
    for name, backend in zip("abc", backends, strict=True):
        backend.set_responder(answering(name, delay=0.02))
    gateway = gateway_over(start_gateway, backends)
    statuses: list[int] = []
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(timeout=15) as http:
            for round_ in range(400):
                if stop.is_set() and round_ > 5:
                    return
                body = hello(f"load-{n}-{round_ % 7}")
                statuses.append(http.post(f"{gateway.url}/v1/messages", json=body).status_code)

    with ThreadPoolExecutor(max_workers=6) as pool:
        running = [pool.submit(client, n) for n in range(6)]
        wait_for(lambda: len(statuses) > 30, "load is running")
        backends[1].stop()  # killed mid-run, with requests in flight on it
        wait_for(lambda: len(statuses) > 120, "load goes on")
        stop.set()
        for future in running:
            future.result()
    assert set(statuses) == {200}, statuses.count(200)
    assert health(gateway)["status"] == "degraded"


def test_a_503_before_the_answer_fails_over(
    backends: list[ScriptedBackend], start_gateway: StartGateway
) -> None:
    backends[0].set_responder(lambda _: HttpError(503, {"error": "loading model"}))
    gateway = gateway_over(start_gateway, backends[:2])
    for n in range(8):
        assert served_by(gateway, hello(f"x{n}")) == "b"
        streamed = httpx.post(f"{gateway.url}/v1/messages", json=hello(f"x{n}", stream=True))
        assert streamed.status_code == 200
        assert '"text":"b"' in streamed.text.replace(" ", "")


def test_a_stream_that_breaks_after_it_began_is_an_error_event_not_a_failover(
    backends: list[ScriptedBackend], start_gateway: StartGateway
) -> None:
    for backend in backends[:2]:
        backend.set_responder(lambda _: Stream([chunk({"content": "part"}), Drop()]))
    gateway = gateway_over(start_gateway, backends[:2])
    with httpx.stream(
        "POST", f"{gateway.url}/v1/messages", json=hello("s", stream=True), timeout=10
    ) as response:
        assert response.status_code == 200
        text = response.read().decode()
    assert "event: error" in text
    assert sum(len(b.chat_requests) for b in backends[:2]) == 1


def test_three_backends_one_killed_one_slow_one_full(
    backends: list[ScriptedBackend], start_gateway: StartGateway
) -> None:
    killed, slow, full = backends
    slow.set_responder(answering("b", delay=0.5))
    full.set_responder(lambda _: HttpError(429, {"error": {"message": "busy"}}, headers={}))
    gateway = gateway_over(start_gateway, backends, "--max-concurrency", "1")
    killed.stop()
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda n: served_by(gateway, hello(f"t{n}")), range(8)))
    assert set(answers) == {"b"}  # the only one that could serve did, one at a time


# ---- admission ------------------------------------------------------------------------------


def test_a_full_queue_sheds_with_529_or_429_and_retry_after(
    backends: list[ScriptedBackend], start_gateway: StartGateway
) -> None:
    backends[0].set_responder(answering("a", delay=1.5))
    gateway = gateway_over(
        start_gateway, backends[:1], "--max-concurrency", "1", "--queue-size", "1"
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        admitted = [pool.submit(served_by, gateway, hello(f"q{n}")) for n in range(2)]
        wait_for(lambda: health(gateway)["queued"] == 1, "one request queued")
        shed = httpx.post(f"{gateway.url}/v1/messages", json=hello("late"), timeout=5)
        chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        shed_openai = httpx.post(f"{gateway.url}/v1/chat/completions", json=chat, timeout=5)
        assert [future.result() for future in admitted] == ["a", "a"]
    assert shed.status_code == 529
    assert shed.json()["error"]["type"] == "overloaded_error"
    assert shed_openai.status_code == 429
    assert shed_openai.json()["error"]["code"] == "rate_limit_exceeded"
    for response in (shed, shed_openai):
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-should-retry"] == "true"
    assert health(gateway)["shed"] == 2


def test_a_client_that_leaves_while_queued_frees_its_place(
    backends: list[ScriptedBackend], start_gateway: StartGateway
) -> None:
    backends[0].set_responder(answering("a", delay=2.0))
    gateway = gateway_over(
        start_gateway, backends[:1], "--max-concurrency", "1", "--queue-size", "1"
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(served_by, gateway, hello("first"))
        wait_for(lambda: len(backends[0].chat_requests) == 1, "the first request is served")
        body = json.dumps(hello("leaver")).encode()
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw:
            raw.sendall(
                b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            wait_for(lambda: health(gateway)["queued"] == 1, "the raw client is queued")
        wait_for(lambda: health(gateway)["queued"] == 0, "its place is freed when it leaves")
        # The place is free for the next one (not shed), and the leaver never reached a backend.
        second = pool.submit(served_by, gateway, hello("second"))
        assert (first.result(), second.result()) == ("a", "a")
    assert len(backends[0].chat_requests) == 2


# ---- the error table, through the gateway -------------------------------------------------


def test_backend_errors_are_mapped_for_the_client(start_gateway: StartGateway) -> None:
    with LlamaLike() as llama:
        gateway = start_gateway(llama.url)
        llama.queue(
            HttpError(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "4"}),
            HttpError(500, {"error": {"code": 500, "message": "image input is not supported"}}),
            HttpError(
                500, {"error": {"code": 500, "message": "tools param requires --jinja flag"}}
            ),
            HttpError(500, {"error": {"code": 500, "message": "something broke"}}),
        )
        url = f"{gateway.url}/v1/messages"
        limited = httpx.post(url, json=hello("s"), timeout=5)
        assert (limited.status_code, limited.json()["error"]["type"]) == (429, "rate_limit_error")
        assert limited.headers["retry-after"] == "4"
        assert limited.headers["x-should-retry"] == "true"
        for expected in ("does not accept images", "cannot render tools"):
            refused = httpx.post(url, json=hello("s"), timeout=5)
            assert refused.status_code == 400, refused.text
            assert expected in refused.json()["error"]["message"]
            assert refused.headers["x-should-retry"] == "false"
        failed = httpx.post(url, json=hello("s"), timeout=5)
        assert failed.status_code == 502
        assert failed.headers["x-should-retry"] == "true"


def test_an_unreachable_backend_names_its_url_and_how_to_start_it(
    start_gateway: StartGateway,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    gateway = start_gateway(url, "--mlx-model", "mlx-community/Qwen3-8B-4bit")
    response = httpx.post(f"{gateway.url}/v1/messages", json=hello("s"), timeout=10)
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert message.startswith("MLX backend unavailable: cannot connect")
    port = url.rsplit(":", 1)[1]
    assert f"127.0.0.1:{port}" in message
    assert f"mlx_lm.server --model mlx-community/Qwen3-8B-4bit --port {port}" in message
    assert health(gateway)["status"] == "down"


# ---- identity by probing --------------------------------------------------------------------


class LlamaLike(ScriptedBackend):
    """A scripted backend that answers llama-server's /props and /v1/models shapes."""

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        props = {"default_generation_settings": {"n_ctx": 1024}, "total_slots": 2,
                 "build_info": "b6000-test"}  # fmt: skip
        models = {"object": "list", "data": [{"id": "m.gguf", "owned_by": "llamacpp"}]}
        answers = {"/props": props, "/v1/models": models}
        if request.method == "GET" and request.path in answers:
            self._record(request, b"")
            return web.json_response(answers[request.path])
        return await super()._dispatch(request)


def test_a_llama_server_on_a_random_port_is_recognised_without_backend(
    start_gateway: StartGateway,
) -> None:
    with LlamaLike() as llama:
        llama.set_responder(answering("llama"))
        gateway = start_gateway(llama.url)  # no --backend, a port no guess knows
        body = hello("s") | {"max_tokens": 100_000}
        assert served_by(gateway, body) == "llama"
        # The window came from /props: 100,000 was lowered to fit its 1,024 tokens.
        assert llama.last_json()["max_tokens"] < 1024
        backend = health(gateway)["backends"][0]
        assert (backend["kind"], backend["max_concurrency"]) == ("llama_cpp", 2)


def test_health_hides_urls_from_none_but_loopback_and_reports_each_backend(
    backends: list[ScriptedBackend], start_gateway: StartGateway
) -> None:
    gateway = gateway_over(start_gateway, backends[:2])
    state = health(gateway)
    assert state["status"] == "ok"
    assert [b["url"] for b in state["backends"]] == [backends[0].url, backends[1].url]
    assert {b["kind"] for b in state["backends"]} == {"mlx_lm"}
    assert all(b["max_concurrency"] == 1 for b in state["backends"])


# ---- the real mlx_lm.server beside a scripted one -------------------------------------------


def test_the_real_mlx_server_and_a_scripted_one_side_by_side(
    mlx_backend: MlxBackend, scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    scripted_backend.set_responder(answering("scripted"))
    gateway = start_gateway(
        mlx_backend.url, "--mlx-url", scripted_backend.url, "--mlx-model", mlx_backend.model
    )
    answers = [served_by(gateway, hello(f"side-{n}"), timeout=120) for n in range(12)]
    from_scripted = answers.count("scripted")
    assert 0 < from_scripted < len(answers)  # both served
    assert len(scripted_backend.chat_requests) == from_scripted
    kinds = [b["kind"] for b in health(gateway)["backends"]]
    assert kinds == ["mlx_lm", "mlx_lm"]
