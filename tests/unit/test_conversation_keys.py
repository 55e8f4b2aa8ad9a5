"""Each wing's conversation key: stable over a conversation's turns, different between
conversations, and blind to Claude Code's per-request billing line."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlx_gateway.anthropic import types as an
from mlx_gateway.anthropic.affinity import conversation_key as anthropic_key
from mlx_gateway.errors import InvalidRequest
from mlx_gateway.openai.affinity import conversation_key as openai_key
from mlx_gateway.openai.types import read_chat_request


def messages(turns: list[dict[str, Any]], **fields: Any) -> an.MessagesRequest:
    body = {"model": "m", "max_tokens": 8, "messages": turns, **fields}
    return an.decode_messages_request(json.dumps(body).encode())


FIRST = [{"role": "user", "content": "fix the bug"}]
LATER = [*FIRST, {"role": "assistant", "content": "done"}, {"role": "user", "content": "thanks"}]


def test_anthropic_session_is_the_key() -> None:
    metadata = {"user_id": "user_x_account__session_1234"}
    assert anthropic_key(messages(FIRST, metadata=metadata)) == anthropic_key(
        messages([{"role": "user", "content": "other"}], metadata=metadata)
    )


def test_anthropic_opening_is_stable_over_turns_and_ignores_the_billing_line() -> None:
    def system(nonce: str) -> list[dict[str, str]]:
        billing = f"x-anthropic-billing-header: cc_version=2; cch={nonce};"
        return [{"type": "text", "text": billing}, {"type": "text", "text": "You are Claude."}]

    first = anthropic_key(messages(FIRST, system=system("a1")))
    assert first == anthropic_key(messages(LATER, system=system("b2")))
    assert first != anthropic_key(messages([{"role": "user", "content": "other"}]))


def chat(turns: list[dict[str, Any]], **fields: Any) -> str:
    body = {"model": "m", "messages": turns, **fields}
    return openai_key(read_chat_request(json.dumps(body).encode()))


def test_openai_prompt_cache_key_then_user_then_opening() -> None:
    assert chat(FIRST, prompt_cache_key="k", user="u") == "prompt_cache_key:k"
    assert chat(FIRST, user="u") == "user:u"
    system = [{"role": "system", "content": "be brief"}]
    assert chat(system + FIRST) == chat(system + LATER)
    assert chat(system + FIRST) != chat(FIRST)
    # A `user` that is not a string is refused as the real API refuses it (openai/types.py).
    with pytest.raises(InvalidRequest, match="user"):
        chat(FIRST, user=3)
