"""The Anthropic usage object the gateway reports, for expected values in tests."""

from __future__ import annotations

from typing import Any


def usage_of(uncached: int, output: int, *, cached: int = 0) -> dict[str, Any]:
    """Every usage carries the cache fields, as the real API's do."""
    return {
        "input_tokens": uncached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": output,
    }
