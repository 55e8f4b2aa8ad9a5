"""OpenAI Chat Completions requests as clients send them, read just enough to forward them.

What backends answer is decoded in parse/chat.py, which every wing reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from mlx_gateway import limits
from mlx_gateway.errors import InvalidRequest, NestedTooDeeply

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


class _Message(msgspec.Struct, gc=False):
    """Only what every message must have; its content is skipped over, not decoded."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]


_fields_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_str_decoder = msgspec.json.Decoder(str)
_bool_decoder = msgspec.json.Decoder(bool)


def _between(low: float, high: float) -> Any:
    return Annotated[float, msgspec.Meta(ge=low, le=high)]


_Tokens = Annotated[int, msgspec.Meta(ge=1, le=limits.MAX_TOKENS)]
_Stop = Annotated[str, msgspec.Meta(max_length=limits.MAX_STOP_SEQUENCE_CHARS)]
# The fields the real API types and bounds, as it documents them: a request it would refuse is
# refused here rather than forwarded. Anything else is the backend's to judge, as it came.
_CHECKED: dict[str, Any] = {
    "messages": Annotated[
        list[_Message], msgspec.Meta(min_length=1, max_length=limits.MAX_MESSAGES)
    ],
    "max_tokens": _Tokens | None,
    "max_completion_tokens": _Tokens | None,
    "temperature": _between(0.0, 2.0) | None,
    "top_p": _between(0.0, 1.0) | None,
    "presence_penalty": _between(-2.0, 2.0) | None,
    "frequency_penalty": _between(-2.0, 2.0) | None,
    "n": Annotated[int, msgspec.Meta(ge=1, le=128)] | None,
    "stop": _Stop | Annotated[list[_Stop], msgspec.Meta(max_length=limits.MAX_OPENAI_STOPS)] | None,
    "seed": int | None,
    "logprobs": bool | None,
    "top_logprobs": Annotated[int, msgspec.Meta(ge=0, le=20)] | None,
    "parallel_tool_calls": bool | None,
    "tools": Annotated[list[dict[str, msgspec.Raw]], msgspec.Meta(max_length=limits.MAX_TOOLS)]
    | None,
    "tool_choice": str | dict[str, msgspec.Raw] | None,
    "stream_options": dict[str, msgspec.Raw] | None,
    "response_format": dict[str, msgspec.Raw] | None,
    "user": str | None,
}
_checks = {name: msgspec.json.Decoder(kind) for name, kind in _CHECKED.items()}


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
    except RecursionError:
        raise NestedTooDeeply() from None
    if "messages" not in fields:
        raise InvalidRequest(_NO_MESSAGES)
    model = _raw_field(fields, "model", _str_decoder, "", "model: expected a string")
    stream = _raw_field(fields, "stream", _bool_decoder, False, "stream: expected a boolean")
    _check_fields(fields)
    return ChatRequest(fields, model, stream)


_NO_MESSAGES = "messages: expected a non-empty array"


def _check_fields(fields: dict[str, msgspec.Raw]) -> None:
    """Each typed field checked alone: a handful of small decodes, not the body once more."""
    for name, raw in fields.items():
        check = _checks.get(name)
        if check is None:
            continue
        try:
            check.decode(raw)
        except msgspec.ValidationError as exc:
            if name == "messages" and "`$[" not in str(exc):  # not an array, or empty
                raise InvalidRequest(_NO_MESSAGES) from None
            raise InvalidRequest(_named(name, str(exc))) from None


def _named(name: str, error: str) -> str:
    """`Expected int - at `$[0].role`` for field messages -> `messages.0.role: Expected int`."""
    what, _, where = error.partition(" - at `$")
    path = where.rstrip("`").replace("[", ".").replace("]", "")
    return f"{name}{path}: {what}"


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
