"""ruff and mypy --strict are part of the suite, so a lint or type error fails CI like a bug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


def test_ruff_is_clean() -> None:
    result = run(sys.executable, "-m", "ruff", "check", "mlx_gateway", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = run(sys.executable, "-m", "mypy", "--strict", "mlx_gateway")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_folder_is_a_regular_package() -> None:
    """setuptools' package discovery skips folders without `__init__.py`, so `pip install .`
    (not editable) would leave such a folder out of the installed gateway."""
    folders = {path.parent for path in (ROOT / "mlx_gateway").rglob("*.py")}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists())
    assert missing == []
