"""Argument split and environment of `mlx-gateway code`."""

from __future__ import annotations

import pytest

from mlx_gateway.config import Config
from mlx_gateway.launch import claude_environment, split_code_command


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["code"], ([], [])),
        (["code", "-p", "hi"], ([], ["-p", "hi"])),
        (["--port", "9000", "code", "--model", "x"], (["--port", "9000"], ["--model", "x"])),
        (["--mlx-model", "code", "code", "-c"], (["--mlx-model", "code"], ["-c"])),
        (["--port=9000", "code"], (["--port=9000"], [])),
        (["--port", "9000"], None),
        ([], None),
    ],
)
def test_split(argv: list[str], expected: tuple[list[str], list[str]] | None) -> None:
    assert split_code_command(argv) == expected


def test_environment_keeps_the_users_own_key_and_model() -> None:
    config = Config(mlx_model="big", model_map=(("*haiku*", "small"),))
    env = claude_environment(
        config, "http://127.0.0.1:8080", {"ANTHROPIC_API_KEY": "mine", "HOME": "/h"}
    )
    assert env["ANTHROPIC_API_KEY"] == "mine"
    assert env["HOME"] == "/h"
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "small"
    assert env["ANTHROPIC_DEFAULT_OPUS_MODEL"] == "big"
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:8080"
