"""OpenAI Chat Completions wire types: what backends answer, decoded in one pass.

Requests to backends are built as plain dicts (they are only ever encoded). Responses are decoded
into Structs: typed access, unknown fields ignored, and a shape error is a BadBackendResponse.
Fields that only some servers send (`reasoning_content` from vLLM/llama.cpp/DeepSeek,
`reasoning` from mlx_lm.server and Ollama, vLLM's `stop_reason`) are all declared here, so the
core sees one shape.
"""

from __future__ import annotations

from typing import Any

import msgspec

from mlx_gateway.errors import BadBackendResponse, InvalidRequest


class FunctionCall(msgspec.Struct):
    name: str | None = None
    # Some servers send the arguments already parsed as an object instead of a JSON string.
    arguments: str | dict[str, Any] | None = None


class ToolCall(msgspec.Struct):
    id: str | None = None
    function: FunctionCall | None = None
    index: int | None = None


class ResponseMessage(msgspec.Struct):
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class Choice(msgspec.Struct):
    message: ResponseMessage = msgspec.field(default_factory=ResponseMessage)
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class ChatCompletion(msgspec.Struct):
    choices: list[Choice] = msgspec.field(default_factory=list)
    usage: Usage | None = None


class Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class ChunkChoice(msgspec.Struct):
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class ChatCompletionChunk(msgspec.Struct):
    choices: list[ChunkChoice] = msgspec.field(default_factory=list)
    usage: Usage | None = None


_completion_decoder = msgspec.json.Decoder(ChatCompletion)
_chunk_decoder = msgspec.json.Decoder(ChatCompletionChunk)


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


_object_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


def decode_chat_request(body: bytes) -> dict[str, Any]:
    """Parse an OpenAI chat request just enough to check it and to replace its model."""
    if not body:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        request = _object_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise InvalidRequest("request body must be a JSON object")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: expected a non-empty array")
    if "model" in request and not isinstance(request["model"], str):
        raise InvalidRequest("model: expected a string")
    if not isinstance(request.get("stream", False), bool):
        raise InvalidRequest("stream: expected a boolean")
    return request


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
