"""The doctor's readings of backend answers, and its verdict."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlx_gateway.backends.profiles import PROFILES
from mlx_gateway.doctor import (
    Check,
    cache_check,
    fail,
    ok,
    reasoning_check,
    stream_chunks,
    tool_call_check,
    usage_check,
    verdict,
    warn,
    window_check,
)


@pytest.mark.parametrize(
    ("window", "status"), [(None, "warn"), (4096, "warn"), (19_999, "warn"), (32_768, "ok")]
)
def test_window_under_claude_codes_first_request_warns(window: int | None, status: str) -> None:
    check = window_check(window, PROFILES["llama_cpp"])

    assert check.status == status
    assert ("-c 32768" in check.fix) == (window is not None and status == "warn")


CALL = {"id": "c1", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


@pytest.mark.parametrize(
    ("message", "status", "says"),
    [
        ({"content": None, "tool_calls": [CALL]}, "ok", "structured"),
        ({"content": '<tool_call>{"name": "get_weather"}</tool_call>'}, "ok", "as text"),
        ({"content": "It is sunny in Paris."}, "warn", "without calling"),
        ({}, "warn", "without calling"),
    ],
)
def test_tool_calls_structured_or_as_text(message: dict[str, Any], status: str, says: str) -> None:
    check = tool_call_check(message)

    assert (check.status, says in check.detail) == (status, True)


def sse(*deltas: dict[str, Any], usage: bool = False) -> bytes:
    events = [b": keepalive 1/1\n\n"]
    for delta in deltas:
        chunk = {"choices": [{"index": 0, "delta": delta}]}
        events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    if usage:
        events.append(b'data: {"choices":[],"usage":{"prompt_tokens":3}}\n\n')
    return b"".join(events) + b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("deltas", "says"),
    [
        ([{"reasoning_content": "hm"}, {"content": "42"}], "reasoning_content"),
        ([{"reasoning": "hm"}, {"content": "42"}], "`reasoning`"),
        ([{"content": "<thi"}, {"content": "nk>hm</think>42"}], "<think>"),
        ([{"content": "42"}], "none seen"),
    ],
)
def test_reasoning_format(deltas: list[dict[str, Any]], says: str) -> None:
    check = reasoning_check(stream_chunks(sse(*deltas)))

    assert check.status == "ok"
    assert says in check.detail


@pytest.mark.parametrize(("usage", "status"), [(True, "ok"), (False, "warn")])
def test_usage_in_streams(usage: bool, status: str) -> None:
    assert usage_check(stream_chunks(sse({"content": "x"}, usage=usage))).status == status


@pytest.mark.parametrize(
    ("usage", "status"),
    [
        ({"prompt_tokens": 400, "prompt_tokens_details": {"cached_tokens": 399}}, "ok"),
        ({"prompt_tokens": 400, "prompt_tokens_details": {"cached_tokens": 0}}, "warn"),
        ({"prompt_tokens": 400}, "warn"),
    ],
)
def test_prompt_cache_reuse(usage: dict[str, Any], status: str) -> None:
    assert cache_check({"usage": usage}).status == status


def test_verdict_names_what_blocks_and_what_warns() -> None:
    fine: list[Check] = [ok("reachable", "yes"), warn("images", "refused", "a vision model")]
    broken = [*fine, fail("chat", "HTTP 500", "check the log")]

    assert verdict(fine).startswith("Claude Code and Codex should work")
    assert "images" in verdict(fine)
    assert verdict(broken) == "Claude Code and Codex would not work: chat: HTTP 500"
