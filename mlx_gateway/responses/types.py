"""OpenAI Responses API wire types (requests in; answers are built as plain dicts).

Input items, their content parts and tools are each one flat Struct keyed by `type` rather than
a tagged union: the API grows new item and tool kinds often, and a newer client (Codex sends the
whole history every turn) must not break the gateway over an item it cannot use anyway. Unknown
fields are ignored; a field of the wrong type is refused with its path named
(`input.3.content: ...`); which fields an item kind needs is checked where it is translated.
Structs are declared with `gc=False`: decoded from JSON they form trees, never cycles.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from mlx_gateway.parse.validation import decode_request


class ContentPart(msgspec.Struct, gc=False):
    """`input_text`, `output_text`, `input_image`, `input_file`, `refusal`, `summary_text`,
    `reasoning_text`."""

    type: str
    text: str | None = None
    image_url: str | None = None
    file_id: str | None = None
    filename: str | None = None
    refusal: str | None = None


class InputItem(msgspec.Struct, gc=False):
    """One item of `input`. A bare `{"role", "content"}` (no `type`) is a message, as the API
    takes it."""

    type: str = "message"
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = None
    id: str | None = None
    name: str | None = None
    arguments: str | None = None
    input: str | None = None
    output: str | list[ContentPart] | None = None
    summary: list[ContentPart] | None = None
    action: dict[str, Any] | None = None


class Tool(msgspec.Struct, gc=False):
    """`parameters` stays the client's JSON text: the gateway sends it on unchanged."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: msgspec.Raw = msgspec.Raw()
    format: dict[str, Any] | None = None  # a custom tool's: {"type": "grammar", ...} or text
    tools: list[Tool] | None = None  # a namespace's: a group of tools called by their own names


class NamedToolChoice(msgspec.Struct, gc=False):
    type: str
    name: str | None = None


class ReasoningConfig(msgspec.Struct, gc=False):
    effort: str | None = None


class TextFormat(msgspec.Struct, gc=False):
    type: str = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class TextConfig(msgspec.Struct, gc=False):
    format: TextFormat | None = None


class ResponsesRequest(msgspec.Struct, gc=False):
    model: str
    input: str | list[InputItem] = ""
    instructions: str | None = None
    tools: list[Tool] | None = None
    tool_choice: str | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: float | None = None
    top_p: float | None = None
    reasoning: ReasoningConfig | None = None
    text: TextConfig | None = None
    stream: bool = False
    previous_response_id: str | None = None
    # Codex names its conversation here; the backend pool keeps a conversation on one server.
    prompt_cache_key: str | None = None


_request_decoder = msgspec.json.Decoder(ResponsesRequest)


def decode_responses_request(body: bytes) -> ResponsesRequest:
    return decode_request(_request_decoder, body)
