"""OpenAI Chat Completions wire types: what backends answer, decoded in one pass.

Requests to backends are built as plain dicts (they are only ever encoded). Responses are decoded
into Structs: typed access, unknown fields ignored, and a shape error is a BadBackendResponse.
Fields that only some servers send (`reasoning_content` from vLLM/llama.cpp/DeepSeek,
`reasoning` from mlx_lm.server and Ollama, vLLM's `stop_reason`) are all declared here, so the
core sees one shape. Structs are declared with `gc=False`: they form trees, never cycles, so the
cyclic collector need not track them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from mlx_gateway.errors import BadBackendResponse, InvalidRequest


class FunctionCall(msgspec.Struct, gc=False):
    name: str | None = None
    # Some servers send the arguments already parsed as an object instead of a JSON string.
    arguments: str | dict[str, Any] | None = None


class ToolCall(msgspec.Struct, gc=False):
    id: str | None = None
    function: FunctionCall | None = None
    index: int | None = None


class ResponseMessage(msgspec.Struct, gc=False):
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class PromptTokensDetails(msgspec.Struct, gc=False):
    cached_tokens: int | None = None


class Usage(msgspec.Struct, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class Choice(msgspec.Struct, gc=False):
    message: ResponseMessage = msgspec.field(default_factory=ResponseMessage)
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class ChatCompletion(msgspec.Struct, gc=False):
    choices: list[Choice] = msgspec.field(default_factory=list)
    usage: Usage | None = None


class Delta(msgspec.Struct, gc=False):
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class ChunkChoice(msgspec.Struct, gc=False):
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class ChatCompletionChunk(msgspec.Struct, gc=False):
    choices: list[ChunkChoice] = msgspec.field(default_factory=list)
    usage: Usage | None = None


_completion_decoder = msgspec.json.Decoder(ChatCompletion)
_chunk_decoder = msgspec.json.Decoder(ChatCompletionChunk)
_chunks_decoder = msgspec.json.Decoder(list[ChatCompletionChunk])


def decode_completion(body: bytes) -> ChatCompletion:
    try:
        return _completion_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise BadBackendResponse(f"backend answer is not a chat completion: {exc}") from None


def decode_chunk(data: bytes | str) -> ChatCompletionChunk:
    try:
        return _chunk_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise BadBackendResponse(
            f"backend stream chunk is not a chat completion chunk: {exc}"
        ) from None


def decode_chunk_array(array: bytes, count: int) -> list[ChatCompletionChunk] | None:
    """``count`` chunks given as one JSON array, or None when it holds anything else."""
    try:
        chunks = _chunks_decoder.decode(array)
    except msgspec.DecodeError:
        return None
    return chunks if len(chunks) == count else None


_T = TypeVar("_T")
_object_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class ChatRequest:
    """An OpenAI chat request as the gateway forwards it. Only its top level is decoded: each
    field's value stays raw JSON and is sent on as it came (msgspec writes `Raw` verbatim), so a
    long conversation is copied rather than decoded and encoded again (a third of the time on a
    120 KB request)."""

    fields: dict[str, msgspec.Raw]
    model: str
    stream: bool


_fields_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_messages_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_str_decoder = msgspec.json.Decoder(str)
_bool_decoder = msgspec.json.Decoder(bool)


def read_chat_request(body: bytes) -> ChatRequest:
    """Checks an OpenAI chat request just enough to forward it with another model."""
    if not body:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        if not body.isascii():
            body.decode()  # skipping over a raw value does not check its UTF-8; this does
        fields = _fields_decoder.decode(body)
    except msgspec.ValidationError:
        raise InvalidRequest("request body must be a JSON object") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {_json_error(body, exc)}") from None
    try:
        messages = _messages_decoder.decode(fields.get("messages", b"null"))
    except msgspec.ValidationError:
        messages = []
    if not messages:
        raise InvalidRequest("messages: expected a non-empty array")
    model = _raw_field(fields, "model", _str_decoder, "", "model: expected a string")
    stream = _raw_field(fields, "stream", _bool_decoder, False, "stream: expected a boolean")
    return ChatRequest(fields, model, stream)


def _raw_field(
    fields: dict[str, msgspec.Raw],
    name: str,
    decoder: msgspec.json.Decoder[_T],
    default: _T,
    error: str,
) -> _T:
    raw = fields.get(name)
    if raw is None:
        return default
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError:
        raise InvalidRequest(error) from None


def _json_error(body: bytes, exc: Exception) -> Exception:
    """msgspec's own words for JSON it cannot read (it names the byte)."""
    try:
        _object_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as decode_error:
        return decode_error
    return exc


def decode_chat_request(body: bytes) -> dict[str, Any]:
    """The whole request as plain JSON objects, checked as read_chat_request checks it."""
    read_chat_request(body)
    request: dict[str, Any] = _object_decoder.decode(body)
    return request


def raw_json(value: Any) -> msgspec.Raw:
    return msgspec.Raw(_encoder.encode(value))


def error_message_from_body(body: bytes) -> str:
    """The human part of a backend error body: `{"error": "..."}` (mlx_lm), `{"error": {"message"}}`
    (OpenAI, vLLM, llama.cpp, Ollama), `{"detail": ...}` (FastAPI servers), or the raw text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = _object_decoder.decode(body)
    except msgspec.DecodeError:
        return text[:2000]
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed.get("detail", parsed.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if isinstance(error, str):
            return error
        if error is not None:
            return msgspec.json.encode(error).decode()
    return text[:2000]
