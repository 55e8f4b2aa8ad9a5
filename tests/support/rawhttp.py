"""Raw HTTP/1.1 on a socket, for what the SDKs cannot send (bad framing, slow or abandoned
requests), and the gateway process's memory and descriptors read from /proc."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

ANTHROPIC_SHAPE = {"type", "error"}


@dataclass
class RawAnswer:
    status: int
    head: bytes
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.encode():
                return value.strip().decode()
        return None


def request_bytes(
    path: str,
    body: bytes,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    length: int | None = None,
) -> bytes:
    """A whole request; `length` overrides the Content-Length it declares."""
    fields = {
        "Host": "127.0.0.1",
        "Content-Type": "application/json",
        "Content-Length": str(len(body) if length is None else length),
        "Connection": "close",
        **(headers or {}),
    }
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items() if value)
    return f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode() + body


def read_answer(sock: socket.socket) -> RawAnswer:
    """Reads until the server closes (requests here say `Connection: close`)."""
    received = b""
    while True:
        data = sock.recv(65536)
        if not data:
            break
        received += data
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return RawAnswer(status, head, body)


def exchange(port: int, data: bytes, *, half_close: bool = False, timeout: float = 10) -> RawAnswer:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_answer(sock)


def _unchunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def is_error_shape(answer: RawAnswer, anthropic: bool) -> bool:
    """The body is the error shape of the caller's protocol."""
    try:
        body = answer.json()
    except ValueError:
        return False
    if anthropic:
        error = body.get("error") if isinstance(body, dict) else None
        return (
            body.get("type") == "error"
            and isinstance(error, dict)
            and {
                "type",
                "message",
            }
            <= set(error)
        )
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)


def rss_kib(pid: int) -> int:
    return _status(pid, "VmRSS")


def peak_rss_kib(pid: int) -> int:
    return _status(pid, "VmHWM")


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def reset_peak_rss(pid: int) -> None:
    """VmHWM back to the current RSS (Linux >= 4.0), so a peak belongs to one request."""
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")
