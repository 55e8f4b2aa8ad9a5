"""Connection hygiene on raw sockets: slow or silent clients are timed out, abandoned uploads
are quiet, one address cannot hold every slot, and descriptors go back after a burst."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.conftest import StartGateway
from tests.support.rawhttp import exchange, open_descriptors, request_bytes
from tests.support.scripted_backend import Completion, Delay, Hang, ScriptedBackend

HELLO: dict[str, Any] = {
    "model": "m",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "hi"}],
}


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes the socket within `seconds` (bounded wait)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def test_slow_headers_and_idle_keep_alive_are_closed(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url, "--header-timeout", "1")
    slow = socket.create_connection(("127.0.0.1", gateway.port))
    slow.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
    idle = socket.create_connection(("127.0.0.1", gateway.port))
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    with slow, idle:
        assert closed_within(slow, 5)
        assert closed_within(idle, 5)
    assert httpx.get(f"{gateway.url}/health").status_code == 200


def test_an_abandoned_upload_is_one_quiet_line(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url, "--log-level", "debug")
    body = json.dumps(HELLO).encode()
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", gateway.port))
        sock.sendall(request_bytes("/v1/messages", body[:20], length=len(body)))
        sock.close()  # gone mid-upload
    assert httpx.get(f"{gateway.url}/health").status_code == 200
    time.sleep(0.3)
    log = gateway.log()
    assert " ERROR " not in log
    assert "Traceback" not in log
    assert "-> 500" not in log


def test_a_client_leaving_mid_stream_is_quiet(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url)
    scripted_backend.queue(Hang())
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(request_bytes("/v1/messages", json.dumps({**HELLO, "stream": True}).encode()))
    scripted_backend.wait_for_requests(1)
    sock.close()
    scripted_backend.wait_for_disconnect(timeout=5)
    log = gateway.log()
    assert " ERROR " not in log
    assert "went away" not in log  # logged at debug only


def test_one_client_address_cannot_hold_every_slot(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url, "--max-client-requests", "2")
    scripted_backend.set_responder(lambda _: Delay(1.0, Completion()))
    body = json.dumps(HELLO).encode()
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda _: exchange(gateway.port, request_bytes("/v1/messages", body)), range(4)
            )
        )
    statuses = sorted(answer.status for answer in answers)
    assert statuses.count(200) >= 2
    assert 429 in statuses
    refused = next(answer for answer in answers if answer.status == 429)
    assert refused.json()["error"]["type"] == "rate_limit_error"


def test_descriptors_return_to_baseline_after_a_burst(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    """Backend connections are closed on a timer and client connections by the keep-alive
    limit, so the process's open files come back without any further request."""
    gateway = start_gateway(
        scripted_backend.url,
        "--backend-idle-timeout",
        "1",
        "--header-timeout",
        "1",
        "--max-concurrency",
        "0",  # every request of the burst at the backend at once, each on its own connection
    )
    scripted_backend.set_responder(lambda _: Delay(0.2, Completion()))
    pid = gateway.process.pid
    baseline = open_descriptors(pid)
    clients = [httpx.Client(base_url=gateway.url, timeout=10) for _ in range(40)]
    with ThreadPoolExecutor(40) as pool:
        list(pool.map(lambda client: client.post("/v1/messages", json=HELLO), clients))
    during = open_descriptors(pid)
    deadline = time.monotonic() + 10
    after = during
    while time.monotonic() < deadline and after > baseline + 2:
        time.sleep(0.2)
        after = open_descriptors(pid)
    for client in clients:
        client.close()
    print(f"open descriptors: before {baseline}, after the burst {during}, settled {after}")
    assert during >= baseline + 40  # the burst held a backend and a client socket each
    assert after <= baseline + 2
