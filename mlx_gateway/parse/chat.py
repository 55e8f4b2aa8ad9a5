"""OpenAI Chat Completions as backends answer it, decoded in one pass: the vocabulary every
wing's answer translation reads.

Requests to backends are built as plain dicts (they are only ever encoded). Answers are decoded
into Structs: typed access, unknown fields ignored, and a shape error is a BadBackendResponse.
Fields that only some servers send (`reasoning_content` from vLLM/llama.cpp/DeepSeek,
`reasoning` from mlx_lm.server and Ollama, vLLM's `stop_reason`) are all declared here, so the
core sees one shape. Structs are declared with `gc=False`: they form trees, never cycles, so the
cyclic collector need not track them.

An answer or chunk that carries an `error` object (llama.cpp and vLLM send one mid-stream when
generation fails, after their 200) is a failure of the answer, raised here while decoding so
that every wing ends its stream the way its protocol fails, instead of reading it as an empty
chunk and making up an end.
"""

from __future__ import annotations

from typing import Any

import msgspec

from mlx_gateway.errors import BackendStreamFailed, BadBackendResponse


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


class CompletionTokensDetails(msgspec.Struct, gc=False):
    reasoning_tokens: int | None = None


class Usage(msgspec.Struct, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class ErrorObject(msgspec.Struct, gc=False):
    """What servers put in an error frame; `code` is an HTTP status (llama.cpp, vLLM) or a
    word."""

    message: str | None = None
    type: str | None = None
    code: str | int | None = None


class Choice(msgspec.Struct, gc=False):
    message: ResponseMessage = msgspec.field(default_factory=ResponseMessage)
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class ChatCompletion(msgspec.Struct, gc=False):
    choices: list[Choice] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    error: ErrorObject | str | None = None


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
    error: ErrorObject | str | None = None


class _CompletionShape(msgspec.Struct, gc=False):
    """What an answer relayed unchanged must be: an object with a `choices` array."""

    choices: list[msgspec.Raw]


_completion_decoder = msgspec.json.Decoder(ChatCompletion)
_shape_decoder = msgspec.json.Decoder(_CompletionShape)
_chunk_decoder = msgspec.json.Decoder(ChatCompletionChunk)
_chunks_decoder = msgspec.json.Decoder(list[ChatCompletionChunk])


def decode_completion(body: bytes) -> ChatCompletion:
    try:
        completion = _completion_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise BadBackendResponse(f"backend answer is not a chat completion: {exc}") from None
    if completion.error is not None:
        raise stream_error(completion.error)
    return completion


def check_completion(body: bytes) -> None:
    """Raises BadBackendResponse unless `body` is a chat completion (HTML, an empty or a cut off
    body answered with a 200 is the backend's failure, not an answer to relay)."""
    try:
        _shape_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise BadBackendResponse(f"backend answer is not a chat completion: {exc}") from None


def decode_chunk(data: bytes | str) -> ChatCompletionChunk:
    try:
        chunk = _chunk_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise BadBackendResponse(
            f"backend stream chunk is not a chat completion chunk: {exc}"
        ) from None
    if chunk.error is not None:
        raise stream_error(chunk.error)
    return chunk


def decode_chunk_array(array: bytes, count: int) -> list[ChatCompletionChunk] | None:
    """``count`` chunks given as one JSON array, or None when it holds anything else."""
    try:
        chunks = _chunks_decoder.decode(array)
    except msgspec.DecodeError:
        return None
    if array.find(b'"error"') >= 0:  # a byte search first: chunks are looked at only then
        for chunk in chunks:
            if chunk.error is not None:
                raise stream_error(chunk.error)
    return chunks if len(chunks) == count else None


def stream_error(error: ErrorObject | str) -> BackendStreamFailed:
    """The failure an error frame reports, in the backend's words."""
    if isinstance(error, str):
        return BackendStreamFailed(error or "unknown error")
    message = error.message or error.type or "unknown error"
    return BackendStreamFailed(message)


def plain_text(chunk: ChatCompletionChunk) -> str:
    """The text of a chunk that carries text and nothing else; "" for any other chunk."""
    delta = lone_delta(chunk)
    if delta is None or delta.reasoning_content or delta.reasoning:
        return ""
    return delta.content or ""


def lone_delta(chunk: ChatCompletionChunk) -> Delta | None:
    """The delta of a chunk that has one choice, no usage, no finish and no tool call."""
    if chunk.usage is not None or len(chunk.choices) != 1:
        return None
    choice = chunk.choices[0]
    if choice.finish_reason is not None or choice.delta.tool_calls:
        return None
    return choice.delta


def completion_as_chunk(completion: ChatCompletion) -> ChatCompletionChunk:
    """A whole answer as the one chunk that carries all of it, for a wing's stream machine:
    whole answers and streams then go through the same translation."""
    choice = completion.choices[0] if completion.choices else None
    if choice is None:
        return ChatCompletionChunk(usage=completion.usage)
    message = choice.message
    calls = [
        ToolCall(id=call.id, function=call.function, index=position)
        for position, call in enumerate(message.tool_calls or [])
    ]
    delta = Delta(
        content=message.content,
        tool_calls=calls or None,
        reasoning_content=message.reasoning_content,
        reasoning=message.reasoning,
    )
    chunk_choice = ChunkChoice(
        delta=delta, finish_reason=choice.finish_reason, stop_reason=choice.stop_reason
    )
    return ChatCompletionChunk(choices=[chunk_choice], usage=completion.usage)
