"""Pure translation: Anthropic Messages request -> OpenAI chat request.

The answer is translated in stream.py, one state machine for streams and whole answers, with
the pieces both answer paths share in outcome.py. No I/O; every function takes what it needs
and returns new data.
"""

from __future__ import annotations

import logging
from typing import Any, TypeGuard

import msgspec

from mlx_gateway.anthropic import types as an
from mlx_gateway.backends.profiles import BackendProfile, tool_parameters

log = logging.getLogger("mlx_gateway.translate")

BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"
TOOL_ERROR_MARK = "[tool error] "

_json = msgspec.json.Encoder()

Json = dict[str, Any]


def json_text(value: Any) -> str:
    return _json.encode(value).decode()


# ---- request: Anthropic -> OpenAI -------------------------------------------------------------


def is_billing_header(text: str) -> bool:
    """Claude Code's per-request attribution line; its nonce would defeat every prompt cache."""
    return text.lstrip().startswith(BILLING_HEADER_PREFIX)


def system_text(system: str | list[an.TextBlock] | None) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return "" if is_billing_header(system) else system
    return "\n".join(block.text for block in system if not is_billing_header(block.text))


def _image_url(block: an.ImageBlock) -> str | None:
    source = block.source
    if source is None:
        return None
    if source.type == "base64" and source.data is not None:
        return f"data:{source.media_type or 'image/png'};base64,{source.data}"
    return source.url


def _document_text(block: an.DocumentBlock) -> str:
    source = block.source or {}
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        return str(source["data"])
    if source.get("type") == "content" and isinstance(source.get("content"), list):
        return "\n".join(str(part.get("text", "")) for part in source["content"])
    return f"[document omitted: {block.title or source.get('media_type', 'unsupported source')}]"


class _Parts:
    """Collects OpenAI content parts; collapses to a plain string when there is only text."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[Json] = []

    def text(self, text: str) -> None:
        if text:
            self.items.append({"type": "text", "text": text})

    def image(self, url: str | None) -> None:
        if url:
            self.items.append({"type": "image_url", "image_url": {"url": url}})

    def __bool__(self) -> bool:
        return bool(self.items)

    def content(self) -> str | list[Json]:
        if all(item["type"] == "text" for item in self.items):
            return "\n".join(item["text"] for item in self.items)
        return self.items


def _add_part(parts: _Parts, block: Any) -> None:
    if isinstance(block, an.TextBlock):
        parts.text(block.text)
    elif isinstance(block, an.ImageBlock):
        parts.image(_image_url(block))
    elif isinstance(block, an.DocumentBlock):
        parts.text(_document_text(block))
    elif isinstance(block, an.SearchResultBlock):
        parts.text("\n".join(item.text for item in block.content))
    elif isinstance(block, an.ToolReferenceBlock):
        parts.text(f"Tool loaded: {block.tool_name}")


def _only_text(parts: list[an.ToolResultPart]) -> TypeGuard[list[an.TextBlock]]:
    return all(type(part) is an.TextBlock for part in parts)


def _tool_result_message(block: an.ToolResultBlock, images: _Parts) -> Json:
    content = block.content
    if isinstance(content, list) and _only_text(content):  # the common case, made short
        text = "\n".join([part.text for part in content if part.text])
    elif isinstance(content, list):
        texts = _Parts()
        for part in content:
            if isinstance(part, an.ImageBlock):
                images.image(_image_url(part))
            else:
                _add_part(texts, part)
        text = "\n".join(item["text"] for item in texts.items)
    else:
        text = content or ""
    if block.is_error:
        text = TOOL_ERROR_MARK + text
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}


def _user_messages(blocks: list[an.ContentBlock], call_order: dict[str, int]) -> list[Json]:
    """Tool results first (OpenAI wants them right after the assistant's calls), in the order of
    the calls: clients list parallel results as they finished, and chat templates that render
    results without their ids let the model match them by position. Then one user message with
    the images the tool results carried and the user's own text and images."""
    tool_messages: list[Json] = []
    parts = _Parts()
    for block in blocks:
        if isinstance(block, an.ToolResultBlock):
            tool_messages.append(_tool_result_message(block, parts))
        else:
            _add_part(parts, block)
    if len(tool_messages) > 1:
        unknown = len(call_order)
        tool_messages.sort(key=lambda message: call_order.get(message["tool_call_id"], unknown))
    if parts:
        tool_messages.append({"role": "user", "content": parts.content()})
    return tool_messages


def _assistant_message(blocks: list[an.ContentBlock], profile: BackendProfile) -> Json:
    texts: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[Json] = []
    for block in blocks:
        if isinstance(block, an.TextBlock):
            texts.append(block.text)
        elif isinstance(block, an.ThinkingBlock):
            reasoning.append(block.thinking)
        elif isinstance(block, an.ToolUseBlock):
            arguments = _json.encode(block.input).decode()
            function = {"name": block.name, "arguments": arguments}
            tool_calls.append({"id": block.id, "type": "function", "function": function})
    message: Json = {"role": "assistant", "content": "".join(texts)}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning and profile.reasoning_back_field:
        message[profile.reasoning_back_field] = "".join(reasoning)
    return message


def _flatten(content: str | list[an.ContentBlock]) -> str | list[Json]:
    if isinstance(content, str):
        return content
    parts = _Parts()
    for block in content:
        _add_part(parts, block)
    return parts.content() if parts else ""


def to_openai_messages(
    system: str | list[an.TextBlock] | None, messages: list[an.Message], profile: BackendProfile
) -> list[Json]:
    converted: list[Json] = []
    head = system_text(system)
    if head:
        converted.append({"role": "system", "content": head})
    call_order: dict[str, int] = {}
    for message in messages:
        content = message.content
        if message.role == "assistant":
            blocks: list[an.ContentBlock] = (
                [an.TextBlock(text=content)] if isinstance(content, str) else content
            )
            assistant = _assistant_message(blocks, profile)
            calls = assistant.get("tool_calls", [])
            call_order = {call["id"]: position for position, call in enumerate(calls)}
            converted.append(assistant)
        elif message.role == "user" and not isinstance(content, str):
            converted.extend(_user_messages(content, call_order))
        else:
            converted.append({"role": message.role, "content": _flatten(content)})
    return converted


def loaded_tool_names(messages: list[an.Message]) -> set[str]:
    """Deferred tools that a tool search has loaded (its results name them in tool_reference
    blocks) are offered to the model from then on, as the real API does."""
    names: set[str] = set()
    for message in messages:
        if isinstance(message.content, str):
            continue
        for block in message.content:
            if isinstance(block, an.ToolResultBlock) and isinstance(block.content, list):
                names.update(
                    part.tool_name
                    for part in block.content
                    if isinstance(part, an.ToolReferenceBlock)
                )
    return names


def is_forwardable_tool(tool: an.Tool, loaded: set[str]) -> bool:
    """Server tools (web_search, code execution...) run at Anthropic, not on a local model;
    deferred tools stay hidden until a tool search loads them."""
    deferred = tool.defer_loading and tool.name not in loaded
    if tool.type not in (None, "custom") or deferred:
        log.debug(
            "dropping tool %s (type=%s, deferred=%s)", tool.name, tool.type, tool.defer_loading
        )
        return False
    return True


def to_openai_tools(
    tools: list[an.Tool], profile: BackendProfile, loaded: set[str] | None = None
) -> list[Json]:
    converted = []
    for tool in tools:
        if not is_forwardable_tool(tool, loaded or set()):
            continue
        function: Json = {
            "name": tool.name,
            "parameters": tool_parameters(tool.input_schema, profile),
        }
        if tool.description:
            function["description"] = tool.description
        converted.append({"type": "function", "function": function})
    return converted


def to_openai_tool_choice(choice: an.ToolChoice) -> str | Json:
    if choice.type == "tool":
        return {"type": "function", "function": {"name": choice.name or ""}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def thinking_enabled(thinking: an.ThinkingConfig | None) -> bool | None:
    if thinking is None:
        return None
    return thinking.type != "disabled"


def gateway_watches_stops(request: an.MessagesRequest, profile: BackendProfile) -> bool:
    """Stop sequences the backend will not report are enforced by the gateway on a stream."""
    return bool(request.stop_sequences) and not profile.reports_stop_match


def to_openai_request(
    request: an.MessagesRequest,
    *,
    model: str,
    profile: BackendProfile,
    stream: bool,
    max_tokens: int | None = None,
) -> Json:
    body: Json = {
        "model": model,
        "messages": to_openai_messages(request.system, request.messages, profile),
        "max_tokens": max_tokens or request.max_tokens,
        "stream": stream,
    }
    if stream:
        # An empty stream_options object crashes mlx_lm.server's stream; always say it in full.
        body["stream_options"] = {"include_usage": True}
    _copy_sampling(request, body, profile)
    _copy_tools(request, body, profile)
    enabled = thinking_enabled(request.thinking)
    if enabled is not None and profile.thinking_switch == "chat_template_kwargs":
        body["chat_template_kwargs"] = {"enable_thinking": enabled}
    return body


def _copy_sampling(request: an.MessagesRequest, body: Json, profile: BackendProfile) -> None:
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.stop_sequences and profile.reports_stop_match:
        body["stop"] = request.stop_sequences
    if request.metadata is not None and request.metadata.user_id:
        body["user"] = request.metadata.user_id


def _copy_tools(request: an.MessagesRequest, body: Json, profile: BackendProfile) -> None:
    if not request.tools:
        return
    # Only deferred tools need the conversation searched for the ones a tool search loaded.
    deferred = any(tool.defer_loading for tool in request.tools)
    loaded = loaded_tool_names(request.messages) if deferred else set()
    tools = to_openai_tools(request.tools, profile, loaded)
    if not tools:
        return
    body["tools"] = tools
    choice = request.tool_choice
    if choice is not None:
        body["tool_choice"] = to_openai_tool_choice(choice)
        if choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
