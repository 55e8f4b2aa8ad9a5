"""Pure translation: Responses API request -> OpenAI chat request.

The Responses API is stateless here: the client sends the whole conversation as `input` items
every turn (Codex does, with `store: false`). Items become chat messages in order; calls made in
one turn (consecutive `function_call` / `custom_tool_call` items, and the assistant text and
reasoning before them) become one assistant message, so parallel calls stay one turn and each
output becomes a `role: tool` message after it. A freeform `custom` tool (Codex's `apply_patch`,
whose input is a patch written in a grammar) becomes a function with one string argument,
`input`; the stream machine turns the model's call back into a `custom_tool_call`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec

from mlx_gateway.backends.profiles import BackendProfile, tool_parameters
from mlx_gateway.errors import InvalidRequest
from mlx_gateway.responses import types as rt

log = logging.getLogger("mlx_gateway.translate")

Json = dict[str, Any]

CUSTOM_ARGUMENT = "input"  # the one argument of a custom tool offered as a function
LATER_SYSTEM_TAG = "system_instructions"  # marks system text sent as a user message
_REASONING_OFF = frozenset({"none", "minimal"})
_TOOL_CHOICES = frozenset({"auto", "none", "required"})
_json = msgspec.json.Encoder()


def _json_text(value: Any) -> str:
    return _json.encode(value).decode()


def _required(value: str | None, where: str) -> str:
    if value is None:
        raise InvalidRequest(f"{where}: Field required")
    return value


# ---- content --------------------------------------------------------------------------------


def _part_text(part: rt.ContentPart) -> str:
    if part.type == "refusal":
        return part.refusal or ""
    if part.type == "input_file":
        return f"[file omitted: {part.filename or part.file_id or 'unsupported source'}]"
    return part.text or ""


def _chat_content(content: str | list[rt.ContentPart] | None) -> str | list[Json]:
    """Text parts joined into a string; with an image, the chat API's list of parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if all(part.type != "input_image" for part in content):
        return _chat_content_text(content)
    parts: list[Json] = []
    for part in content:
        if part.type == "input_image":
            if part.image_url:
                parts.append({"type": "image_url", "image_url": {"url": part.image_url}})
        elif text := _part_text(part):
            parts.append({"type": "text", "text": text})
    return parts


def _split_images(content: str | list[rt.ContentPart] | None) -> tuple[str, list[Json]]:
    """A tool output's text, and its images (a tool message carries text only)."""
    if content is None or isinstance(content, str):
        return content or "", []
    text = "\n".join(
        t for part in content if part.type != "input_image" and (t := _part_text(part))
    )
    images = [
        {"type": "image_url", "image_url": {"url": part.image_url}}
        for part in content
        if part.type == "input_image" and part.image_url
    ]
    return text, images


def reasoning_text(item: rt.InputItem) -> str:
    """The reasoning an item carries: its full text when sent back, else its summary."""
    content = item.content if isinstance(item.content, list) else []
    texts = [part.text for part in content if part.text] or [
        part.text for part in item.summary or [] if part.text
    ]
    return "\n".join(texts)


# ---- items -> messages ----------------------------------------------------------------------


class _Conversation:
    """The chat messages of a list of input items, built in one pass."""

    __slots__ = ("assistant", "images", "messages", "profile", "reasoning")

    def __init__(self, profile: BackendProfile) -> None:
        self.profile = profile
        self.messages: list[Json] = []
        self.assistant: Json | None = None  # the assistant turn items are still joining
        self.reasoning: list[str] = []  # reasoning waiting for the assistant turn it precedes
        self.images: list[Json] = []  # images of tool outputs, for a user message after them

    def add(self, item: rt.InputItem, where: str) -> None:
        handler = _ITEM_HANDLERS.get(item.type)
        if handler is None:
            log.debug("dropping input item of type %s", item.type)
            return
        handler(self, item, where)

    def system(self, text: str) -> None:
        """System text before anything else joins the one leading system message; chat
        templates want it there, and Codex sends several developer messages in a row. Later
        system text (Codex sends developer messages mid-conversation) stays where it is, as a
        user message marked as instructions: templates such as Qwen's refuse a system message
        that is not first, and moving the text to the top would change the start of every
        later prompt, so the server could reuse none of its cached prefix."""
        if not text:
            return
        if not self.messages:
            self.messages.append({"role": "system", "content": text})
        elif len(self.messages) == 1 and self.messages[0]["role"] == "system":
            self.messages[0]["content"] += "\n\n" + text
        else:
            self.close()
            self.messages.append({"role": "user", "content": later_system_text(text)})

    def message(self, item: rt.InputItem, where: str) -> None:
        role = item.role
        if role is None:
            raise InvalidRequest(f"{where}.role: Field required")
        if role in ("system", "developer"):
            self.system(_chat_content_text(item.content))
        elif role == "assistant":
            turn = self.open_assistant()
            turn["content"] += _chat_content_text(item.content)
        else:
            self.close()
            self.messages.append({"role": "user", "content": _chat_content(item.content)})

    def call(self, item: rt.InputItem, where: str) -> None:
        call_id = _required(item.call_id, f"{where}.call_id")
        name = _required(item.name, f"{where}.name")
        if item.type == "custom_tool_call":
            arguments = _json_text({CUSTOM_ARGUMENT: item.input or ""})
        elif item.type == "local_shell_call":
            arguments = _json_text(item.action or {})
        else:
            arguments = item.arguments or "{}"
        turn = self.open_assistant()
        function = {"name": name, "arguments": arguments}
        turn.setdefault("tool_calls", []).append(
            {"id": call_id, "type": "function", "function": function}
        )

    def local_shell_call(self, item: rt.InputItem, where: str) -> None:
        item.call_id = item.call_id or item.id
        item.name = item.name or "local_shell"
        self.call(item, where)

    def output(self, item: rt.InputItem, where: str) -> None:
        call_id = _required(item.call_id, f"{where}.call_id")
        self.end_assistant()
        text, images = _split_images(item.output)
        self.images += images
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": text})

    def local_shell_output(self, item: rt.InputItem, where: str) -> None:
        item.call_id = item.call_id or item.id  # the API names the call by `id` here
        self.output(item, where)

    def reasoning_item(self, item: rt.InputItem, _where: str) -> None:
        text = reasoning_text(item)
        if text:
            self.reasoning.append(text)

    def open_assistant(self) -> Json:
        if self.assistant is None:
            self.flush_images()
            self.assistant = {"role": "assistant", "content": ""}
            self.messages.append(self.assistant)
        return self.assistant

    def end_assistant(self) -> None:
        """The assistant turn is over; its reasoning goes where the backend reads it back."""
        turn, self.assistant = self.assistant, None
        if turn is None:
            return
        reasoning, self.reasoning = self.reasoning, []
        field = self.profile.reasoning_back_field
        if reasoning and field:
            turn[field] = "\n".join(reasoning)

    def close(self) -> None:
        """Before any message that is not the assistant's nor a tool's."""
        self.end_assistant()
        self.reasoning = []
        self.flush_images()

    def flush_images(self) -> None:
        if self.images:
            self.messages.append({"role": "user", "content": self.images})
            self.images = []


def later_system_text(text: str) -> str:
    """System text that comes after the conversation began, marked for the model as such."""
    return f"<{LATER_SYSTEM_TAG}>\n{text}\n</{LATER_SYSTEM_TAG}>"


def _chat_content_text(content: str | list[rt.ContentPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(text for part in content if (text := _part_text(part)))


_ITEM_HANDLERS: dict[str, Callable[[_Conversation, rt.InputItem, str], None]] = {
    "message": _Conversation.message,
    "function_call": _Conversation.call,
    "custom_tool_call": _Conversation.call,
    "local_shell_call": _Conversation.local_shell_call,
    "function_call_output": _Conversation.output,
    "custom_tool_call_output": _Conversation.output,
    "local_shell_call_output": _Conversation.local_shell_output,
    "reasoning": _Conversation.reasoning_item,
}


def to_chat_messages(request: rt.ResponsesRequest, profile: BackendProfile) -> list[Json]:
    conversation = _Conversation(profile)
    conversation.system(request.instructions or "")
    if isinstance(request.input, str):
        if request.input:
            conversation.messages.append({"role": "user", "content": request.input})
    else:
        for position, item in enumerate(request.input):
            conversation.add(item, f"input.{position}")
    conversation.close()
    return conversation.messages


# ---- tools ------------------------------------------------------------------------------------


def _function_tool(tool: rt.Tool, profile: BackendProfile) -> Json:
    function: Json = {
        "name": tool.name,
        "parameters": tool_parameters(tool.parameters, profile),
    }
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def custom_tool_description(tool: rt.Tool) -> str:
    """What the model needs to write a freeform tool's input as a function's string argument:
    the tool's own description, where the string goes, and the grammar it must match."""
    lines = [tool.description or f"The {tool.name} tool."]
    lines.append(
        f"Pass the tool's input, exactly as it would be written, as the string argument "
        f"`{CUSTOM_ARGUMENT}`."
    )
    fmt = tool.format or {}
    if fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        syntax = fmt.get("syntax", "lark")
        lines.append(f"The input must match this {syntax} grammar:\n{fmt['definition']}")
    return "\n\n".join(lines)


def _custom_tool(tool: rt.Tool, _profile: BackendProfile) -> Json:
    argument = {"type": "string", "description": f"The raw input of {tool.name}."}
    parameters = {
        "type": "object",
        "properties": {CUSTOM_ARGUMENT: argument},
        "required": [CUSTOM_ARGUMENT],
    }
    function = {
        "name": tool.name,
        "description": custom_tool_description(tool),
        "parameters": parameters,
    }
    return {"type": "function", "function": function}


_TOOL_BUILDERS: dict[str, Callable[[rt.Tool, BackendProfile], Json]] = {
    "function": _function_tool,
    "custom": _custom_tool,
}


def to_chat_tools(
    tools: list[rt.Tool], profile: BackendProfile, where: str = "tools"
) -> list[Json]:
    """Tools the model can call through the client, a namespace's tools among them (the model
    calls them by their own names); hosted tools (web_search, file_search, tool_search, ...)
    run at OpenAI, not on a local server, and are dropped."""
    converted = []
    for position, tool in enumerate(tools):
        if tool.type == "namespace":
            converted += to_chat_tools(tool.tools or [], profile, f"{where}.{position}.tools")
            continue
        build = _TOOL_BUILDERS.get(tool.type)
        if build is None:
            log.debug("dropping tool of type %s", tool.type)
            continue
        _required(tool.name, f"{where}.{position}.name")
        converted.append(build(tool, profile))
    return converted


def custom_tool_names(request: rt.ResponsesRequest) -> frozenset[str]:
    """The tools whose calls go back as `custom_tool_call` items."""
    return frozenset(_custom_names(request.tools or []))


def _custom_names(tools: list[rt.Tool]) -> list[str]:
    names = [tool.name for tool in tools if tool.type == "custom" and tool.name]
    for tool in tools:
        if tool.type == "namespace":
            names += _custom_names(tool.tools or [])
    return names


def to_chat_tool_choice(choice: str | rt.NamedToolChoice) -> str | Json:
    if isinstance(choice, str):
        return choice if choice in _TOOL_CHOICES else "auto"
    if choice.type in ("function", "custom") and choice.name:
        return {"type": "function", "function": {"name": choice.name}}
    return "auto"  # allowed_tools and hosted tools: the model may call what it was given


# ---- the request ------------------------------------------------------------------------------


def check_stateless(request: rt.ResponsesRequest) -> None:
    if request.previous_response_id is not None:
        raise InvalidRequest(
            "previous_response_id: this gateway stores no responses; send the whole "
            "conversation in `input` (with `store: false`) instead"
        )


def to_chat_request(
    request: rt.ResponsesRequest,
    *,
    model: str,
    profile: BackendProfile,
    stream: bool,
    max_tokens: int,
) -> Json:
    check_stateless(request)
    messages = to_chat_messages(request, profile)
    if not messages:
        raise InvalidRequest("input: expected a non-empty string or array of items")
    body: Json = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": stream}
    if stream:
        # An empty stream_options object crashes mlx_lm.server's stream; always say it in full.
        body["stream_options"] = {"include_usage": True}
    for name in ("temperature", "top_p"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    _copy_tools(request, body, profile)
    _copy_reasoning(request, body, profile)
    _copy_format(request, body)
    return body


def _copy_tools(request: rt.ResponsesRequest, body: Json, profile: BackendProfile) -> None:
    tools = to_chat_tools(request.tools or [], profile)
    if not tools:
        return
    body["tools"] = tools
    if request.tool_choice is not None:
        body["tool_choice"] = to_chat_tool_choice(request.tool_choice)
    if request.parallel_tool_calls is False:
        body["parallel_tool_calls"] = False


def _copy_reasoning(request: rt.ResponsesRequest, body: Json, profile: BackendProfile) -> None:
    effort = request.reasoning.effort if request.reasoning else None
    if effort is not None and profile.thinking_switch == "chat_template_kwargs":
        body["chat_template_kwargs"] = {"enable_thinking": effort not in _REASONING_OFF}


def _copy_format(request: rt.ResponsesRequest, body: Json) -> None:
    fmt = request.text.format if request.text else None
    if fmt is None or fmt.type == "text":
        return
    if fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
        return
    schema: Json = {"name": fmt.name or "response", "schema": fmt.schema or {}}
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    body["response_format"] = {"type": "json_schema", "json_schema": schema}
