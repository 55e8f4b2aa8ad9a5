"""`mlx-gateway code` and `mlx-gateway codex`: reuse a gateway that serves what was asked, else
start a private one; run the agent wired to it. Stand-in `claude` and `codex` executables on PATH
record what they were given and talk to the gateway for real; a fresh HOME keeps the session's
files in the test's folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import StartGateway
from tests.support.codex import CODEX_VERSION, ensure_codex
from tests.support.ports import free_port
from tests.support.scripted_backend import Completion, ScriptedBackend, text_stream

FAKE_AGENT = """#!{python}
import json, os, sys, urllib.request
base = os.environ.get("ANTHROPIC_BASE_URL")
if base is None:  # codex: the provider's base_url is one of the -c overrides
    base = [a.split("=", 1)[1].strip('"') for a in sys.argv if ".base_url=" in a][0][:-3]
health = json.loads(urllib.request.urlopen(base + "/health", timeout=10).read())
body = json.dumps({{"model": "claude-haiku-4-5", "max_tokens": 5,
                   "messages": [{{"role": "user", "content": "hi"}}]}}).encode()
request = urllib.request.Request(base + "/v1/messages", data=body,
                                 headers={{"content-type": "application/json"}})
answer = json.loads(urllib.request.urlopen(request, timeout=10).read())
record = {{"args": sys.argv[1:], "env": dict(os.environ), "answer": answer, "health": health}}
open(os.environ["FAKE_AGENT_RECORD"], "w").write(json.dumps(record))
sys.exit(7)
"""


@pytest.fixture
def fake_agents(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("claude", "codex"):
        script = bin_dir / name
        script.write_text(FAKE_AGENT.format(python=sys.executable))
        script.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / "state"),
        "FAKE_AGENT_RECORD": str(tmp_path / "record.json"),
    }


def run_gateway_command(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "MLX_GATEWAY_", "CLAUDE_", "XDG_"))
    }
    command = [sys.executable, "-m", "mlx_gateway", *args]
    return subprocess.run(
        command,
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def record(env: dict[str, str]) -> dict[str, object]:
    data: dict[str, object] = json.loads(Path(env["FAKE_AGENT_RECORD"]).read_text())
    return data


def test_starts_a_private_gateway_and_runs_claude(
    scripted_backend: ScriptedBackend, fake_agents: dict[str, str]
) -> None:
    scripted_backend.queue(Completion(text="from the local model"))
    port = free_port()  # nothing listens there: the session gets a private gateway
    result = run_gateway_command(
        [
            *("--port", str(port), "--mlx-url", scripted_backend.url),
            *("--mlx-model", "local/big", "--model-map", "haiku=local/small", "--context-window"),
            *("32768", "code", "-p", "do things", "--output-format", "json"),
        ],
        fake_agents,
    )
    assert result.returncode == 7, result.stderr
    seen = record(fake_agents)
    assert seen["args"] == ["-p", "do things", "--output-format", "json"]
    env = seen["env"]
    assert isinstance(env, dict)
    session_url = env["ANTHROPIC_BASE_URL"]
    assert session_url.startswith("http://127.0.0.1:")
    assert session_url != f"http://127.0.0.1:{port}"
    assert env["ANTHROPIC_AUTH_TOKEN"]
    assert "ANTHROPIC_API_KEY" not in env
    assert env["ANTHROPIC_MODEL"] == "local/big"
    assert env["ANTHROPIC_DEFAULT_OPUS_MODEL"] == "local/big"
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "local/small"
    assert env["CLAUDE_CODE_SUBAGENT_MODEL"] == "local/big"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["CLAUDE_CODE_ATTRIBUTION_HEADER"] == "0"
    assert env["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] == "32768"
    assert env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "4096"
    assert seen["answer"]["content"][0]["text"] == "from the local model"  # type: ignore[index]
    assert scripted_backend.last_json()["model"] == "local/small"
    # The session gateway's log went to a file, named on stderr, not over the agent's screen.
    logs = list((Path(fake_agents["XDG_STATE_HOME"]) / "mlx-gateway").glob("session-*.log"))
    assert len(logs) == 1
    assert f"log: {logs[0]}" in result.stderr
    assert "POST /v1/messages" not in result.stderr
    assert "mlx-gateway 0.1.0 on" in logs[0].read_text()


def test_reuses_a_running_gateway_that_serves_what_was_asked(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway, fake_agents: dict[str, str]
) -> None:
    gateway = start_gateway(scripted_backend.url, "--mlx-model", "already/running")
    scripted_backend.queue(Completion(text="served by the running one"))
    result = run_gateway_command(
        ["--port", str(gateway.port), "--mlx-model", "already/running", "code"], fake_agents
    )
    assert result.returncode == 7, result.stderr
    seen = record(fake_agents)
    assert seen["env"]["ANTHROPIC_BASE_URL"] == gateway.url  # type: ignore[index]
    assert seen["answer"]["content"][0]["text"] == "served by the running one"  # type: ignore[index]
    assert "session" not in result.stderr


def test_a_running_gateway_with_other_settings_is_not_used(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway, fake_agents: dict[str, str]
) -> None:
    """The running gateway serves another model; the flags given must not be dropped."""
    gateway = start_gateway("http://127.0.0.1:9", "--mlx-model", "other/model")
    scripted_backend.queue(Completion(text="served by the private one"))
    result = run_gateway_command(
        [
            *("--port", str(gateway.port), "--mlx-url", scripted_backend.url),
            *("--mlx-model", "asked/model", "code"),
        ],
        fake_agents,
    )
    assert result.returncode == 7, result.stderr
    assert f"the gateway on {gateway.url} serves" in result.stderr
    assert "starting a private one" in result.stderr
    seen = record(fake_agents)
    assert seen["env"]["ANTHROPIC_BASE_URL"] != gateway.url  # type: ignore[index]
    assert seen["health"]["model"] == "asked/model"  # type: ignore[index]
    assert scripted_backend.last_json()["model"] == "asked/model"


@pytest.mark.parametrize("name", ["code", "codex"])
def test_help_is_ours_and_starts_nothing(name: str, fake_agents: dict[str, str]) -> None:
    result = run_gateway_command(["--port", str(free_port()), name, "--help"], fake_agents)
    assert result.returncode == 0
    assert f"usage: mlx-gateway [gateway flags] {name}" in result.stdout
    assert not Path(fake_agents["FAKE_AGENT_RECORD"]).exists()
    assert not (Path(fake_agents["XDG_STATE_HOME"]) / "mlx-gateway").exists()


@pytest.mark.parametrize(
    ("name", "package"), [("code", "@anthropic-ai/claude-code"), ("codex", "@openai/codex")]
)
def test_a_missing_agent_says_how_to_install(name: str, package: str, tmp_path: Path) -> None:
    result = run_gateway_command([name], {"PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert result.returncode == 127
    assert f"npm install -g {package}" in result.stderr


def test_codex_is_wired_with_overrides_and_the_window(
    scripted_backend: ScriptedBackend, fake_agents: dict[str, str]
) -> None:
    scripted_backend.queue(Completion(text="ok"))
    result = run_gateway_command(
        [
            *("--port", str(free_port()), "--mlx-url", scripted_backend.url),
            *("--mlx-model", "qwen3:8b", "--context-window", "40960"),
            *("codex", "exec", "write a file"),
        ],
        fake_agents,
    )
    assert result.returncode == 7, result.stderr
    seen = record(fake_agents)
    args = seen["args"]
    assert isinstance(args, list)
    assert args[-2:] == ["exec", "write a file"]
    overrides = dict(a.split("=", 1) for a in args[1:-2:2])
    assert all(flag == "-c" for flag in args[:-2:2])
    assert overrides["model_provider"] == '"mlx_gateway"'
    assert overrides["model"] == '"qwen3:8b"'
    assert overrides["model_context_window"] == "40960"
    assert overrides["model_providers.mlx_gateway.wire_api"] == '"responses"'
    assert overrides["features.plugins"] == "false"
    assert overrides["analytics.enabled"] == "false"
    assert overrides["check_for_update_on_startup"] == "false"
    assert overrides["otel.exporter"] == '"none"'
    catalog = json.loads(Path(json.loads(overrides["model_catalog_json"])).read_text())
    assert catalog["models"][0]["slug"] == "qwen3:8b"
    assert catalog["models"][0]["context_window"] == 40960
    # The user's own Codex configuration is left alone.
    assert not (Path(fake_agents["HOME"]) / ".codex").exists()
    assert seen["health"]["model"] == "qwen3:8b"  # type: ignore[index]


def test_the_real_codex_runs_a_turn_through_the_launcher(
    scripted_backend: ScriptedBackend, tmp_path: Path
) -> None:
    """The installed Codex takes every override (`--strict-config` fails on a key it does not
    know), reports its version, and does one turn through a private gateway, offline: the
    backend sees the model and the full tool set the catalog gives it (`apply_patch`)."""
    executable = ensure_codex()
    home = tmp_path / "home"
    work = home / "work"
    work.mkdir(parents=True)
    env = {
        "PATH": f"{executable.parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        "TMPDIR": str(home),  # Codex makes no helper executables under the system's /tmp
    }
    base = [*("--port", str(free_port()), "--mlx-url", scripted_backend.url)]
    base += ["--mlx-model", "local/coder", "--context-window", "32768", "codex"]
    version = run_gateway_command([*base, "--version"], env)
    assert version.returncode == 0, version.stderr
    assert version.stdout.split()[-1] == CODEX_VERSION
    scripted_backend.queue(text_stream(["Hello from ", "the launcher."]))
    turn = run_gateway_command(
        [
            *base,
            *("--strict-config", "exec", "--json", "--skip-git-repo-check", "--ephemeral"),
            *("--cd", str(work), "Say hello."),
        ],
        env,
        timeout=150,
    )
    assert turn.returncode == 0, turn.stdout + turn.stderr
    assert '"text":"Hello from the launcher."' in turn.stdout.replace(": ", ":")
    [chat] = [request.json() for request in scripted_backend.chat_requests]
    assert chat["model"] == "local/coder"
    assert "apply_patch" in [tool["function"]["name"] for tool in chat["tools"]]
    assert not (home / ".codex" / "config.toml").exists()
