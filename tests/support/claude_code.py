"""Install a pinned Claude Code and run it headless against a local Anthropic-compatible URL.

`ensure_claude_code()` installs `@anthropic-ai/claude-code` once per machine into a cache folder
outside the repository (`$MLX_GATEWAY_TEST_CACHE`, default `~/.cache/mlx-gateway-tests/`): npm
installs into a temporary sibling folder which is renamed into place only after the installed
`claude --version` answers with the pinned version, so an interrupted install never leaves a
half-populated cache behind, and a file lock keeps parallel test processes from installing twice.

`run_claude()` runs `claude -p <prompt> --output-format json` with a fresh HOME (which also holds
Claude Code's temporary folder, `CLAUDE_CODE_TMPDIR`) and an environment built from scratch
(nothing inherited but PATH, locale and TMPDIR), so a developer's own Claude Code login, settings,
proxies or `ANTHROPIC_*` variables never leak into a test. The variables that matter:

- `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1` is the one that keeps it offline: without it Claude
  Code resolves `api.anthropic.com` (event logging and other side traffic) and sends
  `HEAD /api/hello` to the base URL before the first request.
- `DISABLE_AUTOUPDATER`, `DISABLE_TELEMETRY`, `DISABLE_ERROR_REPORTING` say the same thing again
  for each subsystem, in case a later build stops grouping them under the first switch.
- `CLAUDE_CODE_ATTRIBUTION_HEADER=0` drops the `x-anthropic-billing-header: cc_version=...` text
  block that otherwise leads `system`; pass `env={"CLAUDE_CODE_ATTRIBUTION_HEADER": "1"}` to get
  the block back, e.g. to check that the gateway strips it.
- the `ANTHROPIC_*MODEL` variables pin every model role (main, opus, sonnet, haiku, subagents) to
  one name, so no request asks for a model the test did not choose.

stdin is `/dev/null`: with `-p`, Claude Code reads a piped stdin to the end before starting. The
process runs in its own session; when it exits or the timeout expires, whatever is left of its
process group (shells its Bash tool started included) is killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.support.cached_install import ensure_cached

CLAUDE_CODE_PACKAGE = "@anthropic-ai/claude-code"
CLAUDE_CODE_VERSION = "2.1.331"
DEFAULT_MODEL = "local-model"
DUMMY_API_KEY = "sk-ant-api03-mlx-gateway-tests-dummy-key"
INSTALL_TIMEOUT = 600.0

_NPM_FLAGS = (
    "--no-audit", "--no-fund", "--no-save", "--no-package-lock", "--no-update-notifier",
    "--ignore-scripts=false", "--include=optional", "--loglevel=warn",
)
_OFFLINE_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
}
_MODEL_VARIABLES = (
    "ANTHROPIC_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "CLAUDE_CODE_SUBAGENT_MODEL",
)
_INHERITED = ("PATH", "LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME")


@dataclass(frozen=True)
class ClaudeResult:
    """What one headless run produced; `result` is the parsed `--output-format json` object."""

    returncode: int | None
    stdout: str
    stderr: str
    result: dict[str, Any] | None
    duration: float
    timed_out: bool = False

    @property
    def text(self) -> str | None:
        """The final assistant text, if the run produced a result object."""
        value = (self.result or {}).get("result")
        return value if isinstance(value, str) else None

    @property
    def ok(self) -> bool:
        """True when the process exited 0 and reported success."""
        return (
            self.returncode == 0 and self.result is not None and not self.result.get("is_error")
        )

    def describe(self) -> str:
        """A multi-line summary for assertion messages."""
        return (
            f"claude exit={self.returncode} timed_out={self.timed_out} "
            f"duration={self.duration:.1f}s\n--- stdout ---\n{self.stdout[-4000:]}"
            f"\n--- stderr ---\n{self.stderr[-4000:]}"
        )


def cache_root() -> Path:
    """The per-machine folder that holds test downloads."""
    configured = os.environ.get("MLX_GATEWAY_TEST_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "mlx-gateway-tests"


def install_dir() -> Path:
    return cache_root() / f"claude-code-{CLAUDE_CODE_VERSION}"


def _executable(prefix: Path) -> Path:
    return prefix / "node_modules" / ".bin" / "claude"


def cached_claude_code() -> Path | None:
    """The cached `claude` executable if the pinned version is installed, else None."""
    executable = _executable(install_dir())
    return executable if _reports_pinned_version(executable) else None


def ensure_claude_code(timeout: float = INSTALL_TIMEOUT) -> Path:
    """Install the pinned Claude Code unless already cached; return its `claude` executable."""
    return ensure_cached(
        install_dir(),
        _executable,
        _reports_pinned_version,
        lambda staging: _npm_install(staging, timeout),
    )


def _npm_install(prefix: Path, timeout: float) -> None:
    spec = f"{CLAUDE_CODE_PACKAGE}@{CLAUDE_CODE_VERSION}"
    command = ["npm", "install", "--prefix", str(prefix), *_NPM_FLAGS, spec]
    completed = _run_bounded(command, timeout=timeout, cwd=prefix, env=dict(os.environ))
    if completed.timed_out or completed.returncode != 0:
        raise RuntimeError(f"npm install {spec} failed:\n{completed.describe()}")
    if not _reports_pinned_version(_executable(prefix)):
        _run_postinstall(prefix)
    if not _reports_pinned_version(_executable(prefix)):
        raise RuntimeError(f"{spec} installed, but `claude --version` does not report it")


def _run_postinstall(prefix: Path) -> None:
    """Put the native binary in place when npm skipped the package's install script.

    The published `bin/claude.exe` is a shell stub until the postinstall script copies the
    platform binary over it; an npm configured with `ignore-scripts` leaves the stub behind.
    """
    script = prefix / "node_modules" / CLAUDE_CODE_PACKAGE / "install.cjs"
    _run_bounded(["node", str(script)], timeout=60, cwd=script.parent, env=dict(os.environ))


def _reports_pinned_version(executable: Path) -> bool:
    try:
        completed = _run_bounded([str(executable), "--version"], timeout=30, cwd=executable.parent)
    except OSError:  # missing, or still the placeholder stub, which has no `#!` line
        return False
    return completed.returncode == 0 and completed.stdout.split()[:1] == [CLAUDE_CODE_VERSION]


def claude_environment(
    base_url: str, home: Path, model: str = DEFAULT_MODEL, env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment of a headless run: offline, fresh HOME, every model role pinned."""
    inherited = {name: os.environ[name] for name in _INHERITED if name in os.environ}
    return {
        "PATH": os.defpath,
        "LANG": "C.UTF-8",
        **inherited,
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "CLAUDE_CODE_TMPDIR": str(home / "tmp"),
        "TERM": "dumb",
        "NO_COLOR": "1",
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": DUMMY_API_KEY,
        **dict.fromkeys(_MODEL_VARIABLES, model),
        **_OFFLINE_ENV,
        **(env or {}),
    }


def claude_command(
    executable: Path, prompt: str, allowed_tools: Sequence[str] | None, extra_args: Sequence[str],
) -> list[str]:
    command = [str(executable), "-p", prompt, "--output-format", "json"]
    if allowed_tools is not None:
        command += ["--allowedTools", ",".join(allowed_tools)]
    return [*command, *extra_args]


def run_claude(
    prompt: str,
    base_url: str,
    *,
    cwd: Path,
    home: Path,
    allowed_tools: list[str] | None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 120,
    model: str = DEFAULT_MODEL,
) -> ClaudeResult:
    """Run `claude -p` once against `base_url`; never blocks longer than `timeout` seconds.

    `allowed_tools=None` passes no `--allowedTools`: every tool call that needs permission (a
    Bash command that writes a file, for one) is then answered with an `is_error` tool_result
    and listed in `result["permission_denials"]`. `env` entries override the defaults. Claude
    Code reads CLAUDE.md and AGENTS.md from `cwd` and from every folder above it, so `cwd`
    belongs in a temporary folder, never inside a checkout.
    """
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    command = claude_command(ensure_claude_code(), prompt, allowed_tools, extra_args)
    environment = claude_environment(base_url, home, model, env)
    completed = _run_bounded(command, timeout=timeout, cwd=cwd, env=environment)
    return _with_parsed_result(completed)


def _with_parsed_result(completed: ClaudeResult) -> ClaudeResult:
    try:
        parsed = json.loads(completed.stdout)
    except ValueError:
        return completed
    return dataclasses.replace(completed, result=parsed) if isinstance(parsed, dict) else completed


def _run_bounded(
    command: Sequence[str], *, timeout: float, cwd: Path, env: Mapping[str, str] | None = None,
) -> ClaudeResult:
    """Run a command in its own process group, bounded by `timeout` seconds (see `_wait_or_kill`).

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
        return ClaudeResult(
            returncode=None if timed_out else process.returncode,
            stdout=_read(out),
            stderr=_read(err),
            result=None,
            duration=time.monotonic() - started,
            timed_out=timed_out,
        )


def _wait_or_kill(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for the process, then kill what is left of its group. True if `timeout` expired.

    The group is killed on every path (expiry, interruption, normal exit), which also ends
    shells that a Bash tool call left running in the background.
    """
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return True
    finally:
        _kill_group(process)
        process.wait()
    return False


def _read(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode(errors="replace")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
