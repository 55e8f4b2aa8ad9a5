"""`mlx-gateway code`: starts or reuses a gateway and runs `claude` with the right environment.
A stand-in `claude` on PATH records what it was given and talks to the gateway for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import StartGateway
from tests.support.ports import free_port
from tests.support.scripted_backend import Completion, ScriptedBackend

FAKE_CLAUDE = """#!{python}
import json, os, sys, urllib.request
body = json.dumps({{"model": "claude-haiku-4-5", "max_tokens": 5,
                   "messages": [{{"role": "user", "content": "hi"}}]}}).encode()
request = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages", data=body,
                                 headers={{"content-type": "application/json"}})
answer = json.loads(urllib.request.urlopen(request, timeout=10).read())
record = {{"args": sys.argv[1:], "env": dict(os.environ), "answer": answer}}
open(os.environ["FAKE_CLAUDE_RECORD"], "w").write(json.dumps(record))
sys.exit(7)
"""


@pytest.fixture
def fake_claude(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "claude"
    script.write_text(FAKE_CLAUDE.format(python=sys.executable))
    script.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_CLAUDE_RECORD": str(tmp_path / "record.json"),
    }


def run_code(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "MLX_GATEWAY_"))
    }
    command = [sys.executable, "-m", "mlx_gateway", *args]
    return subprocess.run(
        command, env={**full_env, **env}, capture_output=True, text=True, timeout=60, check=False
    )


def test_starts_a_gateway_and_runs_claude(
    scripted_backend: ScriptedBackend, fake_claude: dict[str, str], tmp_path: Path
) -> None:
    scripted_backend.queue(Completion(text="from the local model"))
    port = free_port()
    result = run_code(
        [
            "--port",
            str(port),
            "--mlx-url",
            scripted_backend.url,
            "--mlx-model",
            "local/big",
            "--model-map",
            "haiku=local/small",
            "code",
            "-p",
            "do things",
            "--output-format",
            "json",
        ],
        fake_claude,
    )
    assert result.returncode == 7, result.stderr
    record = json.loads(Path(fake_claude["FAKE_CLAUDE_RECORD"]).read_text())
    assert record["args"] == ["-p", "do things", "--output-format", "json"]
    env = record["env"]
    assert env["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"
    assert env["ANTHROPIC_API_KEY"]
    assert env["ANTHROPIC_MODEL"] == "local/big"
    assert env["ANTHROPIC_DEFAULT_OPUS_MODEL"] == "local/big"
    assert env["ANTHROPIC_DEFAULT_SONNET_MODEL"] == "local/big"
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "local/small"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["CLAUDE_CODE_ATTRIBUTION_HEADER"] == "0"
    assert record["answer"]["content"][0]["text"] == "from the local model"
    assert scripted_backend.last_json()["model"] == "local/small"


def test_reuses_a_running_gateway(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway, fake_claude: dict[str, str]
) -> None:
    gateway = start_gateway(scripted_backend.url, "--mlx-model", "already/running")
    scripted_backend.queue(Completion(text="served by the running one"))
    result = run_code(
        ["--port", str(gateway.port), "--mlx-url", "http://127.0.0.1:9", "code"], fake_claude
    )
    assert result.returncode == 7, result.stderr
    record = json.loads(Path(fake_claude["FAKE_CLAUDE_RECORD"]).read_text())
    assert record["answer"]["content"][0]["text"] == "served by the running one"
    assert scripted_backend.last_json()["model"] == "already/running"


def test_missing_claude_says_how_to_install(tmp_path: Path) -> None:
    result = run_code(["code"], {"PATH": str(tmp_path)})
    assert result.returncode == 127
    assert "npm install -g @anthropic-ai/claude-code" in result.stderr
