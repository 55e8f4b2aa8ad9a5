"""The conversation a Responses request belongs to, for the backend pool's affinity hashing:
Codex's `prompt_cache_key` (its conversation id) when sent, else the instructions and the first
input item, which every later turn of a stateless conversation repeats."""

from __future__ import annotations

import msgspec

from mlx_gateway.responses.types import ResponsesRequest

_json = msgspec.json.Encoder()


def conversation_key(request: ResponsesRequest) -> str:
    if request.prompt_cache_key:
        return "prompt_cache_key:" + request.prompt_cache_key
    given = request.input
    first = given if isinstance(given, str) else _json.encode(given[:1]).decode()
    return "opening:" + (request.instructions or "") + "\x00" + first
