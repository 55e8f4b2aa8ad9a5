"""The OpenAI Chat Completions route: the request is forwarded as it came, with the resolved
model, and the answer relayed unchanged."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import msgspec

from mlx_gateway.backends.backend import Backend
from mlx_gateway.backends.upstream import Upstream
from mlx_gateway.errors import BadBackendResponse, GatewayError, openai_error_body
from mlx_gateway.openai.affinity import conversation_key
from mlx_gateway.openai.types import raw_json, read_chat_request
from mlx_gateway.parse.chat import Usage, check_completion
from mlx_gateway.parse.relay import EventRelay
from mlx_gateway.parse.sse import DONE, encode_data
from mlx_gateway.server.observe import RequestRecord
from mlx_gateway.server.rsgi import EventStream, Reply, Request
from mlx_gateway.server.state import GatewayState
from mlx_gateway.server.streaming import EVENT_STREAM_HEADERS
from mlx_gateway.textlog import log_failure

log = logging.getLogger("mlx_gateway")

_json = msgspec.json.Encoder()
_json_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


class ChatRoutes:
    def __init__(self, state: GatewayState) -> None:
        self.state = state

    async def chat_completions(self, request: Request) -> Reply | EventStream:
        chat = read_chat_request(request.body)
        payload = chat.fields  # raw JSON values, sent on as they came
        model = self.state.router.resolve(chat.model)
        payload["model"] = raw_json(model)
        options = payload.get("stream_options")
        if options is not None and _json_decoder.decode(options) == {}:
            # mlx_lm.server's stream crashes on an empty stream_options object.
            del payload["stream_options"]
        body = _json.encode(payload)

        async def answer(backend: Backend) -> Reply | EventStream:
            request.record.routed(chat.model, model, backend.url)
            if chat.stream:
                return await self._stream(request, backend.upstream, body)
            answer = await backend.upstream.complete(body)
            check_completion(answer)
            note_usage(request.record, _usage_only(answer))
            return Reply(answer)

        return await self.state.pool.run(
            model, partial(conversation_key, chat), answer, request.committed
        )

    async def _stream(
        self, request: Request, upstream: Upstream, body: bytes
    ) -> Reply | EventStream:
        async with upstream.stream(body) as pieces:
            stream = request.open_stream(EVENT_STREAM_HEADERS)
            relay = EventRelay()
            previous = last = b""
            try:
                async for piece in request.record.timed(pieces):
                    whole = relay.feed(piece)
                    if whole:
                        await stream.write(whole)
                        previous, last = last, whole
                cut_off = relay.failure()
                if cut_off is not None:
                    raise BadBackendResponse(cut_off)
            except GatewayError as error:
                # After the 200 only an error object can say it; no [DONE] follows it.
                log_failure(logging.WARNING, "backend stream failed", error)
                request.record.failed(error)
                await stream.write(encode_data(_json.encode(openai_error_body(error))))
                return stream
            if not relay.saw_done:
                await stream.write(DONE)  # servers that end with the finish reason alone
            note_usage(request.record, usage_at_end(previous + last))
        return stream


# ---- usage, read only where it is: the answer's top level, or the stream's last chunk ----------


class _UsageOnly(msgspec.Struct, gc=False):
    usage: Usage | None = None


_usage_decoder = msgspec.json.Decoder(_UsageOnly)


def _usage_only(body: bytes) -> Usage | None:
    try:
        return _usage_decoder.decode(body).usage
    except msgspec.DecodeError:
        return None


def usage_at_end(tail: bytes) -> Usage | None:
    """The usage chunk among the last two pieces of a stream (it comes last, before
    `[DONE]`); a stream that sent none, or split it wider, leaves the tokens unknown."""
    at = tail.rfind(b'"usage"')
    if at < 0:
        return None
    start = tail.rfind(b"data:", 0, at)
    end = tail.find(b"\n", at)
    if start < 0:
        return None
    return _usage_only(tail[start + 5 : end if end >= 0 else len(tail)])


def note_usage(record: RequestRecord, usage: Usage | None) -> None:
    if usage is None:
        return
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if details is not None else None
    record.usage(usage.prompt_tokens, usage.completion_tokens, cached)
