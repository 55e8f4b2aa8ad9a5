"""Client model names resolved through the alias table."""

from __future__ import annotations

import pytest

from mlx_gateway.backends.aliases import ModelRouter

ROUTER = ModelRouter(
    "big/default",
    (("haiku", "small/fast"), ("*opus*", "big/slow"), ("gpt-4?", "mid/chat"), ("*", "catch/all")),
)


@pytest.mark.parametrize(
    ("client_model", "backend_model"),
    [
        ("claude-haiku-4-5", "small/fast"),
        ("CLAUDE-HAIKU", "small/fast"),
        ("claude-opus-4-1", "big/slow"),
        ("gpt-4o", "mid/chat"),
        ("gpt-4o-mini", "catch/all"),
        ("anything", "catch/all"),
    ],
)
def test_first_matching_pattern_wins(client_model: str, backend_model: str) -> None:
    assert ROUTER.resolve(client_model) == backend_model


def test_default_takes_every_name() -> None:
    router = ModelRouter("only/model")
    assert router.resolve("claude-sonnet-4-5") == "only/model"
    assert router.resolve("") == "only/model"
    assert router.served_models() == ["only/model"]
    assert router.alias_names() == []


def test_served_models_once_each_default_first() -> None:
    router = ModelRouter("a", (("x", "b"), ("y", "a"), ("z*", "b")))
    assert router.served_models() == ["a", "b"]
    assert router.alias_names() == ["x", "y"]
