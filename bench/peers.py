"""Peer gateways measured side by side with ours (`--peer NAME`).

LiteLLM's proxy is the usual alternative: it also answers Anthropic `/v1/messages` and
translates to an OpenAI-compatible backend. It lives in its own virtualenv under the cache dir
(never in the project's environment: its dependency pins would fight ours), installed on first
use, pinned to one version so runs stay comparable. Like the gateway it runs as one process on
the gateway's core.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from bench import payloads
from bench.services import Service, free_port, running

# The newest release whose `proxy` extra resolves from PyPI alone (later ones need a package
# that is not published there).
LITELLM_SPEC = "litellm[proxy]==1.108.7"
CACHE_ENV = "MLX_GATEWAY_BENCH_CACHE"


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "mlx-gateway-bench"
    return Path(os.environ.get(CACHE_ENV, default))


def _litellm_venv() -> Path:
    venv = cache_dir() / "litellm-venv"
    marker = venv / f".installed-{LITELLM_SPEC}"
    if marker.exists():
        return venv
    print(f"  .. installing {LITELLM_SPEC} into {venv} (once)", file=sys.stderr, flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", LITELLM_SPEC],
        check=True,
    )
    marker.touch()
    return venv


def _litellm_config(directory: Path, backend_url: str) -> Path:
    """Both model names the benchmark sends route to the fake backend as an OpenAI server."""
    params = (
        f"      model: openai/{payloads.OPENAI_MODEL}\n"
        f"      api_base: {backend_url}/v1\n"
        "      api_key: bench\n"
    )
    models = "".join(
        f"  - model_name: {name}\n    litellm_params:\n{params}"
        for name in (payloads.ANTHROPIC_MODEL, payloads.OPENAI_MODEL)
    )
    path = directory / "litellm.yaml"
    # No cooldowns: one failed request must not turn every later one into a 429.
    settings = (
        "litellm_settings:\n  drop_params: true\nrouter_settings:\n  disable_cooldowns: true\n"
    )
    path.write_text(f"model_list:\n{models}{settings}")
    return path


def litellm(log_dir: Path, backend_url: str, cores: str | None) -> AbstractContextManager[Service]:
    venv = _litellm_venv()
    port = free_port()
    command = [
        str(venv / "bin" / "litellm"),
        "--config",
        str(_litellm_config(log_dir, backend_url)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = {
        # No network here: use the bundled cost map instead of fetching it at start-up.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        # Otherwise /v1/messages for an OpenAI-type model goes to the backend's /v1/responses,
        # which mlx_lm.server, llama.cpp and Ollama do not all have; compare like with like.
        "LITELLM_USE_CHAT_COMPLETIONS_URL_FOR_ANTHROPIC_MESSAGES": "true",
        "LITELLM_TELEMETRY": "False",
        # The gateway checks no key either, and this proxy listens on 127.0.0.1 for one run only.
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    return running(
        "litellm",
        command,
        url=f"http://127.0.0.1:{port}",
        ready_path="/health/liveliness",
        log_dir=log_dir,
        cores=cores,
        env=env,
        ready_timeout=120,
    )


PEERS: dict[str, Callable[[Path, str, str | None], AbstractContextManager[Service]]] = {
    "litellm": litellm,
}
