"""How an answer ended and what it cost, in Anthropic's terms: the pieces that the stream
machine (stream.py) and the whole-answer path (answer.py) share."""

from __future__ import annotations

from typing import Any

from mlx_gateway.parse.chat import Usage
from mlx_gateway.parse.stops import resolve_stop_sequence

Json = dict[str, Any]

STOP_REASONS: dict[str | None, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
    None: "end_turn",
}


def anthropic_stop_reason(
    finish_reason: str | None,
    *,
    tool_use: bool = False,
    matched: str | None = None,
    stop_sequences: list[str] | None = None,
    backend_stop: str | int | None = None,
) -> tuple[str, str | None]:
    """`stop_reason` and `stop_sequence` of an answer: `tool_use` when it made a call, `matched`
    when the gateway cut it at a stop sequence, `backend_stop` as vLLM reports it."""
    # A limit hit inside a tool call is still max_tokens, as the real API reports it.
    if finish_reason == "length":
        return "max_tokens", None
    if tool_use:
        return "tool_use", None
    if finish_reason == "tool_calls":
        # mlx_lm.server says tool_calls even when it could not parse the call it dropped.
        return "end_turn", None
    if matched is not None:
        return "stop_sequence", matched
    reason = STOP_REASONS.get(finish_reason, "end_turn")
    if reason == "end_turn" and stop_sequences:
        sequence = resolve_stop_sequence(stop_sequences, finish_reason, backend_stop, "")
        if sequence is not None:
            return "stop_sequence", sequence
    return reason, None


def usage_to_anthropic(
    usage: Usage | None, estimated_input: int = 0, estimated_output: int = 0
) -> Json:
    """Anthropic counts cached prompt tokens apart from `input_tokens`; the sum is the prompt.
    Every usage carries the cache fields, as the real API's do; a local server's prompt cache
    is written as a side effect of reading, so nothing is ever reported as cache creation."""
    if usage is None:
        return _usage(estimated_input, 0, estimated_output)
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details is not None else 0
    return _usage(max(usage.prompt_tokens - cached, 0), cached, usage.completion_tokens)


def _usage(uncached: int, cached: int, output: int) -> Json:
    return {
        "input_tokens": uncached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": output,
    }


def start_usage(estimated_input: int) -> Json:
    """The usage of `message_start`, sent before the backend has read the prompt: the estimate,
    and no cache figures yet. Clients that merge usage (Claude Code, the SDKs) take the figures
    of `message_delta`, which carry the backend's own counts, in their place."""
    return _usage(estimated_input, 0, 0)


def thinking_signature(message_id: str) -> str:
    """Clients must echo thinking blocks back with a signature; the gateway drops them on the way
    in, so any stable opaque value serves."""
    return f"mlxgw-{message_id}"
