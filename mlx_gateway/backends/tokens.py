"""Prompt token counts, for `POST /v1/messages/count_tokens` and for fitting the context window.

What is counted is the prompt part of the OpenAI request the gateway sends for the same body
(anthropic/count.py), so system, messages and tools go through the same translation, billing header
removal included. Three ways to count, best first; the backend profile says which apply:

* the server counts it (vLLM's `/tokenize`; llama.cpp's `/apply-template`, then `/tokenize`): the
  request bodies and answers are built and read here, the calls are made by context.py;
* the model's own files, for mlx_lm.server, which loads them itself: `tokenizer.json` with the
  `tokenizers` package and the chat template rendered with jinja2 the way transformers'
  `apply_chat_template` does, after the message clean-up mlx_lm.server applies first.
  transformers is not imported: its import alone takes seconds and pulls in half of PyPI;
* an estimate: characters / 3.5 of a plain rendering, rounded up (`exact` is False then).

Counting stays cheap on a growing conversation because chat templates write special tokens such as
`<|im_start|>` between messages, and the tokenizer splits its input at those before anything else:
the text between two of them is tokenized on its own whatever surrounds it. So the rendered prompt
is cut just before each such token and the count of every piece is cached; the next request of an
agent conversation only tokenizes the messages that are new.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import msgspec

Json = dict[str, Any]

CHARS_PER_TOKEN = 3.5
PROMPT_FIELDS = ("model", "messages", "tools", "chat_template_kwargs")


REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


@dataclass(frozen=True, slots=True)
class TokenCount:
    tokens: int
    exact: bool


# ---- what is counted --------------------------------------------------------------------------


def prompt_part(body: Json) -> Json:
    return {name: body[name] for name in PROMPT_FIELDS if name in body}


def content_text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def tools_as_values(tools: list[Json]) -> list[Json]:
    """The tools with their schemas as values: they travel as the client's JSON text
    (msgspec.Raw), which templates and the estimate cannot read."""
    decoded: list[Json] = msgspec.json.decode(msgspec.json.encode(tools))
    return decoded


def plain_text(body: Json) -> str:
    """The prompt without any model's template: what the estimate measures."""
    tools = body.get("tools")
    lines = [json.dumps(tools_as_values(tools), ensure_ascii=False)] if tools else []
    for message in body.get("messages", []):
        lines.append(f"<|{message.get('role', '')}|>")
        lines.append(content_text(message.get("content")))
        for field in REASONING_FIELDS:
            if isinstance(message.get(field), str):
                lines.append(message[field])
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            lines.append(f"{function.get('name', '')}({function.get('arguments', '')})")
    return "\n".join(lines)


def estimate_tokens(body: Json) -> int:
    """Characters / 3.5, rounded up: a little over most English and code, under CJK text."""
    return math.ceil(len(plain_text(body)) / CHARS_PER_TOKEN)


# ---- counting by the backend (request bodies and answers) -------------------------------------


def chat_tokenize_body(body: Json) -> Json:
    """vLLM's `/tokenize` renders the chat itself; `add_generation_prompt` as for a completion."""
    return {**prompt_part(body), "add_generation_prompt": True}


def apply_template_body(body: Json) -> Json:
    return {name: value for name, value in prompt_part(body).items() if name != "model"}


def text_tokenize_body(prompt: str) -> Json:
    """llama.cpp strips the template's leading BOS when the model adds one itself, and
    tokenizes the completion prompt with `add_special`; the same here gives the same count."""
    return {"content": prompt, "add_special": True, "parse_special": True}


def count_from_tokenize_answer(answer: Any) -> int | None:
    if not isinstance(answer, dict):
        return None
    count = answer.get("count")
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    tokens = answer.get("tokens")
    return len(tokens) if isinstance(tokens, list) else None


def prompt_from_template_answer(answer: Any) -> str | None:
    prompt = answer.get("prompt") if isinstance(answer, dict) else None
    return prompt if isinstance(prompt, str) else None
