"""The Anthropic Messages routes: `POST /v1/messages` and `POST /v1/messages/count_tokens`."""

from __future__ import annotations

from functools import partial

import msgspec

from mlx_gateway.anthropic import types as an
from mlx_gateway.anthropic.affinity import conversation_key
from mlx_gateway.anthropic.answer import assemble_message, to_anthropic_message
from mlx_gateway.anthropic.count import count_request
from mlx_gateway.anthropic.request import gateway_watches_stops, to_openai_request
from mlx_gateway.anthropic.stream import Event, StreamTranslator
from mlx_gateway.backends.backend import Backend
from mlx_gateway.backends.upstream import Upstream
from mlx_gateway.parse.chat import decode_completion
from mlx_gateway.server.observe import RequestRecord
from mlx_gateway.server.rsgi import EventStream, Reply, Request, json_reply
from mlx_gateway.server.state import GatewayState
from mlx_gateway.server.streaming import translated_batches, write_stream

_json = msgspec.json.Encoder()


class MessagesRoutes:
    def __init__(self, state: GatewayState) -> None:
        self.state = state

    async def messages(self, request: Request) -> Reply | EventStream:
        parsed = an.decode_messages_request(request.body)
        model = self.state.router.resolve(parsed.model)

        async def answer(backend: Backend) -> Reply | EventStream:
            return await self._answer(request, parsed, model, backend)

        return await self.state.pool.run(
            model, partial(conversation_key, parsed), answer, request.committed
        )

    async def _answer(
        self, request: Request, parsed: an.MessagesRequest, model: str, backend: Backend
    ) -> Reply | EventStream:
        request.record.routed(parsed.model, model, backend.url)
        profile = backend.profile
        upstream_stream = parsed.stream or gateway_watches_stops(parsed, profile)
        payload = to_openai_request(parsed, model=model, profile=profile, stream=upstream_stream)
        # Before any stream starts: a prompt that cannot fit is a 400, an answer limit that
        # would run past the window is lowered (nothing is counted while no window is known).
        max_tokens, prompt = await backend.context.fit(model, payload, parsed.max_tokens)
        payload["max_tokens"] = max_tokens
        body = _json.encode(payload)
        if upstream_stream:
            translator = StreamTranslator(
                model=model,
                message_id=self.state.message_ids.new(),
                estimated_input_tokens=(
                    prompt.tokens if prompt else estimate_tokens(len(request.body))
                ),
                stop_sequences=parsed.stop_sequences,
            )
            if parsed.stream:
                return await self._stream(request, backend.upstream, body, translator)
            collected = await self._collect(request, backend.upstream, body, translator)
            return json_reply(noted(request, collected))
        answer = await backend.upstream.complete(body)
        message = to_anthropic_message(
            decode_completion(answer),
            model=model,
            message_id=self.state.message_ids.new(),
            stop_sequences=parsed.stop_sequences,
        )
        return json_reply(noted(request, message))

    async def count_tokens(self, request: Request) -> Reply | EventStream:
        """Counts the prompt of the request `/v1/messages` would send for the same body, on the
        backend that request would go to."""
        parsed = an.decode_count_tokens_request(request.body)
        model = self.state.router.resolve(parsed.model)
        backend = self.state.pool.pick(model, partial(conversation_key, parsed))
        request.record.routed(parsed.model, model, backend.url)
        await backend.ready()
        body = count_request(parsed, model=model, profile=backend.profile)
        counted = await backend.context.count(model, body)
        return json_reply({"input_tokens": counted.tokens})

    async def _stream(
        self, request: Request, upstream: Upstream, body: bytes, translator: StreamTranslator
    ) -> Reply | EventStream:
        async with upstream.stream(body) as pieces:
            return await write_stream(
                request,
                pieces,
                translator,
                self.state.heartbeat,
                on_close=lambda closing: note_closing(request.record, closing),
            )

    async def _collect(
        self, request: Request, upstream: Upstream, body: bytes, translator: StreamTranslator
    ) -> Event:
        """A non-streaming answer read from a backend stream, for when the gateway must watch
        the text as it comes (stop sequences): generation ends as soon as one is seen."""
        async with upstream.stream(body) as pieces:
            events = translator.start()
            async for batch in translated_batches(request.record.timed(pieces), translator):
                events += batch
        return assemble_message(events + translator.finish())


def noted(request: Request, message: Event) -> Event:
    request.record.anthropic_usage(message.get("usage"))
    return message


def note_closing(record: RequestRecord, closing: list[Event]) -> None:
    """The final usage, or the error that ended the stream after its 200."""
    for event in closing:
        if event["type"] == "message_delta":
            record.anthropic_usage(event.get("usage"))
        elif event["type"] == "error":
            error = event.get("error") or {}
            record.error = str(error.get("type", "error"))
            record.error_message = str(error.get("message", ""))


def estimate_tokens(byte_count: int) -> int:
    """A first figure for message_start; the final usage carries the backend's real count."""
    return max(byte_count // 4, 1)
