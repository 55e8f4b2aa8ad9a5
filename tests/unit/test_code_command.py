"""Argument split, help, and how Claude Code and Codex are wired to a gateway."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_gateway.agents import (
    CODEX_KEY_VARIABLE,
    CODEX_PROVIDER,
    Session,
    claude_environment,
    codex_catalog,
    codex_overrides,
    output_budget,
    toml_value,
    write_catalog,
)
from mlx_gateway.config import Config, load_config
from mlx_gateway.launch import command_help, mismatches, split_command


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["code"], ("code", [], [])),
        (["code", "-p", "hi"], ("code", [], ["-p", "hi"])),
        (["--port", "9", "code", "--model", "x"], ("code", ["--port", "9"], ["--model", "x"])),
        (["--mlx-model", "code", "code", "-c"], ("code", ["--mlx-model", "code"], ["-c"])),
        (["--mlx-model", "codex", "codex", "exec"], ("codex", ["--mlx-model", "codex"], ["exec"])),
        (["--port=9000", "code"], ("code", ["--port=9000"], [])),
        (["codex", "code"], ("codex", [], ["code"])),
        (["--port", "9000"], None),
        ([], None),
    ],
)
def test_split(argv: list[str], expected: tuple[str, list[str], list[str]] | None) -> None:
    command = split_command(argv)
    found = None if command is None else (command.name, command.gateway_argv, command.args)
    assert found == expected


@pytest.mark.parametrize("name", ["code", "codex"])
def test_help_is_ours(name: str) -> None:
    command = split_command(["--port", "1", name, "--help"])
    assert command is not None
    assert command.wants_help
    text = command_help(name)
    assert text.startswith(f"usage: mlx-gateway [gateway flags] {name} ")
    assert "free port" in text


def test_claude_gets_a_token_not_a_key_and_the_users_choices_win() -> None:
    config = Config(mlx_model="big", model_map=(("*haiku*", "small"),))
    session = Session("http://127.0.0.1:8080", None)
    env = claude_environment(
        config, session, {"ANTHROPIC_API_KEY": "mine", "HOME": "/h", "ANTHROPIC_MODEL": "own"}
    )
    assert "ANTHROPIC_API_KEY" not in env
    assert env["ANTHROPIC_AUTH_TOKEN"] == "mine"
    assert env["HOME"] == "/h"
    assert env["ANTHROPIC_MODEL"] == "own"
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "small"
    assert env["ANTHROPIC_DEFAULT_OPUS_MODEL"] == "big"
    assert env["CLAUDE_CODE_SUBAGENT_MODEL"] == "big"
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:8080"
    assert "CLAUDE_CODE_AUTO_COMPACT_WINDOW" not in env  # no window known: Claude Code decides


def test_claude_is_told_the_window() -> None:
    env = claude_environment(Config(), Session("http://h:1", 40960), {})
    assert env["ANTHROPIC_AUTH_TOKEN"] == "mlx-gateway"
    assert env["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] == "40960"
    assert env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "5120"
    # Claude Code would read a smaller compaction window as 100k and warn about it.
    assert "CLAUDE_CODE_AUTO_COMPACT_WINDOW" not in env
    large = claude_environment(Config(), Session("http://h:1", 262144), {})
    assert large["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == "262144"


@pytest.mark.parametrize(
    ("window", "budget"), [(4096, 1024), (32768, 4096), (131072, 16384), (1_000_000, 32000)]
)
def test_output_budget(window: int, budget: int) -> None:
    assert output_budget(window) == budget


def test_codex_overrides(tmp_path: Path) -> None:
    config = Config(mlx_model="qwen3:8b")
    catalog = write_catalog(codex_catalog("qwen3:8b", 32768), tmp_path)
    overrides = codex_overrides(config, Session("http://127.0.0.1:9", 32768), catalog)
    assert overrides["model_provider"] == "mlx_gateway"
    assert overrides["model_providers.mlx_gateway.base_url"] == "http://127.0.0.1:9/v1"
    assert overrides["model_providers.mlx_gateway.wire_api"] == "responses"
    assert overrides["model"] == "qwen3:8b"
    assert overrides["model_context_window"] == 32768
    assert overrides["features.plugins"] is False
    assert overrides["analytics.enabled"] is False
    assert overrides["check_for_update_on_startup"] is False
    assert overrides["otel.exporter"] == "none"
    assert Path(overrides["model_catalog_json"]) == catalog
    assert '"context_window": 32768' in catalog.read_text()
    assert write_catalog(codex_catalog("qwen3:8b", 32768), tmp_path) == catalog
    assert "model_context_window" not in codex_overrides(config, Session("u", None), catalog)


@pytest.mark.parametrize(("value", "text"), [(False, "false"), (7, "7"), ("a b", '"a b"')])
def test_toml_values(value: object, text: str) -> None:
    assert toml_value(value) == text


@pytest.mark.parametrize(
    ("flags", "info", "differs"),
    [
        ({}, {"backend": "http://other:1", "model": "m"}, []),
        ({"mlx_model": "m"}, {"backend": "http://other:1", "model": "m"}, []),
        ({"mlx_model": "n"}, {"backend": "http://localhost:8081", "model": "m"}, ["model"]),
        ({"mlx_url": "http://x:1/v1"}, {"backend": "http://x:1", "model": "m"}, []),
        ({"mlx_url": "http://x:2"}, {"backend": "http://x:1", "model": "m"}, ["backend"]),
    ],
)
def test_a_running_gateway_matches_what_was_given(
    flags: dict[str, str], info: dict[str, str], differs: list[str]
) -> None:
    config = load_config(flags, {})
    assert [item.split()[0] for item in mismatches(info, config)] == differs


def test_a_gateway_with_keys_hands_its_first_to_the_agents(tmp_path: Path) -> None:
    config = load_config({"api_key": ["key-one", "key-two"]}, {})
    session = Session("http://127.0.0.1:8080", None)
    env = claude_environment(config, session, {"ANTHROPIC_API_KEY": "users-own"})
    assert env["ANTHROPIC_AUTH_TOKEN"] == "key-one"
    assert "ANTHROPIC_API_KEY" not in env
    overrides = codex_overrides(config, session, tmp_path / "catalog.json")
    assert overrides[f"model_providers.{CODEX_PROVIDER}.env_key"] == CODEX_KEY_VARIABLE
    assert f"model_providers.{CODEX_PROVIDER}.env_key" not in codex_overrides(
        Config(), session, tmp_path / "catalog.json"
    )
