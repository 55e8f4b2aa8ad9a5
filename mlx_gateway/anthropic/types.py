"""Anthropic Messages API wire types (requests in; responses are built as plain dicts).

Decoding and validation happen in one pass with msgspec. Unknown fields are ignored, as the real
API ignores what a newer client may add; unknown content block kinds are refused with the field
named, as the real API does. Block kinds the gateway cannot forward (documents, server tool results)
are still accepted so that a conversation that once contained them keeps working.

Structs are declared with `gc=False`: decoded from JSON they form trees, never cycles, so the
cyclic collector need not track the thousands a long conversation makes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from mlx_gateway import limits
from mlx_gateway.parse.validation import decode_request


class CacheControlled(msgspec.Struct, tag_field="type", omit_defaults=True, gc=False):
    cache_control: dict[str, Any] | None = None


class TextBlock(CacheControlled, tag="text"):
    text: str = ""


class ImageSource(msgspec.Struct, gc=False):
    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(CacheControlled, tag="image"):
    source: ImageSource | None = None


class DocumentBlock(CacheControlled, tag="document"):
    source: dict[str, Any] | None = None
    title: str | None = None


class SearchResultBlock(CacheControlled, tag="search_result"):
    title: str = ""
    source: str = ""
    content: list[TextBlock] = msgspec.field(default_factory=list)


class ToolReferenceBlock(CacheControlled, tag="tool_reference"):
    """What a tool search returns: the name of a tool the client has now loaded."""

    tool_name: str = ""


ToolResultPart = TextBlock | ImageBlock | DocumentBlock | SearchResultBlock | ToolReferenceBlock


class ToolUseBlock(CacheControlled, tag="tool_use"):
    id: str = ""
    name: str = ""
    input: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolResultBlock(CacheControlled, tag="tool_result"):
    tool_use_id: str = ""
    content: str | list[ToolResultPart] | None = None
    is_error: bool = False


class ThinkingBlock(CacheControlled, tag="thinking"):
    thinking: str = ""
    signature: str = ""


class RedactedThinkingBlock(CacheControlled, tag="redacted_thinking"):
    data: str = ""


class ServerToolUseBlock(CacheControlled, tag="server_tool_use"):
    id: str = ""
    name: str = ""
    input: dict[str, Any] = msgspec.field(default_factory=dict)


class WebSearchToolResultBlock(CacheControlled, tag="web_search_tool_result"):
    tool_use_id: str = ""
    content: Any = None


class ContainerUploadBlock(CacheControlled, tag="container_upload"):
    file_id: str = ""


ContentBlock = (
    TextBlock
    | ImageBlock
    | DocumentBlock
    | SearchResultBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | ServerToolUseBlock
    | WebSearchToolResultBlock
    | ContainerUploadBlock
)


class Message(msgspec.Struct, gc=False):
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class Tool(msgspec.Struct, gc=False):
    """`input_schema` stays the client's JSON text: the gateway sends it on unchanged, and the
    20 schemas of a Claude Code request are a third of its bytes (building and re-encoding them
    as dicts was about 11% of the gateway's work on such a request)."""

    name: str
    type: str | None = None
    description: str | None = None
    input_schema: msgspec.Raw = msgspec.Raw()  # empty when absent or null
    defer_loading: bool = False

    def __post_init__(self) -> None:
        schema = memoryview(self.input_schema)
        first = bytes(schema[:1])
        if first == b"n":  # null, the only JSON value that starts so
            self.input_schema = msgspec.Raw()
        elif first not in (b"", b"{"):
            got = _JSON_KINDS.get(first, "number")
            raise ValueError(f"input_schema: Expected `object | null`, got `{got}`")
        elif len(schema) > limits.MAX_TOOL_SCHEMA_BYTES:
            raise ValueError(f"input_schema: longer than {limits.MAX_TOOL_SCHEMA_BYTES} bytes")
        elif not bytes(schema).isascii():
            _check_utf8(bytes(schema))  # a raw value is skipped over, its UTF-8 unchecked


def _check_utf8(raw: bytes) -> None:
    try:
        raw.decode()
    except UnicodeDecodeError:
        raise ValueError("input_schema: Invalid UTF-8 encoded string") from None


_JSON_KINDS = {b"[": "array", b'"': "str", b"t": "bool", b"f": "bool"}


class ToolChoice(msgspec.Struct, gc=False):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class ThinkingConfig(msgspec.Struct, gc=False):
    type: str
    budget_tokens: int | None = None


class Metadata(msgspec.Struct, gc=False):
    user_id: str | None = None


Messages = Annotated[list[Message], msgspec.Meta(min_length=1, max_length=limits.MAX_MESSAGES)]
Tools = Annotated[list[Tool], msgspec.Meta(max_length=limits.MAX_TOOLS)]
StopSequence = Annotated[str, msgspec.Meta(max_length=limits.MAX_STOP_SEQUENCE_CHARS)]
StopSequences = Annotated[list[StopSequence], msgspec.Meta(max_length=limits.MAX_STOP_SEQUENCES)]
# The ranges of the real API: a value it refuses is refused here, not sent to the model.
UnitInterval = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class MessagesRequest(msgspec.Struct, gc=False):
    model: str
    messages: Messages
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=limits.MAX_TOKENS)]
    system: str | list[TextBlock] | None = None
    stop_sequences: StopSequences | None = None
    stream: bool = False
    temperature: UnitInterval | None = None
    top_p: UnitInterval | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    metadata: Metadata | None = None
    tools: Tools | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None


class CountTokensRequest(msgspec.Struct, gc=False):
    """Same shape as MessagesRequest, minus `max_tokens`, which count_tokens does not take."""

    model: str
    messages: Messages
    system: str | list[TextBlock] | None = None
    tools: Tools | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None


_messages_decoder = msgspec.json.Decoder(MessagesRequest)
_count_decoder = msgspec.json.Decoder(CountTokensRequest)


def decode_messages_request(body: bytes) -> MessagesRequest:
    return decode_request(_messages_decoder, body)


def decode_count_tokens_request(body: bytes) -> CountTokensRequest:
    return decode_request(_count_decoder, body)
