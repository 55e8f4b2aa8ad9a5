"""A backend that measures a real server's prompt cache on the very prompts the gateway builds.

The tiny test model cannot drive an agent: it writes gibberish and calls one made-up tool. So a
session that must exercise tool loops, parallel calls, error results and thinking is scripted
(`tests.support.agent_script`), and the scripted backend answers it. But what the prompt cache
of a real server does with the gateway's prompts can only be learned from the real server.
`CacheProbe` joins the two: it is the responder of a `ScriptedBackend` that sits between the
gateway and the real server, and for every chat request the gateway sends it

1. forwards the identical body to the real server, unstreamed and with `max_tokens: 1`, so the
   server reads that exact prompt (through its own chat template and tokenizer), keeps it in its
   prompt cache and reports how many of its tokens it found there already;
2. records the server's prompt and cached token counts (`Reading`);
3. answers the gateway with the scripted turn.

The server's prompt cache is therefore filled by exactly the prompts the gateway produced, in the
order it produced them, and the counts are the server's own. The scripted assistant turn replaces
what the server generated, so what is measured is precisely whether turn N+1's prompt starts with
turn N's prompt: the property the gateway's translation is responsible for (the answer's own
tokens are the model's business; on a real session they are cached as they are generated).

`forward_answer=True` sends the server's own answer back instead of the scripted one (with the
request's `max_tokens`), for sessions that show reuse with the generated tokens included.

Requests outside the main conversation (a subagent's, which has a system prompt of its own; a
title or a topic asked of the small model, which offers no tools) are side requests: they are read
and recorded too, and answered with a short text, so the main conversation's turns stay in step
with the script. The scripted answers carry the server's own usage of the prompt, so what the
gateway reports to its client can be checked against what the server counted.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.support.agent_script import AgentScript, assistant_messages
from tests.support.scripted_backend import Completion, RecordedRequest, Reply, Stream, chunk

Json = dict[str, Any]
SIDE_ANSWER = "Prompt cache session"
FORWARD_TIMEOUT = 240.0


@dataclass(frozen=True)
class Reading:
    """What the real server said about one prompt the gateway sent."""

    main: bool  # the main conversation, as opposed to a side request
    turn: int  # assistant messages already in the conversation
    prompt_tokens: int
    cached_tokens: int

    @property
    def share(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def cached_tokens(answer: Json) -> int:
    """The cached share of the prompt as the server reports it: llama-server's `timings.cache_n`,
    else the OpenAI usage field (mlx_lm.server, vLLM, newer llama-server)."""
    timings = answer.get("timings") or {}
    if isinstance(timings.get("cache_n"), int):
        return int(timings["cache_n"])
    details = (answer.get("usage") or {}).get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens") or 0)


def system_text(body: Json) -> str:
    messages = body.get("messages") or [{}]
    head = messages[0]
    return str(head.get("content")) if head.get("role") == "system" else ""


class MainConversation:
    """Tells the main conversation's requests from side requests: the main conversation is the
    one of the first request that offers tools, and all its requests share that request's system
    prompt; a subagent has a system prompt of its own, a title or topic request no tools."""

    def __init__(self) -> None:
        self._system: str | None = None

    def __call__(self, body: Json) -> bool:
        if not body.get("tools"):
            return False
        if self._system is None:
            self._system = system_text(body)
        return system_text(body) == self._system


class CacheProbe:
    """`ScriptedBackend` responder: reads every prompt through the real server at `server_url`,
    then answers from `script` (main conversation) or with a short text (side requests)."""

    def __init__(
        self,
        server_url: str,
        script: AgentScript,
        *,
        is_main: Callable[[Json], bool] | None = None,
        forward_answer: bool = False,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.script = script
        self.is_main = is_main or MainConversation()
        self.forward_answer = forward_answer
        self.readings: list[Reading] = []
        self.bodies: list[Json] = []
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Reply:
        body = request.json()
        main = self.is_main(body)
        answer = self._read(body)
        reading = Reading(
            main=main,
            turn=len(assistant_messages(body)),
            prompt_tokens=int(answer["usage"]["prompt_tokens"]),
            cached_tokens=cached_tokens(answer),
        )
        with self._lock:
            self.readings.append(reading)
            self.bodies.append(body)
        if self.forward_answer:
            return _as_reply(answer, stream=bool(body.get("stream")))
        if not main:
            side = _text_answer(SIDE_ANSWER, answer["usage"])
            return _as_reply(side, stream=bool(body.get("stream")))
        return _with_usage(self.script(request), answer["usage"])

    @property
    def main_readings(self) -> list[Reading]:
        with self._lock:
            return [reading for reading in self.readings if reading.main]

    def table(self) -> str:
        """The readings as a table, one row per request, for logs and reports."""
        rows = ["  # | kind | turn | prompt | cached | share"]
        rows.append("----|------|------|--------|--------|-------")
        with self._lock:
            readings = list(self.readings)
        for at, r in enumerate(readings):
            kind = "main" if r.main else "side"
            rows.append(
                f"{at:3} | {kind} | {r.turn:4} | {r.prompt_tokens:6} | {r.cached_tokens:6} | "
                f"{r.share:6.1%}"
            )
        return "\n".join(rows)

    def _read(self, body: Json) -> Json:
        forwarded = {key: value for key, value in body.items() if key != "stream_options"}
        forwarded["stream"] = False
        if not self.forward_answer:
            forwarded["max_tokens"] = 1
        request = urllib.request.Request(
            f"{self.server_url}/v1/chat/completions",
            json.dumps(forwarded).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=FORWARD_TIMEOUT) as response:
            answer: Json = json.loads(response.read())
        return answer


def _with_usage(reply: Reply, usage: Json) -> Reply:
    if isinstance(reply, Stream | Completion):
        return dataclasses.replace(reply, usage=dict(usage))
    return reply


def _text_answer(text: str, usage: Json) -> Json:
    message = {"role": "assistant", "content": text}
    return {"choices": [{"message": message, "finish_reason": "stop"}], "usage": usage}


def _as_reply(answer: Json, *, stream: bool) -> Reply:
    """A server's whole answer, replayed in the form the gateway asked for."""
    choice = answer["choices"][0]
    message = choice["message"]
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    calls = message.get("tool_calls") or None
    if not stream:
        return Completion(
            text=message.get("content"),
            finish_reason=choice.get("finish_reason"),
            usage=answer.get("usage"),
            tool_calls=calls,
            reasoning_content=reasoning,
        )
    chunks = [chunk({"role": "assistant", "content": ""})]
    if reasoning:
        chunks.append(chunk({"reasoning_content": reasoning}))
    if message.get("content"):
        chunks.append(chunk({"content": message["content"]}))
    for index, call in enumerate(calls or []):
        chunks.append(chunk({"tool_calls": [{"index": index, **call}]}))
    chunks.append(chunk({}, choice.get("finish_reason") or "stop"))
    return Stream(list(chunks), usage=answer.get("usage"))
