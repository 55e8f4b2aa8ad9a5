"""Every turn of a Claude Code session is read from the real server's prompt cache.

A local model's one dominant cost is reading the prompt: Claude Code sends some twenty thousand
tokens every turn, tens of seconds on a laptop unless the server reuses what it read for the
turn before. That holds only if turn N+1's prompt starts with exactly turn N's prompt, so the
gateway's translation must keep every earlier part of the conversation byte-stable.

The session: the real Claude Code, through the recording proxy and the gateway, to a
`CacheProbe` (tests/support/cache_probe.py) that reads every prompt the gateway builds through
a real server on the tiny model and answers from a script; once with mlx_lm.server, once with
llama.cpp's llama-server (its window large enough for Claude Code's prompt). The gateway talks to
the probe, so it runs with its default profile; the mlx_lm and llama_cpp profiles translate a
conversation alike (tests/unit/test_prefix.py renders it under both). Two `claude -p` runs, the
second continuing the first (`--continue`), so the conversation gets a second user message after
a finished tool loop with thinking:

- run 1: thinking and a Bash call (a tool loop); two Bash calls at once (a parallel pair); a
  command that fails (an error tool result); an Explore subagent on the small ("haiku") model,
  with a system prompt of its own, waited for (side requests between two main turns);
  a final answer;
- run 2: thinking and a Bash call; a final answer.

Asserted from the server's own counts: from the main conversation's second request on, at least
95% of each prompt was already in the cache; and what the gateway told Claude Code
(`cache_read_input_tokens`, with `input_tokens` the rest) is what the server counted.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartGateway
from tests.e2e.recording_proxy import RecordingProxy
from tests.support.agent_script import AgentScript, Call, Turn
from tests.support.anthropic_stream import accumulate, parse_sse
from tests.support.cache_probe import CacheProbe, Reading
from tests.support.claude_code import ClaudeResult, ensure_claude_code, run_claude
from tests.support.llama_backend import StartLlamaServer
from tests.support.mlx_backend import MlxBackend
from tests.support.scripted_backend import ScriptedBackend

pytestmark = pytest.mark.timeout(900)

REUSE = 0.95
RUN_TIMEOUT = 400.0
HAIKU = "local-haiku"
ENV = {
    "MAX_THINKING_TOKENS": "4096",  # thinking on in every main request
    "CLAUDE_CODE_ATTRIBUTION_HEADER": "1",  # the billing line too, which the gateway removes
    "ANTHROPIC_DEFAULT_HAIKU_MODEL": HAIKU,
    "ANTHROPIC_SMALL_FAST_MODEL": HAIKU,
}
TOOLS = ["Bash", "Agent"]
LLAMA_WINDOW = 65536  # Claude Code's prompt is some 20k tokens
SERVERS = ["mlx_lm.server", "llama-server"]


def bash(command: str) -> Call:
    return Call("Bash", {"command": command, "description": "Run a command"})


EXPLORE = Call(
    "Agent",
    {
        "description": "Look around",
        "prompt": "List the files here.",
        "subagent_type": "Explore",
        "model": "haiku",
        "run_in_background": False,  # the main turn waits for it: a side request between turns
    },
)
SESSION = (
    # run 1
    Turn(reasoning="First, one command.", reasoning_field="reasoning", calls=(bash("echo one"),)),
    Turn(text="Two at once.", calls=(bash("echo two"), bash("echo three"))),
    Turn(reasoning="This one fails.", reasoning_field="reasoning", calls=(bash("exit 3"),)),
    Turn(text="Asking a helper.", calls=(EXPLORE,)),
    Turn(reasoning="All ran.", reasoning_field="reasoning", text="First task done."),
    # run 2, after a new user message
    Turn(reasoning="Once more.", reasoning_field="reasoning", calls=(bash("echo four"),)),
    Turn(text="Second task done."),
)


@dataclass
class Session:
    probe: CacheProbe
    proxy: RecordingProxy
    cwd: Path
    home: Path

    def run(self, prompt: str, *extra_args: str) -> ClaudeResult:
        return run_claude(
            prompt,
            self.proxy.url,
            cwd=self.cwd,
            home=self.home,
            allowed_tools=TOOLS,
            extra_args=extra_args,
            env=ENV,
            timeout=RUN_TIMEOUT,
        )

    def sent(self) -> list[dict[str, Any]]:
        """What Claude Code sent to `/v1/messages`, in order."""
        return [json.loads(e.request) for e in self.proxy.exchanges if e.path == "/v1/messages"]

    def reported(self) -> list[dict[str, Any]]:
        """The usage the gateway reported to Claude Code, one per answer."""
        answers = [e for e in self.proxy.exchanges if e.path == "/v1/messages"]
        assert all(e.status == 200 for e in answers), [e.status for e in answers]
        usages = []
        for exchange in answers:
            if exchange.content_type.startswith("text/event-stream"):
                usages.append(accumulate(parse_sse(exchange.response))["usage"])
            else:
                usages.append(json.loads(exchange.response)["usage"])
        return usages


def assert_ok(result: ClaudeResult, text: str, probe: CacheProbe) -> None:
    assert result.ok, f"{result.describe()}\n{probe.table()}"
    assert result.text == text, f"{result.describe()}\n{probe.table()}"


def server_of(name: str, mlx: MlxBackend, start_llama_server: StartLlamaServer) -> tuple[str, str]:
    """The URL and model name of the real server to read prompts with."""
    if name == "llama-server":
        llama = start_llama_server(window=LLAMA_WINDOW)
        return llama.url, llama.model
    return mlx.url, mlx.model


@pytest.mark.parametrize("server", SERVERS)
def test_every_turn_is_read_from_the_prompt_cache(
    server: str,
    mlx_backend: MlxBackend,
    start_llama_server: StartLlamaServer,
    scripted_backend: ScriptedBackend,
    start_gateway: StartGateway,
    tmp_path_factory: pytest.TempPathFactory,
    record_property: Callable[[str, object], None],
) -> None:
    ensure_claude_code()
    url, model = server_of(server, mlx_backend, start_llama_server)
    probe = CacheProbe(url, AgentScript(*SESSION))
    scripted_backend.set_responder(probe)
    # Claude Code's prompt is far over the tiny model's window, which the server does not enforce;
    # reading it the first time takes minutes on a busy CPU.
    flags = ("--mlx-model", model, "--context-window", "200000")
    flags += ("--timeout", "600", "--total-timeout", "600")
    gateway = start_gateway(scripted_backend.url, *flags)
    cwd, home = tmp_path_factory.mktemp("cwd"), tmp_path_factory.mktemp("home")
    with RecordingProxy(gateway.url) as proxy:
        session = Session(probe, proxy, cwd, home)
        first = session.run("Run a few commands.")
        assert_ok(first, "First task done.", probe)
        second = session.run("Run one more.", "--continue")
        assert_ok(second, "Second task done.", probe)
    record_property("claude_seconds", round(first.duration + second.duration, 2))
    print(f"\nprompt cache on {server}:\n{probe.table()}")
    assert "Traceback" not in gateway.log(), gateway.log()[-4000:]

    assert_session_shape(session)
    assert_reused(probe.main_readings, probe)
    assert_reported_faithfully(session.reported(), probe.readings)


def assert_session_shape(session: Session) -> None:
    """The session had what it is meant to prove reuse for."""
    sent = session.sent()
    models = Counter(body["model"] for body in sent)
    assert models[HAIKU] >= 1, models  # the Explore subagent, on the small model
    main = [body for body in sent if body["model"] != HAIKU]
    assert all(body.get("thinking", {}).get("type") in {"enabled", "adaptive"} for body in main)
    readings = session.probe.readings
    assert len(readings) >= 6, session.probe.table()
    turns = [r.turn for r in session.probe.main_readings]  # a retried request repeats its turn
    assert sorted(set(turns)) == list(range(len(SESSION))), session.probe.table()


def assert_reused(main: list[Reading], probe: CacheProbe) -> None:
    short = [(at, r.share) for at, r in enumerate(main) if at > 0 and r.share < REUSE]
    assert not short, f"prompts read mostly afresh: {short}\n{probe.table()}"
    # And more than the bare system prompt: each prompt starts with all of the one before.
    for before, after in itertools.pairwise(main):
        assert after.cached_tokens >= before.prompt_tokens - 1, probe.table()


def assert_reported_faithfully(reported: list[dict[str, Any]], readings: list[Reading]) -> None:
    """Each answer's usage is the server's count: the cached part apart from the rest."""
    told = Counter((u["input_tokens"], u["cache_read_input_tokens"]) for u in reported)
    counted = Counter((r.prompt_tokens - r.cached_tokens, r.cached_tokens) for r in readings)
    assert told == counted
