"""Claude Code itself: the pinned release installs from npm and runs on this machine."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support.claude_code import (
    CLAUDE_CODE_VERSION,
    INSTALL_TIMEOUT,
    cached_claude_code,
    ensure_claude_code,
)


@pytest.mark.timeout(INSTALL_TIMEOUT + 60)
def test_pinned_claude_code_installs_and_reports_its_version() -> None:
    if cached_claude_code() is None and shutil.which("npm") is None:
        pytest.skip("Claude Code is not cached and npm is not on PATH")
    claude = ensure_claude_code()
    completed = subprocess.run(
        [str(claude), "--version"],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split()[:1] == [CLAUDE_CODE_VERSION], completed.stdout
