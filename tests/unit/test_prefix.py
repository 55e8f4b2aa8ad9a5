"""Prefix stability: each turn's prompt starts with exactly the prompt of the turn before.

A server's prompt cache reuses the longest common prefix of two prompts, so whatever the
translation changes in an earlier part of the conversation is read again in full. The requests
are a recorded Claude Code session (tests/e2e/test_prompt_cache.py's, with thinking, a tool
loop, a parallel pair, an error result, a subagent's hand-back and a second user message after
`--continue`), translated as the gateway does and rendered with the tiny model's chat template
the way mlx_lm.server renders it (backends/localmodel.py).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mlx_gateway.anthropic.request import to_openai_request
from mlx_gateway.anthropic.types import decode_messages_request
from mlx_gateway.backends.localmodel import (
    ChatTemplate,
    LocalTokenizer,
    build_local_tokenizer,
    compile_template,
    read_model_files,
)
from mlx_gateway.backends.profiles import PROFILES, BackendProfile
from tests.support.tiny_model import build_tiny_model

Json = dict[str, Any]
FIXTURE = Path(__file__).parent / "fixtures" / "claude_code_session.json"
SERVERS = ["mlx_lm", "llama_cpp", "vllm", "ollama", "lmstudio"]

# The rule of Qwen3's template, reduced to it: an assistant message's reasoning is rendered only
# after the last user message, so a new user message drops the reasoning of the loop before.
LAST_LOOP_REASONING = """\
{%- set ns = namespace(last_user=-1) %}
{%- for m in messages %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}
{%- endfor %}
{%- for m in messages %}
{{- '<|im_start|>' + m.role + '\\n' }}
{%- if m.role == 'assistant' and loop.index0 > ns.last_user and m.reasoning_content %}
{{- '<think>\\n' + m.reasoning_content + '\\n</think>\\n\\n' }}
{%- endif %}
{{- m.content }}
{%- for call in m.tool_calls or [] %}{{ '<tool_call>' + call.function.name + '</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- endfor %}
{{- '<|im_start|>assistant\\n' }}"""


@cache
def session() -> tuple[Json, ...]:
    """The main conversation's requests, in order, as Claude Code sent them."""
    recorded = json.loads(FIXTURE.read_text())
    shared = {"system": recorded["system"], "tools": recorded["tools"]}
    return tuple({**shared, **request} for request in recorded["requests"])


@pytest.fixture(scope="module")
def tiny() -> LocalTokenizer:
    tokenizer = build_local_tokenizer(read_model_files(build_tiny_model()))
    assert tokenizer is not None
    return tokenizer


def translated(request: Json, profile: BackendProfile) -> Json:
    """The chat body as the backend receives it (schemas decoded, as JSON travels)."""
    parsed = decode_messages_request(json.dumps(request).encode())
    body = to_openai_request(parsed, model="m", profile=profile, stream=True)
    decoded: Json = msgspec.json.decode(msgspec.json.encode(body))
    return decoded


def prompts(template: LocalTokenizer | ChatTemplate, requests: Any, profile: str) -> list[str]:
    return [template.render(translated(request, PROFILES[profile])) for request in requests]


def assert_each_starts_with_the_one_before(rendered: list[str]) -> None:
    for at, (before, after) in enumerate(itertools.pairwise(rendered)):
        common = len(_common_prefix(before, after))
        assert after.startswith(before), (
            f"turn {at + 1} departs from turn {at} at character {common}: "
            f"{before[common - 80 : common + 80]!r} vs {after[common - 80 : common + 80]!r}"
        )


def _common_prefix(a: str, b: str) -> str:
    size = next((at for at, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    return a[: min(len(a), len(b)) if size is None else size]


def test_the_recorded_session_is_the_one_described() -> None:
    requests = session()
    assert len(requests) == 7
    roles = [m["role"] for m in requests[-1]["messages"]]
    assert roles.count("assistant") == 6
    assert all(r["thinking"]["type"] == "adaptive" for r in requests)
    assert "Run one more." in json.dumps(requests[-1]["messages"])


@pytest.mark.parametrize("profile", SERVERS)
def test_each_turn_starts_with_the_one_before(tiny: LocalTokenizer, profile: str) -> None:
    assert_each_starts_with_the_one_before(prompts(tiny, session(), profile))


def test_a_changing_billing_header_keeps_the_prefix(tiny: LocalTokenizer) -> None:
    """Claude Code versions that put a per-request nonce in the billing line would otherwise
    make every prompt differ from its first line on."""
    requests = copy.deepcopy(list(session()))
    for at, request in enumerate(requests):
        head = request["system"][0]
        assert head["text"].startswith("x-anthropic-billing-header:")
        request["system"] = [
            {**head, "text": f"{head['text']} cch={at:05x};"},
            *request["system"][1:],
        ]
    assert prompts(tiny, requests, "mlx_lm") == prompts(tiny, session(), "mlx_lm")


def _reversed_results(request: Json) -> Json:
    messages = []
    for message in request["messages"]:
        content = message["content"]
        parallel = isinstance(content, list) and [b["type"] for b in content].count("tool_result")
        messages.append({**message, "content": content[::-1]} if parallel == 2 else message)
    return {**request, "messages": messages}


def test_parallel_results_listed_as_they_finished_render_in_call_order(
    tiny: LocalTokenizer,
) -> None:
    """Claude Code lists parallel results in the order the tools finished, which can differ
    from one run to the next (a resumed session); the backend gets them in call order, so the
    prompt is the same whatever order they finished in."""
    requests = [_reversed_results(request) for request in session()]
    assert requests != list(session())
    assert prompts(tiny, requests, "mlx_lm") == prompts(tiny, session(), "mlx_lm")


@pytest.mark.parametrize("profile", SERVERS)
def test_no_earlier_reasoning_goes_back(profile: str) -> None:
    """Claude Code sends its thinking blocks back; servers whose templates render reasoning at
    all (Qwen3's) drop it once a new user message arrives, which would cut the prefix there."""
    body = translated(session()[-1], PROFILES[profile])
    assistants = [m for m in body["messages"] if m["role"] == "assistant"]
    assert len(assistants) == 6
    assert not any(set(m) & {"reasoning_content", "reasoning", "thinking"} for m in assistants)
    assert not any("Once more." in str(m["content"]) for m in assistants)


def test_echoed_reasoning_would_cut_the_prefix_at_a_new_user_message() -> None:
    """Why reasoning is never sent back: under a template that shows the reasoning of the last
    loop only, the prompt after "Run one more." departs from the one before it, back at the
    first reasoned answer of the loop before; without the echo it does not."""
    template = ChatTemplate({"default": compile_template(LAST_LOOP_REASONING)}, {})
    echoing = dataclasses.replace(PROFILES["llama_cpp"], reasoning_back_field="reasoning_content")
    requests = session()
    loop, after = requests[4], requests[5]  # the last request of run 1, the first of run 2
    echoed = [template.render(translated(r, echoing)) for r in (loop, after)]
    assert "<think>\nThis one fails." in echoed[0]  # the loop's reasoning, shown in the loop...
    assert "<think>\nThis one fails." not in echoed[1]  # ...and gone after the new user message
    assert not echoed[1].startswith(echoed[0])
    assert_each_starts_with_the_one_before(prompts(template, requests, "llama_cpp"))
