"""Install a pinned Codex CLI and run `codex exec` headless against a local Responses endpoint.

`ensure_codex()` installs `@openai/codex` once per machine into the test cache
(`$MLX_GATEWAY_TEST_CACHE`, default `~/.cache/mlx-gateway-tests/`), the way
`tests.support.claude_code` installs Claude Code: npm installs into a temporary sibling folder that
is renamed into place only after the installed `codex --version` reports the pinned version, under
a file lock. The package's native binary comes from the registry as an optional dependency
(`@openai/codex-linux-x64` is an alias of `@openai/codex@<version>-linux-x64`) with no install
script and no download of its own, so an npm that reaches the registry is all the install needs.

`run_codex()` runs `codex exec --json` with a fresh HOME, CODEX_HOME and TMPDIR and an environment
built from scratch. Everything Codex needs is passed as `-c key=value` overrides, checked by
`--strict-config` (a key this Codex does not know fails the run instead of being ignored):

- `model_providers.<id>`: the endpoint under test, `wire_api = "responses"`, the key read from
  `env_key` (a dummy, so the request carries `Authorization: Bearer ...`), no OpenAI login.
- `model_catalog_json`: a one-model catalog that describes the model, so Codex gives it the full
  tool set, `apply_patch` as a freeform (`custom`) tool included; without it Codex warns about
  fallback metadata and sends no `apply_patch`. It also sets the instructions and context window.
- the offline switches: with `features.plugins` on, Codex clones `github.com/openai/plugins.git`
  and resolves `api.github.com` and `chatgpt.com`; with `analytics.enabled` on it resolves
  `ab.chatgpt.com`. The update check and the OpenTelemetry exporters are off as well.
- `--dangerously-bypass-approvals-and-sandbox`: no approval prompts and no sandbox, so the shell
  tool and `apply_patch` act in the working folder; the test's temporary folder is the sandbox.

TMPDIR lies inside HOME because Codex refuses to create its helper executables (the `apply_patch`
alias on the shell's PATH) in a CODEX_HOME under the system's temporary folder. The process runs
in its own session; when it exits or the timeout expires, its process group is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.support.cached_install import ensure_cached
from tests.support.claude_code import cache_root

CODEX_PACKAGE = "@openai/codex"
CODEX_VERSION = "0.171.0"
DEFAULT_MODEL = "local-model"
DEFAULT_CONTEXT_WINDOW = 32768
PROVIDER_ID = "mlx_gateway_test"
API_KEY_VARIABLE = "MLX_GATEWAY_TEST_API_KEY"
DUMMY_API_KEY = "sk-mlx-gateway-tests-dummy-key"
INSTALL_TIMEOUT = 600.0
INSTRUCTIONS = (
    "You are a coding agent working in the user's workspace. Use the shell tool to run commands "
    "and apply_patch to create or edit files. Answer briefly."
)

_NPM_FLAGS = (
    "--no-audit", "--no-fund", "--no-save", "--no-package-lock", "--no-update-notifier",
    "--include=optional", "--loglevel=warn",
)
OFFLINE_CONFIG: Mapping[str, Any] = {
    "features.plugins": False,
    "features.apps": False,
    "analytics.enabled": False,
    "check_for_update_on_startup": False,
    "otel.exporter": "none",
    "otel.trace_exporter": "none",
    "otel.metrics_exporter": "none",
    "history.persistence": "none",
}
_INHERITED = ("LANG", "LC_ALL", "USER", "LOGNAME")


@dataclass(frozen=True)
class CodexResult:
    """What one `codex exec --json` run produced; `events` are the parsed JSONL lines."""

    returncode: int | None
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)

    def items(self, kind: str) -> list[dict[str, Any]]:
        """The completed items of one type (`agent_message`, `command_execution`, ...)."""
        done = (e["item"] for e in self.events if e.get("type") == "item.completed")
        return [item for item in done if item.get("type") == kind]

    @property
    def final_message(self) -> str | None:
        """The text of the last agent message, which `codex exec` prints as its answer."""
        messages = self.items("agent_message")
        return messages[-1].get("text") if messages else None

    @property
    def ok(self) -> bool:
        """True when Codex exited 0 and its turn completed."""
        kinds = [event.get("type") for event in self.events]
        return self.returncode == 0 and "turn.completed" in kinds and "turn.failed" not in kinds

    def describe(self) -> str:
        """A multi-line summary for assertion messages."""
        return (
            f"codex exit={self.returncode} timed_out={self.timed_out} "
            f"duration={self.duration:.1f}s\n--- stdout ---\n{self.stdout[-4000:]}"
            f"\n--- stderr ---\n{self.stderr[-4000:]}"
        )


# --- installing ------------------------------------------------------------------------------


def install_dir() -> Path:
    return cache_root() / f"codex-{CODEX_VERSION}"


def _executable(prefix: Path) -> Path:
    return prefix / "node_modules" / ".bin" / "codex"


def cached_codex() -> Path | None:
    """The cached `codex` executable if the pinned version is installed, else None."""
    executable = _executable(install_dir())
    return executable if _reports_pinned_version(executable) else None


def ensure_codex(timeout: float = INSTALL_TIMEOUT) -> Path:
    """Install the pinned Codex unless already cached; return its `codex` executable."""
    return ensure_cached(
        install_dir(),
        _executable,
        _reports_pinned_version,
        lambda staging: _npm_install(staging, timeout),
    )


def _npm_install(prefix: Path, timeout: float) -> None:
    spec = f"{CODEX_PACKAGE}@{CODEX_VERSION}"
    command = ["npm", "install", "--prefix", str(prefix), *_NPM_FLAGS, spec]
    completed = _run_bounded(command, timeout=timeout, cwd=prefix, env=dict(os.environ))
    if completed.timed_out or completed.returncode != 0:
        raise RuntimeError(f"npm install {spec} failed:\n{completed.describe()}")
    if not _reports_pinned_version(_executable(prefix)):
        raise RuntimeError(
            f"{spec} installed, but `codex --version` does not report it (is the optional "
            f"platform package missing? npm must not omit optional dependencies)"
        )


def _reports_pinned_version(executable: Path) -> bool:
    try:
        completed = _run_bounded([str(executable), "--version"], timeout=30, cwd=executable.parent)
    except OSError:  # not installed
        return False
    return completed.returncode == 0 and completed.stdout.split()[-1:] == [CODEX_VERSION]


# --- running ---------------------------------------------------------------------------------


def model_catalog(
    model: str, context_window: int, instructions: str = INSTRUCTIONS
) -> dict[str, Any]:
    """A `model_catalog_json` document describing one model, with the fields Codex requires.

    `apply_patch_tool_type: freeform` is what makes Codex offer `apply_patch` as a `custom` tool;
    `shell_type` picks the shell tool; `base_instructions` becomes the first developer message.
    """
    entry: dict[str, Any] = {
        "slug": model,
        "display_name": model,
        "description": None,
        "supported_reasoning_levels": [],
        "shell_type": "shell_command",
        "visibility": "list",
        "supported_in_api": True,
        "priority": 1,
        "base_instructions": instructions,
        "supports_reasoning_summaries": False,
        "support_verbosity": False,
        "apply_patch_tool_type": "freeform",
        "truncation_policy": {"mode": "bytes", "limit": 10000},
        "supports_parallel_tool_calls": True,
        "context_window": context_window,
        "experimental_supported_tools": [],
    }
    return {"models": [entry]}


def toml_value(value: Any) -> str:
    """A value as `-c key=value` parses it (TOML); JSON strings and numbers are valid TOML, a
    dict is written as an inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        fields = ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items())
        return "{" + fields + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(value)


def codex_config(
    base_url: str, catalog_path: Path, model: str, context_window: int
) -> dict[str, Any]:
    """Every `-c` override of a run: the provider, the model, the catalog, offline switches."""
    provider = f"model_providers.{PROVIDER_ID}"
    return {
        "model_provider": PROVIDER_ID,
        "model": model,
        f"{provider}.name": "mlx-gateway under test",
        f"{provider}.base_url": base_url.rstrip("/") + "/v1",
        f"{provider}.wire_api": "responses",
        f"{provider}.env_key": API_KEY_VARIABLE,
        f"{provider}.requires_openai_auth": False,
        f"{provider}.supports_websockets": False,
        "model_catalog_json": str(catalog_path),
        "model_context_window": context_window,
        **OFFLINE_CONFIG,
    }


def codex_command(
    executable: Path,
    prompt: str,
    workdir: Path,
    config: Mapping[str, Any],
    extra_args: Sequence[str],
) -> list[str]:
    command = [
        str(executable), "exec", "--json", "--strict-config", "--ephemeral",
        "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
        "--color", "never", "--cd", str(workdir),
    ]
    for key, value in config.items():
        command += ["-c", f"{key}={toml_value(value)}"]
    return [*command, *extra_args, prompt]


def codex_environment(home: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a run: fresh HOME, CODEX_HOME and TMPDIR, the dummy key."""
    inherited = {name: os.environ[name] for name in _INHERITED if name in os.environ}
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        **inherited,
        "HOME": str(home),
        "CODEX_HOME": str(home / ".codex"),
        "TMPDIR": str(home / "tmp"),
        "TERM": "dumb",
        "NO_COLOR": "1",
        API_KEY_VARIABLE: DUMMY_API_KEY,
        **(env or {}),
    }


def run_codex(
    base_url: str,
    prompt: str,
    workdir: Path,
    *,
    home: Path,
    model: str = DEFAULT_MODEL,
    context_window: int = DEFAULT_CONTEXT_WINDOW,
    config: Mapping[str, Any] | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    without: Sequence[str] = (),
) -> CodexResult:
    """Run `codex exec` once against `base_url` (the server root, without `/v1`).

    `config` entries are added to (or replace) the `-c` overrides; the keys in `without` are
    left out (`model_catalog_json`, to make Codex ask the server for its models). Codex reads
    AGENTS.md from `workdir` and the folders above it, so `workdir` belongs in a temporary
    folder.
    """
    for folder in (home / ".codex", home / "tmp"):
        folder.mkdir(parents=True, exist_ok=True)
    catalog_path = home / "model_catalog.json"
    catalog_path.write_text(json.dumps(model_catalog(model, context_window)))
    overrides = {**codex_config(base_url, catalog_path, model, context_window), **(config or {})}
    overrides = {key: value for key, value in overrides.items() if key not in without}
    command = codex_command(ensure_codex(), prompt, workdir, overrides, extra_args)
    environment = codex_environment(home, env)
    completed = _run_bounded(command, timeout=timeout, cwd=workdir, env=environment)
    return _with_events(completed)


def _with_events(completed: CodexResult) -> CodexResult:
    events = []
    for line in completed.stdout.splitlines():
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict):
                events.append(parsed)
    return CodexResult(
        completed.returncode, completed.stdout, completed.stderr, completed.duration,
        completed.timed_out, events,
    )


def _run_bounded(
    command: Sequence[str], *, timeout: float, cwd: Path, env: Mapping[str, str] | None = None,
) -> CodexResult:
    """Run a command in its own process group, bounded by `timeout` seconds.

    Output goes to temporary files rather than pipes, so a grandchild that outlives the group
    and still holds the descriptors cannot make reading the output block.
    """
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            list(command), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True,
        )
        timed_out = _wait_or_kill(process, timeout)
        return CodexResult(
            returncode=None if timed_out else process.returncode,
            stdout=_read(out),
            stderr=_read(err),
            duration=time.monotonic() - started,
            timed_out=timed_out,
        )


def _wait_or_kill(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for the process, then kill what is left of its group. True if `timeout` expired."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return True
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return False


def _read(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode(errors="replace")
