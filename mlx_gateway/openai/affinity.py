"""The conversation a Chat Completions request belongs to, for the backend pool's affinity
hashing: the client's own `prompt_cache_key` or `user` when it sends one, else the raw JSON of
the messages up to the first user message (system prompt included), which later turns repeat
byte for byte."""

from __future__ import annotations

import msgspec

from mlx_gateway.openai.types import ChatRequest

_messages = msgspec.json.Decoder(list[msgspec.Raw])
_string = msgspec.json.Decoder(str)


class _Role(msgspec.Struct):
    role: str = ""


_role = msgspec.json.Decoder(_Role)


def conversation_key(request: ChatRequest) -> str:
    for field in ("prompt_cache_key", "user"):
        raw = request.fields.get(field)
        if raw is not None:
            try:
                return f"{field}:" + _string.decode(raw)
            except msgspec.DecodeError:
                pass
    return "opening:" + _opening(request.fields.get("messages", msgspec.Raw(b"[]")))


def _opening(raw: msgspec.Raw) -> str:
    try:
        messages = _messages.decode(raw)
    except msgspec.DecodeError:
        return ""
    opening = []
    for message in messages:
        opening.append(bytes(message).decode())
        try:
            if _role.decode(message).role == "user":
                break
        except msgspec.DecodeError:
            break
    return "\x00".join(opening)
