"""Whole answers: a non-streaming Anthropic message from an OpenAI completion, and the message
that a list of stream events describes.

A whole answer goes through the same state machine as a stream (`StreamTranslator`, fed once), so
both modes order blocks and read reasoning, tool calls and stop sequences identically; only plain
text, the most common answer, is written directly.
"""

from __future__ import annotations

import msgspec

from mlx_gateway.anthropic.outcome import anthropic_stop_reason, usage_to_anthropic
from mlx_gateway.anthropic.stream import Event, StreamTranslator
from mlx_gateway.parse.chat import (
    ChatCompletion,
    Choice,
    ResponseMessage,
    Usage,
    completion_as_chunk,
)
from mlx_gateway.parse.think import opened_by_prompt
from mlx_gateway.parse.toolargs import parse_tool_arguments

_text_decoder = msgspec.json.Decoder(str)


def assemble_message(events: list[Event]) -> Event:
    """The non-streaming message that a stream of events describes (one translation path for
    both modes where the gateway must watch the text itself, e.g. for stop sequences)."""
    message: Event = {}
    partial_json: dict[int, list[str]] = {}
    for event in events:
        kind = event["type"]
        if kind == "message_start":
            message = {**event["message"], "content": []}
        elif kind == "content_block_start":
            message["content"].append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            _apply_delta(
                message["content"][event["index"]], event["delta"], partial_json, event["index"]
            )
        elif kind == "message_delta":
            message.update(event["delta"])
            message["usage"] = {**message["usage"], **event["usage"]}
    for index, fragments in partial_json.items():
        message["content"][index]["input"] = parse_tool_arguments("".join(fragments))
    return message


def _apply_delta(
    block: Event, delta: Event, partial_json: dict[int, list[str]], index: int
) -> None:
    kind = delta["type"]
    if kind == "text_delta":
        text = delta["text"]  # still JSON when it came from a run the gateway did not decode
        block["text"] += text if isinstance(text, str) else _text_decoder.decode(text)
    elif kind == "thinking_delta":
        block["thinking"] += delta["thinking"]
    elif kind == "signature_delta":
        block["signature"] = delta["signature"]
    elif kind == "input_json_delta":
        partial_json.setdefault(index, []).append(delta["partial_json"])


def to_anthropic_message(
    completion: ChatCompletion,
    *,
    model: str,
    message_id: str,
    stop_sequences: list[str] | None,
) -> Event:
    """A whole answer goes through the stream state machine as one chunk, so both modes order
    blocks and read reasoning, tool calls and stop sequences identically. Plain text, the most
    common answer, has none of those and is written directly (tests/unit prove it the same)."""
    choice = completion.choices[0] if completion.choices else None
    if choice is not None and not stop_sequences and is_plain_text(choice.message):
        return _text_message(choice, completion.usage, model=model, message_id=message_id)
    content = (choice.message.content or "") if choice else ""
    translator = StreamTranslator(
        model=model,
        message_id=message_id,
        estimated_input_tokens=0,
        stop_sequences=stop_sequences,
        starts_in_reasoning=opened_by_prompt(content),
    )
    events = translator.start()
    events += translator.feed(completion_as_chunk(completion))
    return assemble_message(events + translator.finish())


def is_plain_text(message: ResponseMessage) -> bool:
    """No reasoning, no tool call and no tag: the state machine would pass the text through."""
    if message.tool_calls or message.reasoning_content or message.reasoning:
        return False
    return "<" not in (message.content or "")


def _text_message(choice: Choice, usage: Usage | None, *, model: str, message_id: str) -> Event:
    text = choice.message.content or ""
    stop_reason, stop_sequence = anthropic_stop_reason(choice.finish_reason)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}] if text else [],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage_to_anthropic(usage, 0, 1 if text else 0),
    }
