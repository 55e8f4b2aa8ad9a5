"""Responses conversations rendered by real chat templates (backends/localmodel.py): a developer
message in the middle of a conversation (Codex sends them when a mode or a permission changes)
renders under a template that refuses a system message that is not first, and each turn's prompt
starts with the previous turn's prompt, so the server's prompt cache serves it."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import pytest
from jinja2 import TemplateError

from mlx_gateway.backends.localmodel import (
    ChatTemplate,
    LocalTokenizer,
    build_local_tokenizer,
    compile_template,
    read_model_files,
)
from mlx_gateway.backends.profiles import PROFILES
from mlx_gateway.responses.request import to_chat_request
from mlx_gateway.responses.types import decode_responses_request
from tests.support.tiny_model import build_tiny_model

Json = dict[str, Any]

# The rule of Qwen's newer templates, which mlx_lm.server and llama.cpp render as they are.
STRICT = """\
{%- for message in messages %}
{%- if message.role == 'system' and not loop.first %}
{{- raise_exception('System message must be at the beginning.') }}
{%- endif %}
{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""
EXEC_TOOL = {
    "type": "function", "name": "exec_command", "description": "Run a command.",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
}  # fmt: skip


def text(role: str, value: str, part: str = "input_text") -> Json:
    return {"type": "message", "role": role, "content": [{"type": part, "text": value}]}


TURN_1 = [text("developer", "You are a coding agent."), text("developer", "<skills>"),
          text("user", "<environment_context/>"), text("user", "List the files.")]  # fmt: skip
ANSWER_1 = [
    {"type": "function_call", "call_id": "c1", "name": "exec_command",
     "arguments": '{"cmd": "ls"}'},
    {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
    text("assistant", "One file: a.txt.", "output_text"),
]  # fmt: skip
TURN_2 = [
    *TURN_1, *ANSWER_1,
    text("developer", "<collaboration_mode>plan</collaboration_mode>"),
    text("user", "Now plan the next step."),
]  # fmt: skip
TURN_3 = [*TURN_2, text("assistant", "Plan: read a.txt.", "output_text"), text("user", "Go.")]


def chat_body(items: list[Json]) -> Json:
    request = decode_responses_request(
        json.dumps({"model": "m", "input": items, "tools": [EXEC_TOOL]}).encode()
    )
    return to_chat_request(
        request, model="local", profile=PROFILES["mlx_lm"], stream=True, max_tokens=64
    )


@pytest.fixture(scope="module")
def tiny() -> LocalTokenizer:
    counter = build_local_tokenizer(read_model_files(build_tiny_model()))
    assert counter is not None
    return counter


def strict() -> ChatTemplate:
    return ChatTemplate({"default": compile_template(STRICT)}, {})


def test_the_strict_template_refuses_a_later_system_message() -> None:
    """What the gateway must avoid sending."""
    body = {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}
    with pytest.raises(TemplateError, match="must be at the beginning"):
        strict().render(body)


def test_a_later_developer_message_renders_under_a_strict_template() -> None:
    body = chat_body(TURN_2)
    assert [m["role"] for m in body["messages"]].count("system") == 1
    rendered = strict().render(body)
    assert "<collaboration_mode>plan</collaboration_mode>" in rendered
    assert rendered.index("One file: a.txt.") < rendered.index("<collaboration_mode>")


@pytest.mark.parametrize("render", ["tiny", "strict"])
def test_each_turns_prompt_starts_with_the_previous_one(tiny: LocalTokenizer, render: str) -> None:
    renderer = tiny.render if render == "tiny" else strict().render
    prompts = [renderer(chat_body(items)) for items in (TURN_1, TURN_2, TURN_3)]
    for earlier, later in pairwise(prompts):
        assert later.startswith(earlier)
    assert prompts[0].startswith("<|im_start|>system\nYou are a coding agent.\n\n<skills>")


def test_the_tiny_models_template_sees_the_later_text_as_the_users(tiny: LocalTokenizer) -> None:
    rendered = tiny.render(chat_body(TURN_2))
    later = rendered[rendered.index("One file: a.txt.") :]
    assert later.count("<|im_start|>system") == 0
    assert "<|im_start|>user\n<system_instructions>\n<collaboration_mode>" in later
