"""Client model names resolved through the alias table."""

from __future__ import annotations

import pytest

from mlx_gateway.backends.aliases import ModelRouter
from mlx_gateway.responses.models import codex_model_info, models_list

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


# ---- GET /v1/models: the OpenAI list and Codex's catalog in one object ----------------------

CODEX_REQUIRED = {
    "slug", "display_name", "supported_reasoning_levels", "shell_type", "visibility",
    "supported_in_api", "priority", "support_verbosity", "truncation_policy",
    "experimental_supported_tools", "base_instructions",
}  # fmt: skip (the fields Codex 0.171 refuses an entry without)


def test_the_listing_carries_both_shapes() -> None:
    listing = models_list(["big/default", "haiku"], [32768, None], created=5)
    assert listing["object"] == "list"
    assert listing["data"] == [
        {"id": "big/default", "object": "model", "created": 5, "owned_by": "mlx-gateway"},
        {"id": "haiku", "object": "model", "created": 5, "owned_by": "mlx-gateway"},
    ]
    first, second = listing["models"]
    assert [first["slug"], second["slug"]] == ["big/default", "haiku"]
    assert first["context_window"] == 32768
    assert "context_window" not in second  # unknown: Codex keeps its own default


def test_a_codex_entry_offers_apply_patch_as_a_freeform_tool() -> None:
    entry = codex_model_info("m", 8192)
    assert set(entry) >= CODEX_REQUIRED
    assert entry["apply_patch_tool_type"] == "freeform"
    assert entry["shell_type"] == "shell_command"
    assert entry["supports_parallel_tool_calls"] is True
    assert entry["base_instructions"]
    assert entry["truncation_policy"] == {"mode": "bytes", "limit": 10000}
