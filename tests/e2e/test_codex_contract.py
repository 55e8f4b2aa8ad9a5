"""The real Codex CLI against a scripted Responses endpoint: the contract the gateway must meet.

Codex talks straight to `tests.support.responses_server`, which plays the model turn by turn and
records every request. Each scenario runs `codex exec` once in a fresh temporary workdir and
HOME and checks what Codex sent (only `POST /v1/responses` on loopback, streamed, stateless, the
fields and tools listed in the spec) and what it did with the answer: the final message it
printed, the shell command it ran, the file `apply_patch` created, and how it treats a cut,
incomplete or failed response (which of them it retries). The gateway's Responses endpoint has
to produce exactly what these scenarios stream, and survive what they show Codex sends.

`tests/e2e/fixtures/codex_request.json` is a first-turn request of this Codex, with machine paths
and ids replaced by neutral values; a test here checks it still has the shape Codex sends.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.codex import (
    CODEX_VERSION,
    DUMMY_API_KEY,
    INSTALL_TIMEOUT,
    INSTRUCTIONS,
    CodexResult,
    ensure_codex,
    run_codex,
)
from tests.support.responses_events import Failure, Message, ResponseSpec
from tests.support.responses_server import (
    RESPONSES_PATH,
    CodexScript,
    Cut,
    Reply,
    ResponsesServer,
    TurnSource,
    apply_patch,
    outputs_in,
    shell,
)
from tests.support.scripted_backend import HttpError

pytestmark = pytest.mark.timeout(180)

RUN_TIMEOUT = 90.0
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "codex_request.json"
FIXTURE_PROMPT = (
    "Create a file hello.py that prints hello, run it with python3, and tell me the output."
)
NEUTRAL_WORKDIR = "/home/user/project"
NEUTRAL_HOME = "/home/user"
# Every top-level field this Codex sends in a turn request; `instructions` is not among them:
# the model's instructions arrive as the first `developer` message of `input`.
REQUEST_FIELDS = {
    "model", "stream", "input", "tools", "tool_choice", "parallel_tool_calls", "reasoning",
    "store", "include", "prompt_cache_key", "client_metadata",
}
# Per-run values in the text of `input` and in `client_metadata`.
NEUTRAL_TEXT = {
    r"<current_date>[^<]*</current_date>": "<current_date>2026-01-01</current_date>",
    r"<timezone>[^<]*</timezone>": "<timezone>Etc/UTC</timezone>",
    r'\\"turn_started_at_unix_ms\\":\d+': r'\\"turn_started_at_unix_ms\\":0',
}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def codex() -> Path:
    """Installs the pinned Codex if needed; fails loudly when it cannot."""
    return ensure_codex()


@dataclass
class Session:
    """Codex wired to the scripted Responses server, in a fresh workdir and HOME."""

    server: ResponsesServer
    workdir: Path
    home: Path
    script: CodexScript | None = None

    def run(self, prompt: str, *turns: TurnSource, **options: Any) -> CodexResult:
        """Run Codex once with `turns` answering by the turn the conversation is at."""
        self.script = CodexScript(*turns)
        self.server.set_responder(self.script)
        return self._run(prompt, **options)

    def run_queued(self, prompt: str, *replies: Reply, **options: Any) -> CodexResult:
        """Run Codex once with `replies` answering its requests in arrival order (retries too)."""
        self.server.set_responder(None)
        self.server.queue(*replies)
        return self._run(prompt, **options)

    def _run(self, prompt: str, **options: Any) -> CodexResult:
        options.setdefault("timeout", RUN_TIMEOUT)
        result = run_codex(self.server.url, prompt, self.workdir, home=self.home, **options)
        print(f"\ncodex ran {result.duration:.2f}s, {len(self.server.requests)} request(s)")
        return result

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return self.server.bodies

    def assert_only_responses_posts(self) -> None:
        seen = [(r.method, r.path) for r in self.server.requests]
        assert seen, "no request reached the server"
        assert all(pair == ("POST", RESPONSES_PATH) for pair in seen), seen


@pytest.fixture
def session(codex: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    workdir, home = tmp_path_factory.mktemp("workdir"), tmp_path_factory.mktemp("home")
    with ResponsesServer() as server:
        yield Session(server, workdir, home)


def answer(text: str) -> ResponseSpec:
    return ResponseSpec((Message(text),))


def tools_by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {tool["name"]: tool for tool in body["tools"] if "name" in tool}


def last_user_text(body: dict[str, Any]) -> str:
    users = [item for item in body["input"] if item.get("role") == "user"]
    text: str = users[-1]["content"][0]["text"]
    return text


# ---- installation -----------------------------------------------------------------------------


@pytest.mark.timeout(INSTALL_TIMEOUT + 60)
def test_pinned_codex_installs_and_reports_its_version(codex: Path) -> None:
    completed = subprocess.run(
        [str(codex), "--version"],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["codex-cli", CODEX_VERSION], completed.stdout


# ---- what Codex sends -------------------------------------------------------------------------


def test_plain_answer_is_the_final_message(session: Session) -> None:
    result = session.run("Say hello.", answer("Hello from a local model."))

    assert result.ok, result.describe()
    assert result.final_message == "Hello from a local model."
    session.assert_only_responses_posts()
    (request,) = session.server.requests
    assert request.headers["authorization"] == f"Bearer {DUMMY_API_KEY}"
    assert request.headers["accept"] == "text/event-stream"
    assert request.headers["content-type"] == "application/json"


def test_request_fields(session: Session) -> None:
    result = session.run("Say hello.", answer("Hello."), model="qwen3-coder-local")

    assert result.ok, result.describe()
    (body,) = session.bodies
    assert set(body) == REQUEST_FIELDS
    assert body["model"] == "qwen3-coder-local"
    assert body["stream"] is True
    assert body["store"] is False
    assert body["tool_choice"] == "auto"
    assert body["parallel_tool_calls"] is True
    assert body["include"] == ["reasoning.encrypted_content"]
    assert body["reasoning"] == {"summary": "auto"}
    assert isinstance(body["prompt_cache_key"], str)
    assert all(isinstance(value, str) for value in body["client_metadata"].values())
    first = body["input"][0]
    assert (first["type"], first["role"]) == ("message", "developer")
    assert first["content"] == [{"type": "input_text", "text": INSTRUCTIONS}]
    assert last_user_text(body) == "Say hello."


def test_tools_include_shell_and_freeform_apply_patch(session: Session) -> None:
    result = session.run("Say hello.", answer("Hello."))

    assert result.ok, result.describe()
    tools = tools_by_name(session.bodies[0])
    shell_tool = tools["exec_command"]
    assert shell_tool["type"] == "function"
    assert shell_tool["parameters"]["required"] == ["cmd"]
    patch_tool = tools["apply_patch"]
    assert patch_tool["type"] == "custom"
    assert patch_tool["format"]["type"] == "grammar"
    assert patch_tool["format"]["syntax"] == "lark"
    assert "*** Begin Patch" in patch_tool["format"]["definition"]
    kinds = {tool["type"] for tool in session.bodies[0]["tools"]}
    assert kinds <= {"function", "custom", "namespace", "web_search"}, kinds


# ---- tool loops ---------------------------------------------------------------------------------


def test_shell_call_runs_and_its_output_comes_back(session: Session) -> None:
    nonce = secrets.token_hex(8)
    command = f"echo {nonce} > nonce.txt && cat nonce.txt"

    def report(body: dict[str, Any]) -> ResponseSpec:
        output = outputs_in(body)["call_t0_0"]
        found = re.search(r"Output:\n(.*)\n", output)
        return answer(f"The command printed {found.group(1) if found else '?'}.")

    run = ResponseSpec((Message("Running it."), shell(command, turn=0)))
    result = session.run("Echo the nonce.", run, report)

    assert result.ok, result.describe()
    assert result.final_message == f"The command printed {nonce}."
    (execution,) = result.items("command_execution")
    assert execution["exit_code"] == 0
    assert execution["aggregated_output"] == f"{nonce}\n"
    assert (session.workdir / "nonce.txt").read_text() == f"{nonce}\n"
    session.assert_only_responses_posts()
    final = session.bodies[-1]["input"]
    call, output = final[-2], final[-1]
    assert call["type"] == "function_call"
    assert call["call_id"] == "call_t0_0"
    assert json.loads(call["arguments"]) == {"cmd": command}
    assert output["type"] == "function_call_output"
    assert output["call_id"] == "call_t0_0"
    assert isinstance(output["output"], str)
    assert "Process exited with code 0" in output["output"]


def test_apply_patch_creates_a_file(session: Session) -> None:
    content = ["def greet():", '    return "héllo ✓"']
    patch = "*** Begin Patch\n*** Add File: greet.py\n" + "".join(f"+{line}\n" for line in content)
    patch += "*** End Patch\n"

    result = session.run(
        "Create greet.py.", ResponseSpec((apply_patch(patch, turn=0),)), answer("Created greet.py.")
    )

    assert result.ok, result.describe()
    assert result.final_message == "Created greet.py."
    assert (session.workdir / "greet.py").read_text() == "\n".join(content) + "\n"
    (change,) = result.items("file_change")
    assert change["status"] == "completed"
    assert [c["kind"] for c in change["changes"]] == ["add"]
    final = session.bodies[-1]["input"]
    call, output = final[-2], final[-1]
    assert (call["type"], call["name"], call["input"]) == ("custom_tool_call", "apply_patch", patch)
    assert output["type"] == "custom_tool_call_output"
    assert output["call_id"] == "call_t0_0"
    assert "Success. Updated the following files:\nA greet.py" in output["output"]


def test_earlier_items_are_sent_back_whole(session: Session) -> None:
    """Stateless: turn 2 repeats the whole conversation, the model's items included, by id."""
    first = ResponseSpec((Message("Checking."), shell("true", turn=0)))

    result = session.run("Check.", first, answer("Done."))

    assert result.ok, result.describe()
    earlier, later = session.bodies
    assert later["input"][: len(earlier["input"])] == earlier["input"]
    sent_back = later["input"][len(earlier["input"]) :]
    kinds = [item["type"] for item in sent_back]
    assert kinds == ["message", "function_call", "function_call_output"]
    assert sent_back[0]["role"] == "assistant"
    assert sent_back[0]["id"] == f"msg_{first.response_id}_0"
    assert sent_back[0]["content"][0]["text"] == "Checking."


# ---- ends other than response.completed ------------------------------------------------------


def test_incomplete_response_fails_the_turn_without_retry(session: Session) -> None:
    cut = ResponseSpec((Message("This answer was cut"),), incomplete_reason="max_output_tokens")

    result = session.run("Write a lot.", cut, answer("never asked for"))

    assert result.returncode == 1, result.describe()
    assert result.final_message == "This answer was cut"
    failed = [e for e in result.events if e.get("type") == "turn.failed"]
    reason = "Incomplete response returned, reason: max_output_tokens"
    assert failed[0]["error"]["message"] == reason
    assert len(session.bodies) == 1


def test_context_length_exceeded_is_final(session: Session) -> None:
    overflow = Failure("context_length_exceeded", "Your input exceeds the context window.")

    result = session.run("Read everything.", ResponseSpec((), failure=overflow))

    assert result.returncode == 1, result.describe()
    failed = [e for e in result.events if e.get("type") == "turn.failed"]
    assert "context window" in failed[0]["error"]["message"]
    assert len(session.bodies) == 1


def test_dropped_stream_is_retried(session: Session) -> None:
    spec = answer("Recovered after a dropped stream.")

    result = session.run_queued("Answer.", Cut(spec, after=4), spec)

    assert result.ok, result.describe()
    assert result.final_message == "Recovered after a dropped stream."
    assert len(session.bodies) == 2
    assert session.bodies[0]["input"] == session.bodies[1]["input"]


def test_server_error_before_the_stream_is_retried(session: Session) -> None:
    error = HttpError(503, {"error": {"message": "busy", "type": "server_error"}})

    result = session.run_queued("Answer.", error, answer("Answered on the retry."))

    assert result.ok, result.describe()
    assert result.final_message == "Answered on the retry."
    assert len(session.bodies) == 2


@pytest.mark.parametrize("status", [429, 400])
def test_client_errors_end_the_turn_at_once(session: Session, status: int) -> None:
    """Codex retries neither a 429 nor a 4xx: one request, a failed turn."""
    error = HttpError(status, {"error": {"message": f"status {status}", "type": "invalid_request"}})

    result = session.run_queued("Answer.", error, answer("never asked for"))

    assert result.returncode == 1, result.describe()
    assert result.final_message is None
    assert len(session.bodies) == 1


# ---- the recorded request ---------------------------------------------------------------------


def scrubbed(body: dict[str, Any], workdir: Path, home: Path) -> dict[str, Any]:
    """The request with machine paths and per-run ids replaced by neutral, stable values."""
    text = json.dumps(body, indent=1, ensure_ascii=False)
    text = text.replace(str(workdir), NEUTRAL_WORKDIR).replace(str(home), NEUTRAL_HOME)
    numbers: dict[str, str] = {}

    def neutral_id(match: re.Match[str]) -> str:
        return numbers.setdefault(match[0], f"00000000-0000-7000-8000-{len(numbers):012d}")

    text = UUID.sub(neutral_id, text)
    for pattern, value in NEUTRAL_TEXT.items():
        text = re.sub(pattern, value, text)
    scrubbed_body: dict[str, Any] = json.loads(text)
    return scrubbed_body


def shape(body: dict[str, Any]) -> dict[str, Any]:
    """What must not drift between the fixture and a live request: fields, items, tools."""
    return {
        "fields": sorted(body),
        "input": [(item["type"], item.get("role")) for item in body["input"]],
        "tools": [(tool["type"], tool.get("name")) for tool in body["tools"]],
    }


def test_fixture_has_the_shape_codex_sends(session: Session) -> None:
    result = session.run(FIXTURE_PROMPT, answer("Not now."))

    assert result.ok, result.describe()
    live = scrubbed(session.bodies[0], session.workdir, session.home)
    recorded = json.loads(FIXTURE.read_text())
    assert shape(live) == shape(recorded)
    assert live["tools"] == recorded["tools"]
    assert str(session.home) not in json.dumps(live)
    assert last_user_text(recorded) == FIXTURE_PROMPT
