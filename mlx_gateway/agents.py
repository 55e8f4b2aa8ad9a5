"""How each coding agent is wired to a gateway: the environment and arguments that point Claude
Code or Codex at it, keep it off the network, and tell it the model's context window so that it
compacts its conversation before the model runs out of room. Pure: what to run is returned, and
the only file written is Codex's model catalog.

Claude Code (checked against 2.1.x):
- `ANTHROPIC_AUTH_TOKEN` rather than `ANTHROPIC_API_KEY`: with a token Claude Code treats the base
  URL as a gateway, so a first run asks neither whether to use the key nor to reach
  api.anthropic.com (which offline fails with "Unable to connect to Anthropic services"). A user's
  own key is passed on as the token, never both (Claude Code warns about two credentials).
- `CLAUDE_CODE_MAX_CONTEXT_TOKENS` is the window Claude Code assumes for a model it does not know
  (else 1M, and it never compacts in time); it compacts within that window. Its
  `CLAUDE_CODE_AUTO_COMPACT_WINDOW` is raised to at least 100k (with a warning on screen), so it
  is set only for windows that large. `CLAUDE_CODE_MAX_OUTPUT_TOKENS` is its answer limit. All
  come from the window the gateway discovered.
- `CLAUDE_CODE_ATTRIBUTION_HEADER=0`: the attribution line changes on every request and would
  defeat the server's prompt cache.

Codex: everything goes as `-c key=value` overrides, which layer over the user's own
`~/.codex/config.toml` without touching it: a provider for the gateway's Responses endpoint, the
model, its window, a one-model catalog (so Codex offers the model its full tool set,
`apply_patch` included), and the switches that keep Codex on loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_gateway.backends.aliases import ModelRouter
from mlx_gateway.config import Config, state_dir

# Claude Code reads a smaller CLAUDE_CODE_AUTO_COMPACT_WINDOW as this, and says so on screen.
AUTO_COMPACT_MINIMUM = 100_000
CODEX_PROVIDER = "mlx_gateway"
# Where Codex reads the gateway's key from, when the gateway has keys (--api-key).
CODEX_KEY_VARIABLE = "MLX_GATEWAY_SESSION_KEY"
CODEX_OFFLINE: Mapping[str, Any] = {
    "features.plugins": False,
    "features.apps": False,
    "analytics.enabled": False,
    "check_for_update_on_startup": False,
    "otel.exporter": "none",
    "otel.trace_exporter": "none",
    "otel.metrics_exporter": "none",
}
CODEX_INSTRUCTIONS = (
    "You are a coding agent working in the user's workspace. Use the shell tool to run commands "
    "and apply_patch to create or edit files."
)


@dataclass(frozen=True)
class Session:
    """The gateway an agent is wired to, and the model's window when the gateway knows it."""

    base_url: str
    context_window: int | None


Wiring = Callable[
    [Config, Session, Sequence[str], Mapping[str, str]], tuple[list[str], dict[str, str]]
]


@dataclass(frozen=True)
class Agent:
    program: str
    title: str
    install_hint: str
    wiring: str  # said in `--help`
    wire: Wiring  # -> (arguments, environment)


def output_budget(window: int) -> int:
    """The answer limit to give an agent: an eighth of the window, between 1,024 and 32,000
    tokens, so that a long answer still leaves the conversation most of the room."""
    return max(1024, min(32_000, window // 8))


def claude_environment(
    config: Config, session: Session, environ: Mapping[str, str]
) -> dict[str, str]:
    """The variables Claude Code reads; the user's own model names and limits win."""
    router = ModelRouter(config.mlx_model, config.model_map)
    env = dict(environ)
    env["ANTHROPIC_BASE_URL"] = session.base_url
    key = env.pop("ANTHROPIC_API_KEY", None)
    if config.api_key:  # a gateway with keys takes its first as the token Claude Code sends
        env["ANTHROPIC_AUTH_TOKEN"] = config.api_key[0]
    env.setdefault("ANTHROPIC_AUTH_TOKEN", key or "mlx-gateway")
    env.setdefault("ANTHROPIC_MODEL", config.mlx_model)
    for family in ("opus", "sonnet", "haiku"):
        env.setdefault(f"ANTHROPIC_DEFAULT_{family.upper()}_MODEL", router.resolve(family))
    env.setdefault("ANTHROPIC_SMALL_FAST_MODEL", router.resolve("haiku"))
    env.setdefault("CLAUDE_CODE_SUBAGENT_MODEL", config.mlx_model)
    env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
    env["CLAUDE_CODE_ATTRIBUTION_HEADER"] = "0"
    if session.context_window:
        window = session.context_window
        env.setdefault("CLAUDE_CODE_MAX_CONTEXT_TOKENS", str(window))
        env.setdefault("CLAUDE_CODE_MAX_OUTPUT_TOKENS", str(output_budget(window)))
        if window >= AUTO_COMPACT_MINIMUM:
            env.setdefault("CLAUDE_CODE_AUTO_COMPACT_WINDOW", str(window))
    return env


def _wire_claude(
    config: Config, session: Session, args: Sequence[str], environ: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    return list(args), claude_environment(config, session, environ)


# ---- Codex --------------------------------------------------------------------------------------


def codex_catalog(model: str, window: int | None) -> dict[str, Any]:
    """A `model_catalog_json` document for the one local model. `apply_patch_tool_type:
    freeform` makes Codex offer `apply_patch` as a custom tool, as it does for its own models."""
    entry: dict[str, Any] = {
        "slug": model,
        "display_name": model,
        "description": "a local model served through mlx-gateway",
        "supported_reasoning_levels": [],
        "shell_type": "shell_command",
        "visibility": "list",
        "supported_in_api": True,
        "priority": 1,
        "base_instructions": CODEX_INSTRUCTIONS,
        "supports_reasoning_summaries": False,
        "support_verbosity": False,
        "apply_patch_tool_type": "freeform",
        "truncation_policy": {"mode": "bytes", "limit": 10000},
        "supports_parallel_tool_calls": True,
        "experimental_supported_tools": [],
    }
    if window:
        entry["context_window"] = window
    return {"models": [entry]}


def codex_overrides(config: Config, session: Session, catalog: Path) -> dict[str, Any]:
    provider = f"model_providers.{CODEX_PROVIDER}"
    overrides: dict[str, Any] = {
        "model_provider": CODEX_PROVIDER,
        "model": config.mlx_model,
        f"{provider}.name": "mlx-gateway",
        f"{provider}.base_url": session.base_url + "/v1",
        f"{provider}.wire_api": "responses",
        f"{provider}.requires_openai_auth": False,
        f"{provider}.supports_websockets": False,
        "model_catalog_json": str(catalog),
        **CODEX_OFFLINE,
    }
    if session.context_window:
        overrides["model_context_window"] = session.context_window
    if config.api_key:  # Codex sends the variable's value as a Bearer token
        overrides[f"{provider}.env_key"] = CODEX_KEY_VARIABLE
    return overrides


def toml_value(value: Any) -> str:
    """A value as `-c key=value` reads it (TOML); JSON strings and numbers are valid TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def write_catalog(document: Mapping[str, Any], folder: Path) -> Path:
    """Named by its content, so concurrent sessions never write over each other's file."""
    text = json.dumps(document, indent=2)
    path = folder / f"codex-models-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(text)
        staging.replace(path)
    return path


def _wire_codex(
    config: Config, session: Session, args: Sequence[str], environ: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    catalog = write_catalog(
        codex_catalog(config.mlx_model, session.context_window), state_dir(environ)
    )
    argv: list[str] = []
    for key, value in codex_overrides(config, session, catalog).items():
        argv += ["-c", f"{key}={toml_value(value)}"]
    env = dict(environ)
    if config.api_key:
        env[CODEX_KEY_VARIABLE] = config.api_key[0]
    return [*argv, *args], env


AGENTS: Mapping[str, Agent] = {
    "code": Agent(
        program="claude",
        title="Claude Code",
        install_hint=(
            "Claude Code is not installed (no `claude` on PATH). Install it with:\n"
            "    npm install -g @anthropic-ai/claude-code\n"
            "then run `mlx-gateway code` again."
        ),
        wiring=(
            "Claude Code gets ANTHROPIC_BASE_URL, ANTHROPIC_AUTH_TOKEN, the model names, the "
            "model's context window (CLAUDE_CODE_MAX_CONTEXT_TOKENS, "
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS, and CLAUDE_CODE_AUTO_COMPACT_WINDOW from 100k) and "
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1; variables you set yourself win."
        ),
        wire=_wire_claude,
    ),
    "codex": Agent(
        program="codex",
        title="Codex",
        install_hint=(
            "Codex is not installed (no `codex` on PATH). Install it with:\n"
            "    npm install -g @openai/codex\n"
            "then run `mlx-gateway codex` again."
        ),
        wiring=(
            "Codex gets `-c` overrides (your ~/.codex/config.toml is left as it is): a provider "
            "for the gateway's /v1/responses, the model and its context window "
            "(model_context_window), a model catalog, and plugins, analytics, update checks and "
            "telemetry exporters off."
        ),
        wire=_wire_codex,
    ),
}
