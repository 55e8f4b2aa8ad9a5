"""Build llama.cpp's `llama-server` from source, once per machine, for the tests.

No prebuilt llama.cpp reaches this machine, but PyPI carries the `llama-cpp-python` sdist, which
vendors a whole llama.cpp tree (`vendor/llama.cpp`, the server included). `ensure_llama_server()`
downloads the pinned sdist with pip, unpacks only that tree, and builds only the `llama-server`
target with CMake, into the test cache (`$MLX_GATEWAY_TEST_CACHE`, default
`~/.cache/mlx-gateway-tests/`) under a folder named by the pinned version.

The build runs in a temporary sibling folder that is renamed into place only after the built
binary answers `--version`, so an interrupted build never leaves a half-built cache behind; a
file lock keeps parallel test processes from building twice. Only the binary and the build log
are kept (the source and object tree are about a gigabyte). A failed build raises with the tail
of its log: a missing compiler is a failure, never a skip.

The build is a plain CPU build (static, Release, `-march=native`, since the cache never leaves
the machine) without anything that would reach the network: no web UI download
(`LLAMA_USE_PREBUILT_UI`), no npm build of it (`LLAMA_BUILD_UI`), no OpenSSL (HTTPS model
downloads), no tests, examples or the unified `llama` binary. About 10 minutes on two idle
cores with Ninja.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from tests.support.cached_install import ensure_cached
from tests.support.tiny_model import default_cache_root

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
BUILD_TIMEOUT = 2400.0
JOBS = 2
LOG_TAIL_LINES = 60

CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DGGML_CCACHE=OFF",
)


class LlamaServerBuildError(RuntimeError):
    """The download or the build failed; the message carries the tail of the log."""


def install_dir() -> Path:
    return default_cache_root().expanduser() / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}"


def _executable(prefix: Path) -> Path:
    return prefix / "bin" / "llama-server"


def cached_llama_server() -> Path | None:
    """The cached `llama-server` if this pinned version is built and runs, else None."""
    executable = _executable(install_dir())
    return executable if reports_version(executable) else None


def ensure_llama_server(timeout: float = BUILD_TIMEOUT) -> Path:
    """Build the pinned `llama-server` unless already cached; return the executable."""
    return ensure_cached(
        install_dir(), _executable, reports_version, lambda staging: _build_into(staging, timeout)
    )


def reports_version(executable: Path) -> bool:
    """llama-server prints `version: N (commit)` (on stderr) and exits 0."""
    try:
        completed = subprocess.run(
            [str(executable), "--version"], capture_output=True, text=True, timeout=30,
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return completed.returncode == 0 and "version:" in completed.stdout + completed.stderr


def _build_into(staging: Path, timeout: float) -> None:
    """Download, unpack and build in the staging folder, keep only the binary, verify."""
    deadline = time.monotonic() + timeout
    source = _unpack(_download(staging, deadline), staging / "src")
    binary = _build(source, staging / "build", staging / "build.log", deadline)
    _keep_only(staging, binary)
    if not reports_version(_executable(staging)):
        raise LlamaServerBuildError(f"{binary} was built but `--version` fails")


def _download(staging: Path, deadline: float) -> Path:
    """The sdist itself (`--no-binary`), without its dependencies."""
    spec = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
    target = staging / "sdist"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    _run([*command, "--dest", str(target), spec], staging / "download.log", deadline)
    archives = sorted(target.glob("*.tar.gz"))
    if len(archives) != 1:
        raise LlamaServerBuildError(f"pip download {spec} left {archives}, not one sdist")
    return archives[0]


def _unpack(archive: Path, target: Path) -> Path:
    """Extract only `vendor/llama.cpp`, less its `.git` link to a repository the sdist lacks."""
    with tarfile.open(archive) as tar:
        members = [member for member in tar.getmembers() if _is_llama_cpp_source(member.name)]
        tar.extractall(target, members=members, filter="data")
    roots = list(target.glob("*/vendor/llama.cpp"))
    if len(roots) != 1 or not (roots[0] / "tools" / "server").is_dir():
        raise LlamaServerBuildError(f"{archive.name} holds no vendor/llama.cpp/tools/server")
    return roots[0]


def _is_llama_cpp_source(name: str) -> bool:
    parts = name.split("/")
    return parts[1:3] == ["vendor", "llama.cpp"] and ".git" not in parts[3:4]


def _build(source: Path, build: Path, log: Path, deadline: float) -> Path:
    # Ninja where there is one: measured on two cores, it built in 10 minutes what make had not
    # finished in 40 on the same (busier) machine.
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = ["cmake", "-S", str(source), "-B", str(build), *generator, *CMAKE_OPTIONS]
    _run(configure, log, deadline)
    target = ["--target", "llama-server", "--parallel", str(JOBS)]
    _run(["cmake", "--build", str(build), *target], log, deadline)
    return build / "bin" / "llama-server"


def _keep_only(staging: Path, binary: Path) -> None:
    """Move the binary to `bin/`, drop the source, objects and sdist; keep the logs."""
    (staging / "bin").mkdir()
    binary.rename(_executable(staging))
    for folder in ("src", "build", "sdist"):
        shutil.rmtree(staging / folder, ignore_errors=True)


def _run(command: Sequence[str], log: Path, deadline: float) -> None:
    """Run one step with its output appended to `log`; raise with the log's tail on failure."""
    remaining = deadline - time.monotonic()
    with log.open("ab") as handle:
        handle.write(f"$ {' '.join(command)}\n".encode())
        handle.flush()
        try:
            completed = subprocess.run(
                list(command), stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                timeout=max(remaining, 1.0), check=False, env=_build_environment(),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            _fail(f"{command[0]} {command[1]} ran out of the build's time", log)
        except OSError as error:
            _fail(f"cannot run {command[0]}: {error}", log)
    if completed.returncode != 0:
        _fail(f"`{' '.join(command)}` exited with {completed.returncode}", log)


def _build_environment() -> dict[str, str]:
    """The caller's environment, but never a UI version that would make CMake fetch assets."""
    return {name: value for name, value in os.environ.items() if "UI_VERSION" not in name}


def _fail(reason: str, log: Path) -> NoReturn:
    lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    raise LlamaServerBuildError(f"{reason}\n--- last lines of {log.name} ---\n" + "\n".join(lines))
