"""The real `mlx_lm.server` on the tiny model, spoken to directly (no gateway).

These tests pin down both the rig (the model does what `tests/support/tiny_model.py` promises)
and the behaviour of mlx_lm.server 0.32.2 that the gateway has to live with. Observed facts:

* Errors are `{"error": "<message>"}` (a bare string, not the OpenAI error object). A request
  for a model other than `--model` (or `default_model`, or no `model` at all) makes the server
  try to load it; offline that is HTTP 404 `{"error": "Cannot find an appropriate cached snapshot
  folder for the specified revision on the local disk and outgoing traffic has been disabled.
  ..."}`, also when streaming (the error comes before the headers). Image content on a text
  model: HTTP 404 `{"error": "Only 'text' content type is supported."}`. Missing `messages`: 400
  `{"error": "Request did not contain messages"}`; a badly typed parameter: 400 `{"error":
  "temperature must be of type ('float', 'int')"}`; a body without Content-Length (chunked): 411
  `{"error": "Content-Length header is required"}`; an unknown path: 404, plain-text `Not Found`.
* The answer's `model` echoes the request's `model` verbatim (`default_model` when omitted).
* Reasoning comes back as `message.reasoning` / `delta.reasoning` (never `reasoning_content`);
  text after `</think>` keeps its leading space.
* Tool calls: `{"function": {"name": ..., "arguments": "<JSON string>"}, "type": "function",
  "id": "<bare uuid4>"}` (no `call_` prefix), `content: null`, `finish_reason: "tool_calls"`.
  Streamed, the whole call arrives in one chunk (with `index`), never as argument fragments.
  `tool_choice` and `n` are ignored.
* Streaming: the body starts with an SSE comment `: keepalive <processed>/<total>` per prompt
  processing step (at least `: keepalive 1/1`) before any data; every delta repeats `"role":
  "assistant"`; the last choice chunk has `"delta": {"role": "assistant"}` and the
  finish_reason; with `stream_options.include_usage` one more chunk follows with `"choices": []`,
  the usage and `"object": "chat.completion"` (not `.chunk`); then `data: [DONE]`.
* Usage includes `prompt_tokens_details.cached_tokens` (the server's prompt cache; a repeated
  prompt reports all but its last token as cached).
* Stop strings are matched on tokens: a stop string that is not a whole-token sequence of the
  output (`"nargs"` where the model emits `" nargs"`) is cut out of the text but does not stop
  generation.
* `GET /v1/models` lists the resolved `--model` path plus any mlx-looking repos in the hub cache:
  `{"object": "list", "data": [{"id": "/abs/path", "object": "model", "created": ...}]}`.
* No context limit is enforced: a prompt longer than `max_position_embeddings` (4096) is
  processed (transformers only logs a warning), at roughly 1 s per 1000 tokens on this CPU.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.mlx_backend import MlxBackend
from tests.support.tiny_model import build_tiny_model

JSON = dict[str, Any]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
HELLO = [{"role": "user", "content": "Hello"}]


@dataclass
class Stream:
    comments: list[str] = field(default_factory=list)
    chunks: list[JSON] = field(default_factory=list)
    done: bool = False


def _request(backend: MlxBackend, body: JSON) -> urllib.request.Request:
    payload = json.dumps({"model": backend.model, **body}).encode()
    url = f"{backend.url}/v1/chat/completions"
    return urllib.request.Request(url, payload, {"Content-Type": "application/json"})


def chat(backend: MlxBackend, **body: Any) -> JSON:
    with urllib.request.urlopen(_request(backend, body), timeout=60) as response:
        answer: JSON = json.load(response)
        return answer


def chat_error(backend: MlxBackend, **body: Any) -> tuple[int, JSON]:
    with pytest.raises(urllib.error.HTTPError) as caught:
        chat(backend, **body)
    return caught.value.code, json.loads(caught.value.read())


def stream(backend: MlxBackend, **body: Any) -> Stream:
    request = _request(backend, {**body, "stream": True})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers.get_content_type() == "text/event-stream"
        text = response.read().decode()
    result = Stream()
    for event in filter(None, text.split("\n\n")):
        if event.startswith(":"):
            result.comments.append(event)
        elif event == "data: [DONE]":
            result.done = True
        else:
            result.chunks.append(json.loads(event.removeprefix("data: ")))
    return result


def message(answer: JSON) -> JSON:
    choice: JSON = answer["choices"][0]["message"]
    return choice


def test_chat_completion_returns_text_and_usage(mlx_backend: MlxBackend) -> None:
    answer = chat(mlx_backend, messages=HELLO, temperature=0)

    assert answer["object"] == "chat.completion"
    assert answer["model"] == mlx_backend.model
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert message(answer)["role"] == "assistant"
    assert len(message(answer)["content"].split()) > 3
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_greedy_answers_are_deterministic_and_depend_on_the_prompt(
    mlx_backend: MlxBackend,
) -> None:
    first = chat(mlx_backend, messages=HELLO, temperature=0)
    again = chat(mlx_backend, messages=HELLO, temperature=0)
    other = chat(mlx_backend, messages=[{"role": "user", "content": "Capital of France?"}])

    assert message(again)["content"] == message(first)["content"]
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert message(other)["content"] != message(first)["content"]


def test_max_tokens_ends_with_length(mlx_backend: MlxBackend) -> None:
    answer = chat(mlx_backend, messages=HELLO, max_tokens=3)

    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 3


def test_banning_the_end_token_runs_to_max_tokens(mlx_backend: MlxBackend) -> None:
    eos = _end_token_id(mlx_backend)
    answer = chat(mlx_backend, messages=HELLO, max_tokens=80, logit_bias={str(eos): -100})

    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 80


def test_stream_matches_the_plain_answer_and_ends_with_usage(mlx_backend: MlxBackend) -> None:
    plain = chat(mlx_backend, messages=HELLO)
    streamed = stream(mlx_backend, messages=HELLO, stream_options={"include_usage": True})

    assert streamed.comments[0].startswith(": keepalive ")
    *choices, usage = streamed.chunks
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in choices)
    assert text == message(plain)["content"]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in choices)
    assert choices[-1]["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]
    assert usage["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert streamed.done


def test_tools_block_makes_the_model_call_get_weather(mlx_backend: MlxBackend) -> None:
    weather = [{"role": "user", "content": "What's the weather in Paris?"}]
    answer = chat(mlx_backend, messages=weather, tools=[WEATHER_TOOL], temperature=0)

    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert message(answer)["content"] is None
    [call] = message(answer)["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert UUID.fullmatch(call["id"])


def test_streamed_tool_call_arrives_whole_in_one_chunk(mlx_backend: MlxBackend) -> None:
    weather = [{"role": "user", "content": "What's the weather in Paris?"}]
    streamed = stream(mlx_backend, messages=weather, tools=[WEATHER_TOOL])

    deltas = [chunk["choices"][0]["delta"] for chunk in streamed.chunks]
    calls = [call for delta in deltas for call in delta.get("tool_calls", [])]
    assert [call["index"] for call in calls] == [0]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert streamed.chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_after_the_tool_result_the_model_answers_in_text(mlx_backend: MlxBackend) -> None:
    function = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    call = {"id": "call_1", "type": "function", "function": function}
    history = [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    answer = chat(mlx_backend, messages=history, tools=[WEATHER_TOOL])

    assert answer["choices"][0]["finish_reason"] == "stop"
    assert "tool_calls" not in message(answer)
    assert message(answer)["content"]


def test_thinking_kwarg_makes_the_model_reason_first(mlx_backend: MlxBackend) -> None:
    answer = chat(mlx_backend, messages=HELLO, chat_template_kwargs={"thinking": True})
    plain = chat(mlx_backend, messages=HELLO)

    assert message(answer)["reasoning"]
    assert message(answer)["content"].strip() == message(plain)["content"]
    assert "reasoning" not in message(plain)
    assert "<think>" not in message(answer)["content"]


def test_reasoning_streams_as_delta_reasoning(mlx_backend: MlxBackend) -> None:
    streamed = stream(mlx_backend, messages=HELLO, chat_template_kwargs={"thinking": True})

    deltas = [chunk["choices"][0]["delta"] for chunk in streamed.chunks]
    assert "reasoning" in deltas[0]
    assert not any("reasoning_content" in delta for delta in deltas)
    assert any(delta.get("content") for delta in deltas)


def test_unknown_model_is_a_404_with_a_string_error(mlx_backend: MlxBackend) -> None:
    status, body = chat_error(mlx_backend, messages=HELLO, model="nobody/no-such-model")

    assert status == 404
    assert isinstance(body["error"], str)
    assert "outgoing traffic has been disabled" in body["error"]


def test_image_content_is_a_404_with_a_string_error(mlx_backend: MlxBackend) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    content = [{"type": "text", "text": "What is this?"}, image]
    status, body = chat_error(mlx_backend, messages=[{"role": "user", "content": content}])

    assert (status, body) == (404, {"error": "Only 'text' content type is supported."})


def test_models_lists_the_model_path(mlx_backend: MlxBackend) -> None:
    with urllib.request.urlopen(f"{mlx_backend.url}/v1/models", timeout=10) as response:
        listing = json.load(response)

    assert listing["object"] == "list"
    assert [model["id"] for model in listing["data"]] == [mlx_backend.model]


def test_context_window_is_discoverable_but_not_enforced(mlx_backend: MlxBackend) -> None:
    config = json.loads((mlx_backend.model_path / "config.json").read_text())
    long_prompt = [{"role": "user", "content": "hello world " * 2100}]
    answer = chat(mlx_backend, messages=long_prompt, max_tokens=2)

    assert config["max_position_embeddings"] == 4096
    assert answer["usage"]["prompt_tokens"] > 4096


def test_model_build_is_reproducible(mlx_backend: MlxBackend, tmp_path: Path) -> None:
    rebuilt = build_tiny_model(tmp_path)

    assert rebuilt.name == mlx_backend.model_path.name
    assert _digests(rebuilt) == _digests(mlx_backend.model_path)
    assert build_tiny_model(tmp_path) == rebuilt


def _digests(folder: Path) -> dict[str, str]:
    files = sorted(folder.iterdir())
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def _end_token_id(backend: MlxBackend) -> int:
    config = json.loads((backend.model_path / "config.json").read_text())
    eos: int = config["eos_token_id"]
    return eos
