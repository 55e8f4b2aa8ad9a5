"""OpenAI Chat Completions requests as clients send them, read just enough to forward them.

What backends answer is decoded in parse/chat.py, which every wing reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from mlx_gateway.errors import InvalidRequest

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
