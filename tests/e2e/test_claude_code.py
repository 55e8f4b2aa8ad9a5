"""The real Claude Code, headless, through the real gateway, against a scripted model.

Each scenario runs `claude -p` once in a fresh temporary cwd and HOME. The scripted backend plays
the model turn by turn (`tests.support.agent_script`), streaming the way a real OpenAI-compatible
server does, and records what it received. A recording proxy between Claude Code and the gateway
keeps what Claude Code sent and every byte the gateway answered, so each scenario checks:

- Claude Code's final `result` object (no error, the expected text) and the files left in cwd;
- the OpenAI requests the backend received (tool results, what was echoed back);
- the gateway's answers to Claude Code: every stream well-formed, with the expected stop reason.

Each test records Claude Code's run time as the `claude_seconds` property; conftest.py prints
them in the terminal summary.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.recording_proxy import Exchange, RecordingProxy
from tests.support.agent_script import (
    INLINE,
    AgentScript,
    Call,
    Turn,
    TurnSource,
    assistant_messages,
    tool_messages,
)
from tests.support.anthropic_stream import StreamFailed, accumulate, parse_sse
from tests.support.claude_code import (
    ClaudeResult,
    ensure_claude_code,
    run_claude,
)
from tests.support.gateway import GatewayProcess
from tests.support.scripted_backend import HttpError, ScriptedBackend

pytestmark = pytest.mark.timeout(120)

TOOLS = ["Bash", "Read", "Write", "Edit"]
RUN_TIMEOUT = 60.0
MESSAGES_PATH = "/v1/messages"


@pytest.fixture(scope="module")
def claude_code() -> Path:
    """Installs the pinned Claude Code if needed; fails loudly when it cannot."""
    return ensure_claude_code()


def answer_of(exchange: Exchange) -> dict[str, Any]:
    """The gateway's answer as one Anthropic message; asserts the stream is well-formed.

    A stream that ended with an `error` event comes back as `{"type": "error", ...}`.
    """
    if not exchange.content_type.startswith("text/event-stream"):
        message: dict[str, Any] = json.loads(exchange.response)
        return message
    try:
        return accumulate(parse_sse(exchange.response))
    except StreamFailed as failed:
        return {"type": "error", "error": failed.error}


@dataclass
class Agent:
    """Claude Code wired to the gateway and the scripted backend, in a fresh cwd and HOME."""

    backend: ScriptedBackend
    gateway: GatewayProcess
    proxy: RecordingProxy
    cwd: Path
    home: Path
    record: Callable[[str, object], None]
    script: AgentScript = field(default_factory=AgentScript)

    def run(
        self, prompt: str, *turns: TurnSource, env: dict[str, str] | None = None
    ) -> ClaudeResult:
        self.script = AgentScript(*turns)
        self.backend.set_responder(self.script)
        result = run_claude(
            prompt,
            self.proxy.url,
            cwd=self.cwd,
            home=self.home,
            allowed_tools=TOOLS,
            env=env,
            timeout=RUN_TIMEOUT,
        )
        self.record("claude_seconds", round(result.duration, 2))
        print(f"\nclaude ran {result.duration:.2f}s, {len(self.bodies)} backend request(s)")
        return result

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The chat requests the backend received, as JSON, in order."""
        return [request.json() for request in self.backend.chat_requests]

    @property
    def exchanges(self) -> list[Exchange]:
        """Claude Code's `/v1/messages` calls and the gateway's answers, in order."""
        return [e for e in self.proxy.exchanges if e.path == MESSAGES_PATH]

    def sent(self, at: int) -> dict[str, Any]:
        """The Anthropic request body Claude Code sent in its `at`-th messages call."""
        body: dict[str, Any] = json.loads(self.exchanges[at].request)
        return body

    def answers(self) -> list[dict[str, Any]]:
        """Every answer of the gateway, each checked well-formed, as an Anthropic message."""
        assert all(e.status == 200 for e in self.exchanges), [e.status for e in self.exchanges]
        return [answer_of(exchange) for exchange in self.exchanges]

    def explain(self, result: ClaudeResult) -> str:
        return f"{result.describe()}\n--- gateway log ---\n{self.gateway.log()[-4000:]}"

    def assert_answered(self, result: ClaudeResult, text: str, errors: int = 0) -> None:
        """Success with `text`; every gateway answer well-formed, `errors` of them error events."""
        assert result.ok, self.explain(result)
        assert result.text == text, self.explain(result)
        kinds = [answer["type"] for answer in self.answers()]
        assert kinds.count("error") == errors, kinds
        assert "Traceback" not in self.gateway.log(), self.gateway.log()


@pytest.fixture
def agent(
    claude_code: Path,
    scripted_backend: ScriptedBackend,
    start_gateway: Callable[..., GatewayProcess],
    tmp_path_factory: pytest.TempPathFactory,
    record_property: Callable[[str, object], None],
    request: pytest.FixtureRequest,
) -> Iterator[Agent]:
    marker = request.node.get_closest_marker("gateway_flags")
    gateway = start_gateway(scripted_backend.url, *(marker.args if marker else ()))
    cwd, home = tmp_path_factory.mktemp("cwd"), tmp_path_factory.mktemp("home")
    with RecordingProxy(gateway.url) as proxy:
        yield Agent(scripted_backend, gateway, proxy, cwd, home, record_property)


def bash(command: str) -> Call:
    return Call("Bash", {"command": command, "description": "Run a command"})


def last_tool_texts(body: dict[str, Any]) -> list[str]:
    """The contents of the tool messages that follow the last assistant message."""
    messages = body["messages"]
    last = max(at for at, m in enumerate(messages) if m["role"] == "assistant")
    return [m["content"] for m in messages[last + 1 :] if m["role"] == "tool"]


def blocks(message: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [block for block in message.get("content", []) if block.get("type") == kind]


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of an Anthropic request, in order."""
    user = [m for m in body["messages"] if m["role"] == "user" and isinstance(m["content"], list)]
    return [block for m in user for block in blocks(m, "tool_result")]


# ---- scenarios ------------------------------------------------------------------------------


def test_plain_answer(agent: Agent) -> None:
    result = agent.run("Say hello.", Turn(text="Hello from a local model."))

    agent.assert_answered(result, "Hello from a local model.")
    assert len(agent.bodies) == 1
    assert agent.bodies[0]["stream"] is True
    assert agent.answers()[0]["stop_reason"] == "end_turn"


def test_bash_tool_loop(agent: Agent) -> None:
    nonce = secrets.token_hex(8)

    def report(body: dict[str, Any]) -> Turn:
        return Turn(text=f"The command printed {last_tool_texts(body)[0].strip()}.")

    echo = Turn(text="Running it.", calls=(bash(f"echo {nonce}"),))
    result = agent.run("Echo the nonce.", echo, report)

    agent.assert_answered(result, f"The command printed {nonce}.")
    first = agent.answers()[0]
    assert first["stop_reason"] == "tool_use"
    assert blocks(first, "tool_use")[0]["input"]["command"] == f"echo {nonce}"
    final = agent.bodies[-1]
    assert [(m["tool_call_id"], m["content"].strip()) for m in tool_messages(final)] == [
        ("call_t0_0", nonce)
    ]
    calls = assistant_messages(final)[0]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["Bash"]


def test_write_creates_a_file(agent: Agent) -> None:
    target = agent.cwd / "notes.md"
    # Escapes (quotes, backslashes, \u and surrogate pairs) split across 4-character fragments.
    content = '# Notes\n\n\tSaid "héllo" ✓ 🚀 C:\\path\\file\n'
    write = Call("Write", {"file_path": str(target), "content": content})

    result = agent.run("Write notes.md.", Turn(calls=(write,)), Turn(text="Wrote notes.md."))

    agent.assert_answered(result, "Wrote notes.md.")
    assert target.read_text() == content
    assert not tool_messages(agent.bodies[-1])[-1]["content"].startswith("[tool error]")


def test_read_then_edit(agent: Agent) -> None:
    target = agent.cwd / "app.py"
    target.write_text('def greet():\n    return "hello"\n')
    read = Call("Read", {"file_path": str(target)})
    edit = Call("Edit", {"file_path": str(target), "old_string": '"hello"', "new_string": '"hi"'})

    result = agent.run(
        "Change the greeting to hi.",
        Turn(calls=(read,)),
        Turn(text="Editing.", calls=(edit,)),
        Turn(text="Done."),
    )

    agent.assert_answered(result, "Done.")
    assert target.read_text() == 'def greet():\n    return "hi"\n'
    read_result, edit_result = (m["content"] for m in tool_messages(agent.bodies[-1]))
    assert 'return "hello"' in read_result
    assert not edit_result.startswith("[tool error]"), edit_result


def test_two_parallel_tool_calls(agent: Agent) -> None:
    first, second = secrets.token_hex(6), secrets.token_hex(6)
    calls = (bash(f"echo {first}"), bash(f"echo {second}"))

    result = agent.run("Echo both.", Turn(calls=calls), Turn(text="Both ran."))

    agent.assert_answered(result, "Both ran.")
    assert len(blocks(agent.answers()[0], "tool_use")) == 2
    final = agent.bodies[-1]
    assert len(assistant_messages(final)[0]["tool_calls"]) == 2
    arrived = {m["tool_call_id"]: m["content"].strip() for m in tool_messages(final)}
    assert arrived == {"call_t0_0": first, "call_t0_1": second}


def test_parallel_results_reach_the_backend_in_call_order(agent: Agent) -> None:
    """Claude Code lists tool results in the order the tools finished, not the order of the calls.

    Chat templates (Qwen3's among them) render `role: tool` messages without their
    `tool_call_id`, so a local model pairs results with calls by position: the backend must get
    them in the order of the assistant's `tool_calls`.
    """
    calls = (bash("sleep 1; echo slow-first"), bash("echo fast-second"))

    result = agent.run("Run both.", Turn(calls=calls), Turn(text="Both ran."))

    agent.assert_answered(result, "Both ran.")
    finished = [r["tool_use_id"] for r in tool_results(agent.sent(1))]
    assert finished == ["call_t0_1", "call_t0_0"]  # Claude Code: completion order
    tools = tool_messages(agent.bodies[-1])
    assert [m["tool_call_id"] for m in tools] == ["call_t0_0", "call_t0_1"]
    assert [m["content"].strip() for m in tools] == ["slow-first", "fast-second"]


def reasoning_turns(thinking: str, field: str) -> tuple[Turn, Turn]:
    return (
        Turn(reasoning=thinking, reasoning_field=field, calls=(bash("echo ok"),)),
        Turn(reasoning=thinking, reasoning_field=field, text="All good."),
    )


def assert_thinking_round_trip(agent: Agent, thinking: str) -> dict[str, Any]:
    """Reasoning reached Claude Code as thinking blocks, never as text, and Claude Code sent the
    first one back, signature included; returns the assistant message the backend got back."""
    answers = agent.answers()
    for answer in answers:
        assert [b["thinking"] for b in blocks(answer, "thinking")] == [thinking]
        assert all(thinking not in b["text"] for b in blocks(answer, "text"))
    (sent,) = [m for m in agent.sent(1)["messages"] if m["role"] == "assistant"]
    assert blocks(sent, "thinking") == blocks(answers[0], "thinking")
    (echoed,) = assistant_messages(agent.bodies[-1])
    assert thinking not in (echoed.get("content") or ""), echoed
    return echoed


@pytest.mark.parametrize("reasoning_field", ["reasoning_content", "reasoning", INLINE])
def test_reasoning_never_leaks(agent: Agent, reasoning_field: str) -> None:
    thinking = f"Let me think. SECRET-PLAN-{secrets.token_hex(4)} I should run echo first."

    result = agent.run("Check it.", *reasoning_turns(thinking, reasoning_field))

    agent.assert_answered(result, "All good.")
    echoed = assert_thinking_round_trip(agent, thinking)
    assert thinking not in json.dumps(echoed), echoed  # mlx_lm.server gets no reasoning back


@pytest.mark.gateway_flags("--backend", "llama_cpp")
def test_reasoning_does_not_go_back_to_servers_that_take_it(agent: Agent) -> None:
    """llama.cpp would take it as `reasoning_content`, but Qwen3-style templates drop it at the
    next user message, which would cut the prompt cache's prefix there."""
    thinking = f"Plan: SECRET-PLAN-{secrets.token_hex(4)}."

    result = agent.run("Check it.", *reasoning_turns(thinking, "reasoning_content"))

    agent.assert_answered(result, "All good.")
    echoed = assert_thinking_round_trip(agent, thinking)
    assert thinking not in json.dumps(echoed), echoed


def test_finish_reason_length_on_text(agent: Agent) -> None:
    """Claude Code answers max_tokens by asking again: the cut text, then a user reminder."""
    cut = "This answer was cut off by the token li"

    result = agent.run("Write a lot.", Turn(text=cut, finish_reason="length"), Turn(text="mit."))

    agent.assert_answered(result, "mit.")
    assert [a["stop_reason"] for a in agent.answers()] == ["max_tokens", "end_turn"]
    resumed = agent.bodies[1]["messages"]
    assert resumed[-2] == {"role": "assistant", "content": cut}
    assert resumed[-1]["role"] == "user"
    assert "Output token limit hit" in resumed[-1]["content"]


def test_stream_dropped_once_then_recovers(agent: Agent) -> None:
    """The gateway ends the cut stream with an error event; Claude Code asks again, unstreamed."""
    answer = "Recovered answer after a dropped stream."

    result = agent.run("Answer.", Turn(text=answer, drop_after=4))

    agent.assert_answered(result, answer, errors=1)
    failed, retried = agent.answers()
    assert failed["type"] == "error", failed
    assert retried["type"] == "message"
    assert retried["content"] == [{"type": "text", "text": answer}]
    assert [agent.sent(at)["stream"] for at in (0, 1)] == [True, False]
    assert [body["stream"] for body in agent.bodies] == [True, False]
    assert agent.bodies[0]["messages"] == agent.bodies[1]["messages"]
    assert "backend stream failed" in agent.gateway.log()


def test_failing_command_is_an_error_result(agent: Agent) -> None:
    def report(body: dict[str, Any]) -> Turn:
        failed = last_tool_texts(body)[0].startswith("[tool error] ")
        return Turn(text="It failed." if failed else "It did not fail?")

    result = agent.run("Run it.", Turn(calls=(bash("echo broken >&2; exit 3"),)), report)

    agent.assert_answered(result, "It failed.")
    sent = tool_results(agent.sent(1))[0]
    assert sent["is_error"] is True
    content = tool_messages(agent.bodies[-1])[0]["content"]
    assert content.startswith("[tool error] Exit code 3"), content
    assert "broken" in content, content


def test_billing_header_never_reaches_the_backend(agent: Agent) -> None:
    env = {"CLAUDE_CODE_ATTRIBUTION_HEADER": "1"}

    result = agent.run("Say hi.", Turn(text="Hi."), env=env)

    agent.assert_answered(result, "Hi.")
    assert b"x-anthropic-billing-header" in agent.exchanges[0].request  # Claude Code sent it
    for request in agent.backend.chat_requests:
        assert b"x-anthropic-billing-header" not in request.body
        assert b"cc_version=" not in request.body


def test_stream_dropped_inside_a_tool_call(agent: Agent) -> None:
    """A tool_use cut short by an error event is never run; the retried call runs once."""
    log = agent.cwd / "runs.log"
    turns = (Turn(calls=(bash(f"echo run >> {log}"),), drop_after=5), Turn(text="Ran once."))

    result = agent.run("Run it once.", *turns)

    agent.assert_answered(result, "Ran once.", errors=1)
    cut = [e["type"] for e in parse_sse(agent.exchanges[0].response)]
    assert cut[-1] == "error", cut
    assert "input_json_delta" in agent.exchanges[0].response.decode(), cut  # a partial tool_use
    assert log.read_text() == "run\n"
    assert agent.script.attempts[0] == 2
    assert [body["stream"] for body in agent.bodies] == [True, False, True]


def test_tool_call_written_as_text(agent: Agent) -> None:
    """A server without a tool parser sends `<tool_call>` text: Claude Code still gets tool_use."""
    nonce = secrets.token_hex(8)
    call = Turn(text="Running it.", calls=(bash(f"echo {nonce}"),), calls_as_text=True)

    def report(body: dict[str, Any]) -> Turn:
        return Turn(text=f"Printed {last_tool_texts(body)[0].strip()}.")

    result = agent.run("Echo the nonce.", call, report)

    agent.assert_answered(result, f"Printed {nonce}.")
    first = agent.answers()[0]
    assert first["stop_reason"] == "tool_use"
    assert [b["input"]["command"] for b in blocks(first, "tool_use")] == [f"echo {nonce}"]
    assert all("<tool_call>" not in b["text"] for b in blocks(first, "text")), first
    echoed = assistant_messages(agent.bodies[-1])[0]
    (tool,) = tool_messages(agent.bodies[-1])
    assert tool["tool_call_id"] == echoed["tool_calls"][0]["id"]
    assert tool["content"].strip() == nonce


def test_backend_refusal_ends_the_run_quickly(agent: Agent) -> None:
    """A backend 4xx becomes a 400: Claude Code gives up within a second instead of retrying
    for minutes. (2.1.331 asks six times in a row: the same body twice, then without
    `thinking.display`, then all of that again with its deferred tools loaded.)"""
    refusal = HttpError(400, {"error": {"message": "prompt too long for this model"}})

    result = agent.run("Hi.", refusal)

    assert result.result is not None, agent.explain(result)
    assert result.result["is_error"] is True, agent.explain(result)
    assert result.result["api_error_status"] == 400, agent.explain(result)
    assert "prompt too long for this model" in (result.text or ""), agent.explain(result)
    assert result.duration < 10, agent.explain(result)
    statuses = [exchange.status for exchange in agent.exchanges]
    assert set(statuses) == {400}, statuses
    assert len(agent.bodies) == len(statuses) <= 6, statuses


@pytest.mark.gateway_flags("--ping-interval", "0.3")
def test_pings_while_the_model_is_silent(agent: Agent) -> None:
    result = agent.run("Think slowly.", Turn(text="Slow answer.", pause_before=1.5))

    agent.assert_answered(result, "Slow answer.")
    events = parse_sse(agent.exchanges[0].response)
    assert [e["type"] for e in events].count("ping") >= 2, events


def test_write_then_run_a_script(agent: Agent) -> None:
    """The README promise in small: create a program, run it, report its output."""
    nonce = secrets.token_hex(6)
    script = agent.cwd / "hello.py"
    write = Call("Write", {"file_path": str(script), "content": f'print("hello {nonce}")\n'})

    def report(body: dict[str, Any]) -> Turn:
        return Turn(text=f"It prints: {last_tool_texts(body)[0].strip()}")

    result = agent.run(
        "Create hello.py that prints hello, run it, and tell me the output.",
        Turn(text="Creating hello.py.", calls=(write,)),
        Turn(text="Running it.", calls=(bash("python3 hello.py"),)),
        report,
    )

    agent.assert_answered(result, f"It prints: hello {nonce}")
    assert script.read_text() == f'print("hello {nonce}")\n'
    assert [a["stop_reason"] for a in agent.answers()] == ["tool_use", "tool_use", "end_turn"]
