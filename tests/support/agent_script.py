"""A turn-by-turn "model" for driving an agent (Claude Code) through the gateway.

`AgentScript(turn0, turn1, ...)` is a `ScriptedBackend` responder. It does not answer in the
order requests arrive: it reads the conversation it is sent and answers the turn the agent is at,
which is the number of assistant messages already in it. An agent that retries a request (after a
dropped stream, say) therefore gets the same turn again, and a turn can be a function of the
request body (`Callable[[dict], Turn]`) to answer from the tool results it received.

A turn can also be an `HttpError`, which the backend answers as it is.

A `Turn` is rendered the way a real OpenAI-compatible server sends it: streamed as a role chunk,
reasoning and text in small pieces, each tool call with its `id` and `name` in the first fragment
and the arguments JSON cut into fragments of a few characters, a finish chunk and a usage chunk;
or as one `chat.completion` when the request says `stream: false`.

Requests the script has no turn for get a backend 400 naming the turn (the gateway turns it into a
400, which an agent does not retry), so a script that runs short fails fast instead of hanging.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tests.support.scripted_backend import (
    Completion,
    Drop,
    HttpError,
    Pause,
    RecordedRequest,
    Reply,
    Stream,
    StreamItem,
    chunk,
)

__all__ = [
    "AgentScript",
    "Call",
    "Turn",
    "TurnSource",
    "assistant_messages",
    "pieces",
    "tool_messages",
]

PIECE = 4  # characters per streamed fragment: small enough to split every word and JSON token
INLINE = "inline"  # `Turn.reasoning_field`: the reasoning goes into the text as <think>...</think>
USAGE = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}


@dataclass(frozen=True)
class Call:
    """One tool call the model makes: a tool name and its input."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Turn:
    """One model answer. `finish_reason` defaults to `tool_calls` with calls, else `stop`.

    `calls_as_text`: the calls are written into the text as `<tool_call>{"name": ...,
    "arguments": {...}}</tool_call>`, as a server without a tool parser sends them (finishing
    with `stop`). `pause_before` (streamed answers only): seconds of silence after the role
    chunk. `drop_after` (streamed answers only): on the first attempt at this turn, the
    connection is aborted after that many chunks; later attempts get the whole answer.
    """

    text: str = ""
    calls: tuple[Call, ...] = ()
    reasoning: str = ""
    reasoning_field: str = "reasoning_content"  # or "reasoning" (mlx_lm.server) or INLINE
    finish_reason: str | None = None
    calls_as_text: bool = False
    pause_before: float = 0
    drop_after: int | None = None

    @property
    def finish(self) -> str:
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.structured_calls else "stop"

    @property
    def structured_calls(self) -> tuple[Call, ...]:
        """The calls sent as OpenAI `tool_calls` (none when they are written as text)."""
        return () if self.calls_as_text else self.calls

    @property
    def content(self) -> str:
        """The text as the server sends it: reasoning and calls inline when so configured."""
        text = self.text
        if self.reasoning and self.reasoning_field == INLINE:
            text = f"<think>{self.reasoning}</think>{text}"
        if self.calls_as_text:
            text += "".join(_tagged(call) for call in self.calls)
        return text


def _tagged(call: Call) -> str:
    body = json.dumps({"name": call.name, "arguments": call.arguments})
    return f"\n<tool_call>\n{body}\n</tool_call>"


TurnSource = Turn | HttpError | Callable[[dict[str, Any]], Turn]


def pieces(text: str, size: int = PIECE) -> list[str]:
    return [text[at : at + size] for at in range(0, len(text), size)]


def call_id(turn: int, index: int) -> str:
    return f"call_t{turn}_{index}"


def assistant_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body.get("messages", []) if m.get("role") == "assistant"]


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body.get("messages", []) if m.get("role") == "tool"]


class AgentScript:
    """A responder that answers turn N of `turns` to a conversation with N assistant messages.

    `attempts[n]` counts the requests that asked for turn n (retries included).
    """

    def __init__(self, *turns: TurnSource) -> None:
        self.turns: Sequence[TurnSource] = turns
        self.attempts: Counter[int] = Counter()
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Reply:
        body = request.json()
        index = len(assistant_messages(body))
        with self._lock:
            self.attempts[index] += 1
            first_attempt = self.attempts[index] == 1
        if index >= len(self.turns):
            message = f"agent script: no turn {index} (the script has {len(self.turns)})"
            return HttpError(400, {"error": {"message": message, "type": "invalid_request"}})
        source = self.turns[index]
        if isinstance(source, HttpError):
            return source
        turn = source if isinstance(source, Turn) else source(body)
        if not body.get("stream"):
            return completion(turn, index)
        return stream(turn, index, drop=first_attempt)


def completion(turn: Turn, index: int) -> Completion:
    calls = [_tool_call(call, index, at) for at, call in enumerate(turn.structured_calls)]
    separate = turn.reasoning and turn.reasoning_field != INLINE
    return Completion(
        text=turn.content or None,
        finish_reason=turn.finish,
        usage=dict(USAGE),
        tool_calls=calls or None,
        reasoning_content=turn.reasoning if separate else None,
    )


def _tool_call(call: Call, index: int, at: int) -> dict[str, Any]:
    function = {"name": call.name, "arguments": json.dumps(call.arguments)}
    return {"id": call_id(index, at), "type": "function", "function": function}


def stream(turn: Turn, index: int, *, drop: bool = False) -> Stream:
    chunks: list[StreamItem] = [chunk({"role": "assistant", "content": ""})]
    if turn.pause_before:
        chunks.append(Pause(turn.pause_before))
    if turn.reasoning and turn.reasoning_field != INLINE:
        chunks += [chunk({turn.reasoning_field: part}) for part in pieces(turn.reasoning)]
    chunks += [chunk({"content": part}) for part in pieces(turn.content)]
    for at, call in enumerate(turn.structured_calls):
        chunks += _call_chunks(call, index, at)
    chunks.append(chunk({}, turn.finish))
    if drop and turn.drop_after is not None:
        return Stream([*chunks[: turn.drop_after], Drop()], usage=None, done=False)
    return Stream(chunks, usage=dict(USAGE))


def _call_chunks(call: Call, index: int, at: int) -> list[StreamItem]:
    opening = {
        "index": at,
        "id": call_id(index, at),
        "type": "function",
        "function": {"name": call.name, "arguments": ""},
    }
    fragments = [
        {"index": at, "function": {"arguments": part}}
        for part in pieces(json.dumps(call.arguments))
    ]
    return [chunk({"tool_calls": [delta]}) for delta in [opening, *fragments]]
