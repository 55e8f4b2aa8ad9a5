"""The OpenAI Responses route: `POST /v1/responses` (what Codex CLI speaks), served statelessly
over the backend's chat completions."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import msgspec

from mlx_gateway.backends.backend import Backend
from mlx_gateway.backends.upstream import Upstream
from mlx_gateway.parse.blocks import Event
from mlx_gateway.parse.chat import decode_completion
from mlx_gateway.responses.affinity import conversation_key
from mlx_gateway.responses.request import custom_tool_names, to_chat_request
from mlx_gateway.responses.stream import (
    ResponsesStream,
    encode_events,
    starts_in_reasoning,
    whole_response,
)
from mlx_gateway.responses.types import ResponsesRequest, decode_responses_request
from mlx_gateway.server.observe import RequestRecord
from mlx_gateway.server.rsgi import EventStream, Reply, Request, json_reply
from mlx_gateway.server.state import GatewayState
from mlx_gateway.server.streaming import write_stream

_json = msgspec.json.Encoder()

# The answer limit when the client sets none and the window is unknown: servers' own defaults
# (512 tokens for mlx_lm.server) would cut an agent's answers short.
DEFAULT_MAX_OUTPUT_TOKENS = 32768


class ResponsesRoutes:
    def __init__(self, state: GatewayState) -> None:
        self.state = state

    async def responses(self, request: Request) -> Reply | EventStream:
        parsed = decode_responses_request(request.body)
        model = self.state.router.resolve(parsed.model)

        async def answer(backend: Backend) -> Reply | EventStream:
            return await self._answer(request, parsed, model, backend)

        return await self.state.pool.run(
            model, partial(conversation_key, parsed), answer, request.committed
        )

    async def _answer(
        self, request: Request, parsed: ResponsesRequest, model: str, backend: Backend
    ) -> Reply | EventStream:
        request.record.routed(parsed.model, model, backend.url)
        limit = parsed.max_output_tokens or await self._default_limit(backend, model)
        payload = to_chat_request(
            parsed, model=model, profile=backend.profile, stream=parsed.stream, max_tokens=limit
        )
        # As for /v1/messages: a prompt that cannot fit is a 400 before anything is streamed,
        # and an answer limit that would run past the window is lowered.
        max_tokens, prompt = await backend.context.fit(model, payload, limit)
        payload["max_tokens"] = max_tokens
        body = _json.encode(payload)
        if parsed.stream:
            estimate = prompt.tokens if prompt else max(len(request.body) // 4, 1)
            machine = self._machine(parsed, model, estimate, False)
            return await self._stream(request, backend.upstream, body, machine)
        completion = decode_completion(await backend.upstream.complete(body))
        machine = self._machine(parsed, model, 0, starts_in_reasoning(completion))
        answer = whole_response(completion, machine)
        note_usage(request.record, answer.get("usage"))
        return json_reply(answer)

    @staticmethod
    async def _default_limit(backend: Backend, model: str) -> int:
        return await backend.context.window(model) or DEFAULT_MAX_OUTPUT_TOKENS

    def _machine(
        self, parsed: ResponsesRequest, model: str, estimate: int, in_reasoning: bool
    ) -> ResponsesStream:
        return ResponsesStream(
            model=model,
            response_id="resp_" + self.state.message_ids.new()[4:],
            created_at=int(time.time()),
            estimated_input_tokens=estimate,
            custom_tools=custom_tool_names(parsed),
            starts_in_reasoning=in_reasoning,
        )

    async def _stream(
        self, request: Request, upstream: Upstream, body: bytes, machine: ResponsesStream
    ) -> EventStream:
        async with upstream.stream(body) as pieces:
            return await write_stream(
                request,
                pieces,
                machine,
                self.state.heartbeat,
                encode_events,
                on_close=lambda closing: note_closing(request.record, closing),
            )


def note_closing(record: RequestRecord, closing: list[Event]) -> None:
    """The final usage, or the error that ended the stream after its 200."""
    for event in closing:
        response = event.get("response")
        if not isinstance(response, dict):
            continue
        note_usage(record, response.get("usage"))
        error = response.get("error")
        if isinstance(error, dict):
            record.error = str(error.get("code", "error"))
            record.error_message = str(error.get("message", ""))


def note_usage(record: RequestRecord, usage: Any) -> None:
    if isinstance(usage, dict):
        details = usage.get("input_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        record.usage(usage.get("input_tokens"), usage.get("output_tokens"), cached)
