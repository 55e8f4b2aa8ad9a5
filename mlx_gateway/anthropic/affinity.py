"""The conversation a Messages request belongs to, as a string for the backend pool's affinity
hashing: turns of one conversation should reach the server that holds its prompt cache.

Claude Code writes its session into `metadata.user_id` (`..._session_<uuid>`, or a JSON object
with `session_id`): the whole value is stable for the session, so it is the key as it is.
Without it, the system prompt (less Claude Code's per-request billing line) and the first user
message are what every later turn of the conversation repeats unchanged.
"""

from __future__ import annotations

import msgspec

from mlx_gateway.anthropic import types as an
from mlx_gateway.anthropic.request import system_text

_json = msgspec.json.Encoder()


def conversation_key(request: an.MessagesRequest | an.CountTokensRequest) -> str:
    metadata = getattr(request, "metadata", None)
    if isinstance(metadata, an.Metadata) and metadata.user_id:
        return "user:" + metadata.user_id
    first_user = next((m for m in request.messages if m.role == "user"), request.messages[0])
    content = first_user.content
    opening = content if isinstance(content, str) else _json.encode(content).decode()
    return "opening:" + system_text(request.system) + "\x00" + opening
