"""The OpenAI Chat Completions route: the request is forwarded as it came, with the resolved
model, and the answer relayed unchanged."""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from mlx_gateway.errors import GatewayError, openai_error_body
from mlx_gateway.openai.types import raw_json, read_chat_request
from mlx_gateway.parse.sse import DONE, encode_data
from mlx_gateway.server.rsgi import EventStream, Reply, Request
from mlx_gateway.server.state import GatewayState
from mlx_gateway.server.streaming import EVENT_STREAM_HEADERS

log = logging.getLogger("mlx_gateway")

_json = msgspec.json.Encoder()
_json_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


class ChatRoutes:
    def __init__(self, state: GatewayState) -> None:
        self.state = state

    async def chat_completions(self, request: Request) -> Reply | EventStream:
        chat = read_chat_request(request.body)
        payload = chat.fields  # raw JSON values, sent on as they came
        payload["model"] = raw_json(self.state.router.resolve(chat.model))
        options = payload.get("stream_options")
        if options is not None and _json_decoder.decode(options) == {}:
            # mlx_lm.server's stream crashes on an empty stream_options object.
            del payload["stream_options"]
        if chat.stream:
            return await self._stream(request, _json.encode(payload))
        answer = await self.state.upstream.complete(_json.encode(payload))
        return Reply(answer)

    async def _stream(self, request: Request, body: bytes) -> Reply | EventStream:
        async with self.state.upstream.stream(body) as pieces:
            stream = request.open_stream(EVENT_STREAM_HEADERS)
            ended = False
            try:
                async for piece in pieces:
                    await stream.write(piece)
                    ended = piece.rstrip().endswith(b"[DONE]")
            except GatewayError as error:
                log.warning("backend stream failed: %s", error.message)
                await stream.write(encode_data(_json.encode(openai_error_body(error))))
            else:
                if not ended:
                    await stream.write(DONE)
        return stream
