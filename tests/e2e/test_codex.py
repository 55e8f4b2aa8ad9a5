"""The real Codex CLI doing work through the gateway's `/v1/responses`, with the scripted chat
backend playing the model: Codex speaks the Responses API to the gateway, the gateway speaks
chat completions to the backend. Each scenario runs `codex exec` once in a fresh workdir and
HOME and checks what Codex did (the answer it printed, the files its shell and `apply_patch`
wrote), what the backend received, and how Codex treats a retry, a broken stream and the
token limit."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlx_gateway.responses.models import BASE_INSTRUCTIONS
from tests.conftest import StartGateway
from tests.support.codex import PROVIDER_ID, CodexResult, ensure_codex, run_codex
from tests.support.scripted_backend import (
    Drop,
    HttpError,
    ScriptedBackend,
    Stream,
    chunk,
    text_stream,
)

pytestmark = pytest.mark.timeout(240)

RUN_TIMEOUT = 120.0
MODEL = "test-org/Coder-Model-4bit"


@pytest.fixture(scope="module")
def codex() -> Path:
    """Installs the pinned Codex if needed; fails loudly when it cannot."""
    return ensure_codex()


@dataclass
class Session:
    """Codex wired to the gateway, which is wired to the scripted backend."""

    backend: ScriptedBackend
    gateway_url: str
    workdir: Path
    home: Path

    def run(self, prompt: str, *replies: Any, **options: Any) -> CodexResult:
        """Codex runs once; the backend answers its requests with `replies`, in order.
        `options` go to run_codex (config overrides, keys left out)."""
        self.backend.queue(*replies)
        result = run_codex(
            self.gateway_url, prompt, self.workdir, home=self.home, timeout=RUN_TIMEOUT,
            **options,
        )  # fmt: skip
        print(f"\ncodex ran {result.duration:.2f}s, {len(self.chats)} backend request(s)")
        return result

    @property
    def chats(self) -> list[dict[str, Any]]:
        return [request.json() for request in self.backend.chat_requests]


@pytest.fixture
def session(
    codex: Path,
    scripted_backend: ScriptedBackend,
    start_gateway: StartGateway,
    tmp_path_factory: pytest.TempPathFactory,
) -> Session:
    gateway = start_gateway(scripted_backend.url, "--mlx-model", MODEL)
    workdir, home = tmp_path_factory.mktemp("workdir"), tmp_path_factory.mktemp("home")
    return Session(scripted_backend, gateway.url, workdir, home)


def calls(*calls: tuple[str, str, dict[str, Any]]) -> Stream:
    """One answer making these calls (id, name, arguments), as a server with a tool parser
    streams them."""
    deltas = [
        {"index": index, "id": call_id, "type": "function",
         "function": {"name": name, "arguments": json.dumps(arguments)}}
        for index, (call_id, name, arguments) in enumerate(calls)
    ]  # fmt: skip
    return text_stream([], "tool_calls", tool_call_deltas=deltas)


def tool_messages(chat: dict[str, Any]) -> dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in chat["messages"] if m["role"] == "tool"}


def test_a_plain_answer(session: Session) -> None:
    result = session.run("Say hello.", text_stream(["Hello from ", "a local model."]))

    assert result.ok, result.describe()
    assert result.final_message == "Hello from a local model."
    (chat,) = session.chats
    assert chat["model"] == MODEL
    assert chat["stream"] is True
    assert chat["messages"][0]["role"] == "system"
    assert [m["role"] for m in chat["messages"]].count("system") == 1
    names = [tool["function"]["name"] for tool in chat["tools"]]
    assert "exec_command" in names
    assert "apply_patch" in names


def test_a_shell_command_loop_writes_a_file(session: Session) -> None:
    nonce = secrets.token_hex(6)
    command = f"echo {nonce} > made.txt"
    result = session.run(
        "Write the nonce to made.txt.",
        calls(("call_1", "exec_command", {"cmd": command})),
        text_stream(["Wrote it."]),
    )

    assert result.ok, result.describe()
    assert result.final_message == "Wrote it."
    assert (session.workdir / "made.txt").read_text() == f"{nonce}\n"
    (execution,) = result.items("command_execution")
    assert execution["exit_code"] == 0
    first, second = session.chats
    assert "Process exited with code 0" in tool_messages(second)["call_1"]
    assert second["messages"][: len(first["messages"])] == first["messages"]


def test_apply_patch_creates_and_edits_a_file(session: Session) -> None:
    create = "*** Begin Patch\n*** Add File: greet.py\n+def greet():\n+    return 'hi'\n"
    create += "*** End Patch\n"
    edit = "*** Begin Patch\n*** Update File: greet.py\n@@\n def greet():\n-    return 'hi'\n"
    edit += "+    return 'héllo ✓'\n*** End Patch\n"
    result = session.run(
        "Create greet.py, then change its greeting.",
        calls(("call_a", "apply_patch", {"input": create})),
        calls(("call_b", "apply_patch", {"input": edit})),
        text_stream(["Done."]),
    )

    assert result.ok, result.describe()
    assert result.final_message == "Done."
    assert (session.workdir / "greet.py").read_text() == "def greet():\n    return 'héllo ✓'\n"
    assert len(result.items("file_change")) == 2
    last = session.chats[-1]
    assert "Success." in tool_messages(last)["call_b"]
    sent_back = [m for m in last["messages"] if m.get("tool_calls")]
    patch = json.loads(sent_back[0]["tool_calls"][0]["function"]["arguments"])
    assert patch == {"input": create}
    patch_tool = next(t for t in last["tools"] if t["function"]["name"] == "apply_patch")
    assert patch_tool["function"]["parameters"]["required"] == ["input"]
    assert "*** Begin Patch" in patch_tool["function"]["description"]


def test_parallel_calls_are_one_turn(session: Session) -> None:
    result = session.run(
        "Make a.txt and b.txt.",
        calls(
            ("call_a", "exec_command", {"cmd": "echo a > a.txt"}),
            ("call_b", "exec_command", {"cmd": "echo b > b.txt"}),
        ),
        text_stream(["Both made."]),
    )

    assert result.ok, result.describe()
    assert (session.workdir / "a.txt").read_text() == "a\n"
    assert (session.workdir / "b.txt").read_text() == "b\n"
    roles = [m["role"] for m in session.chats[-1]["messages"]]
    assert roles[-3:] == ["assistant", "tool", "tool"]
    turn = session.chats[-1]["messages"][-3]
    assert [call["id"] for call in turn["tool_calls"]] == ["call_a", "call_b"]


def test_reasoning_never_leaks_into_the_answer(session: Session) -> None:
    reply = text_stream(
        ["<think>inline secret plan</think>", "The answer is 4."],
        reasoning_pieces=["field secret ", "plan"],
        reasoning_field="reasoning",
    )
    result = session.run("What is 2 + 2?", reply)

    assert result.ok, result.describe()
    assert result.final_message == "The answer is 4."
    texts = [item.get("text", "") for item in result.items("agent_message")]
    assert not any("secret" in text for text in texts)


def test_a_backend_500_is_retried(session: Session) -> None:
    result = session.run(
        "Answer.", HttpError(500, {"error": "out of memory"}), text_stream(["Answered."])
    )

    assert result.ok, result.describe()
    assert result.final_message == "Answered."
    first, second = session.chats
    assert first["messages"] == second["messages"]


def test_a_stream_that_dies_is_retried(session: Session) -> None:
    dying = Stream([chunk({"content": "Half an ans"}), Drop()], usage=None, done=False)
    result = session.run("Answer.", dying, text_stream(["A whole answer."]))

    assert result.ok, result.describe()
    assert result.final_message == "A whole answer."
    assert len(session.chats) == 2


def test_the_token_limit_ends_the_turn(session: Session) -> None:
    result = session.run("Write a lot.", text_stream(["This answer was cut"], "length"))

    assert result.returncode == 1, result.describe()
    assert result.final_message == "This answer was cut"
    failed = [e for e in result.events if e.get("type") == "turn.failed"]
    reason = "Incomplete response returned, reason: max_output_tokens"
    assert failed[0]["error"]["message"] == reason
    assert len(session.chats) == 1


def test_an_error_frame_in_the_backends_stream_is_retried(session: Session) -> None:
    frame = {"error": {"code": 500, "message": "llama_decode failed", "type": "server_error"}}
    failing = Stream([chunk({"content": "Half"}), frame], usage=None, done=False)
    result = session.run("Answer.", failing, text_stream(["A whole answer."]))

    assert result.ok, result.describe()
    assert result.final_message == "A whole answer."
    assert len(session.chats) == 2


def test_the_model_list_gives_codex_apply_patch_without_a_catalog(session: Session) -> None:
    """With command auth Codex asks the server for its models (`GET /v1/models`) instead of
    falling back to metadata that offers no apply_patch; the gateway's catalog entry for the
    model Codex is told to use (the served one) makes apply_patch a freeform tool and gives
    the base instructions."""
    provider = f"model_providers.{PROVIDER_ID}"
    auth = {"command": "printf", "args": ["%s", "sk-from-a-command"]}
    result = session.run(
        "Say hello.", text_stream(["Hello."]), model=MODEL,
        config={f"{provider}.auth": auth}, without=("model_catalog_json", f"{provider}.env_key"),
    )  # fmt: skip

    assert result.ok, result.describe()
    assert "fallback metadata" not in result.stdout + result.stderr
    listings = [r for r in session.backend.requests if r.path == "/v1/models"]
    (chat,) = session.chats
    assert chat["messages"][0]["role"] == "system"
    assert chat["messages"][0]["content"].startswith(BASE_INSTRUCTIONS)
    patch_tool = next(t for t in chat["tools"] if t["function"]["name"] == "apply_patch")
    assert list(patch_tool["function"]["parameters"]["properties"]) == ["input"]
    assert "*** Begin Patch" in patch_tool["function"]["description"]
    assert not listings  # the gateway answered the listing itself
