"""`POST /v1/messages/count_tokens`: what is counted is the prompt of the OpenAI request that
`/v1/messages` would send for the same body, so the backends wing counts an OpenAI body and never
needs to know Anthropic's shapes."""

from __future__ import annotations

from mlx_gateway.anthropic import types as an
from mlx_gateway.anthropic.request import to_openai_request
from mlx_gateway.backends.profiles import BackendProfile
from mlx_gateway.backends.tokens import Json, prompt_part


def count_request(request: an.CountTokensRequest, *, model: str, profile: BackendProfile) -> Json:
    """The prompt part of what `/v1/messages` would send for the same body."""
    as_messages = an.MessagesRequest(
        model=request.model,
        messages=request.messages,
        max_tokens=1,
        system=request.system,
        tools=request.tools,
        tool_choice=request.tool_choice,
        thinking=request.thinking,
    )
    return prompt_part(to_openai_request(as_messages, model=model, profile=profile, stream=False))
