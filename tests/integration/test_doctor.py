"""`mlx-gateway doctor` against the scripted backend (healthy and broken) and the real
mlx_lm.server on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.support.llama_backend import LlamaBackend
from tests.support.mlx_backend import MlxBackend
from tests.support.scripted_backend import (
    Completion,
    HttpError,
    RecordedRequest,
    Reply,
    ScriptedBackend,
    text_stream,
)

CACHED = {
    "prompt_tokens": 400,
    "completion_tokens": 1,
    "prompt_tokens_details": {"cached_tokens": 399},
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def doctor(url: str, *flags: str) -> tuple[int, dict[str, Any]]:
    command = [sys.executable, "-m", "mlx_gateway", "doctor", "--mlx-url", url, "--json", *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    return done.returncode, json.loads(done.stdout)


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {check["name"]: check["status"] for check in report["checks"]}


def healthy(request: RecordedRequest) -> Reply:
    """A server with everything: tool calls, reasoning, usage in streams, a prompt cache."""
    body = request.json()
    if body.get("stream"):
        return text_stream(["42"], reasoning_pieces=["17 + 25"])
    if body.get("tools"):
        return Completion(text=None, tool_calls=[CALL], finish_reason="tool_calls")
    return Completion(text="hello", usage=CACHED)


def test_a_healthy_server_passes_with_the_checks_named(scripted_backend: ScriptedBackend) -> None:
    scripted_backend.set_responder(healthy)

    code, report = doctor(
        scripted_backend.url, "--mlx-model", "scripted-model", "--context-window", "32768"
    )

    assert code == 0, report
    assert report["ok"] is True
    assert statuses(report) == {
        "reachable": "ok",
        "kind": "ok",
        "models": "ok",
        "context window": "ok",
        "chat": "ok",
        "tool calling": "ok",
        "reasoning": "ok",
        "stream usage": "ok",
        "token counting": "warn",  # a scripted model has no files to count with
        "prompt cache": "ok",
        "images": "ok",
    }
    details = {check["name"]: check["detail"] for check in report["checks"]}
    assert details["tool calling"].startswith("structured")
    assert "reasoning_content" in details["reasoning"]
    tool_request = next(r.json() for r in scripted_backend.chat_requests if r.json().get("tools"))
    assert tool_request["tool_choice"] == "required"


def weak(request: RecordedRequest) -> Reply:
    """Answers, but: tool calls only as text, no usage in streams, no cache, no images."""
    body = request.json()
    if body.get("stream"):
        return text_stream(["<think>hm</think>42"], usage=None)
    if body.get("tools"):
        if "tool_choice" in body:
            return HttpError(400, {"error": {"message": "tool_choice required not supported"}})
        return Completion(text='<tool_call>{"name": "get_weather"}</tool_call>')
    if isinstance(body["messages"][0]["content"], list):
        return HttpError(400, {"error": {"message": "image input is not supported"}})
    return Completion(text="hello")


def test_a_weak_server_warns_with_fixes_but_passes(scripted_backend: ScriptedBackend) -> None:
    scripted_backend.set_responder(weak)

    code, report = doctor(scripted_backend.url, "--mlx-model", "another-model")

    assert code == 0, report
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["models"]["status"] == "warn"
    assert "scripted-model" in checks["models"]["detail"]
    assert checks["context window"]["status"] == "warn"
    assert "--context-window" in checks["context window"]["fix"]
    assert (checks["tool calling"]["status"], "as text" in checks["tool calling"]["detail"]) == (
        "ok",
        True,
    )
    assert "<think>" in checks["reasoning"]["detail"]
    assert checks["stream usage"]["status"] == "warn"
    assert checks["prompt cache"]["status"] == "warn"
    assert checks["images"]["status"] == "warn"
    assert all(check["fix"] for check in report["checks"] if check["status"] == "warn")


def test_a_server_failing_chat_fails_with_the_reason(scripted_backend: ScriptedBackend) -> None:
    scripted_backend.set_responder(lambda request: HttpError(500, "model crashed"))

    code, report = doctor(scripted_backend.url, "--mlx-model", "scripted-model")

    assert code == 1
    assert statuses(report)["chat"] == "fail"
    assert report["verdict"].startswith("Claude Code and Codex would not work: chat:")
    assert "model crashed" in report["verdict"]


def test_nothing_listening_fails_with_the_command_to_start_it() -> None:
    backend = ScriptedBackend()  # a free port, never started
    command = [sys.executable, "-m", "mlx_gateway", "doctor", "--mlx-url", backend.url]

    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 1
    [title, reachable, verdict] = done.stdout.splitlines()
    assert title.startswith(f"mlx-gateway doctor: {backend.url}")
    assert reachable.startswith("fail  reachable")
    assert f"mlx_lm.server --model mlx-community/Qwen3-8B-4bit --port {backend.port}" in reachable
    assert verdict.startswith("Claude Code and Codex would not work")


def test_the_real_mlx_server_on_the_tiny_model(mlx_backend: MlxBackend) -> None:
    code, report = doctor(mlx_backend.url, "--mlx-model", mlx_backend.model)

    assert code == 0, report
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["kind"]["detail"].startswith("mlx_lm (asked the server")
    assert checks["context window"]["status"] == "warn"  # the tiny model's 4096
    assert checks["context window"]["detail"].startswith("4096 tokens")
    assert checks["chat"]["status"] == "ok"
    # What the tiny model reliably does (see test_mlx_rig.py): calls get_weather, reasons
    # as `reasoning` when asked, reports usage and cached tokens, refuses images.
    assert checks["tool calling"]["status"] in ("ok", "warn")
    assert checks["reasoning"]["detail"].startswith("as `reasoning`")
    assert checks["stream usage"]["status"] == "ok"
    assert checks["token counting"]["detail"] == "exact (the model's files)"
    assert checks["prompt cache"]["status"] == "ok"
    assert checks["images"]["status"] == "warn"


def test_the_real_llama_server_on_a_random_port_is_known_by_asking(
    llama_backend: LlamaBackend,
) -> None:
    code, report = doctor(llama_backend.url, "--mlx-model", llama_backend.model)

    checks = {check["name"]: check for check in report["checks"]}
    assert checks["kind"]["detail"].startswith("llama_cpp (asked the server"), report
    assert checks["context window"]["detail"].startswith("4096 tokens"), report
    assert checks["token counting"]["status"] == "ok", report
    assert "server's tokenizer" in checks["token counting"]["detail"], report
    assert code in (0, 1), report
