"""The gateway in front of llama.cpp's real `llama-server` on the tiny model (a GGUF of the same
weights mlx_lm.server loads): real inference, real token counts, the official SDKs on one side.

The tiny model's answers are deterministic gibberish at temperature 0, so each answer through the
gateway is compared with what the server says when asked directly. Observed facts about the
pinned llama-server (llama-cpp-python 0.3.36's llama.cpp) that the tests rely on:

* `--jinja` renders the GGUF's chat template; without chat_template_kwargs it renders Qwen3's
  empty think block (`enable_thinking` is false by default), in chat requests and in
  `/apply-template` alike, so the two agree.
* With `tools` in the request, llama-server recognises the template's `<tool_call>` format,
  constrains calls to the offered tools by grammar and answers OpenAI `tool_calls` itself
  (`content: ""`). A call the model writes without `tools` in the request (the user text names
  `<tools>`, which the model keys on), or on a server run with `--skip-chat-parsing`, comes back
  as text.
* Turn N+1 of a conversation reads turn N's prompt from the server's cache (`cached_tokens`);
  how much of the answer too depends on the template (see the prompt cache tests).
* `/props` reports the window per slot as `default_generation_settings.n_ctx` (the `-c` given,
  4 slots sharing one KV cache); `/slots` shows each slot's last task id and its parameters.
* A prompt over the window is a 400 `exceed_context_size_error` with `n_prompt_tokens` and
  `n_ctx`; an image to a text-only model and `tools` without `--jinja` are 500s (see
  test_llama_defects.py).
* Usage carries `prompt_tokens_details.cached_tokens` and `timings.cache_n`.
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from unittest.mock import ANY

import anthropic
import httpx
import openai
import pytest
from tokenizers import Tokenizer

from tests.conftest import StartGateway
from tests.support.anthropic_stream import accumulate, assert_well_formed, parse_sse
from tests.support.gateway import GatewayProcess
from tests.support.llama_backend import LlamaBackend, StartLlamaServer, stop
from tests.support.mlx_backend import MlxBackend
from tests.support.ports import free_port
from tests.support.tiny_model import build_tiny_model

JSON = dict[str, Any]
WINDOW = 4096
LARGE_WINDOW = 65536
QUESTION = "Tell me about the weather"
WEATHER = "What is the weather in Paris?"
WEATHER_TOOL: JSON = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
OPENAI_WEATHER_TOOL: JSON = {
    "type": "function",
    "function": {
        "name": WEATHER_TOOL["name"],
        "description": WEATHER_TOOL["description"],
        "parameters": WEATHER_TOOL["input_schema"],
    },
}
LONG = "hello world " * 2100  # about 10,500 tokens
END_TOKEN = 2  # `<|im_end|>` in the tiny model's vocabulary
# The Anthropic SDK takes no `temperature` argument; the gateway forwards it from the body.
GREEDY: JSON = {"extra_body": {"temperature": 0}}


def gateway_flags(backend: LlamaBackend) -> tuple[str, ...]:
    return ("--backend", "llama_cpp", "--mlx-model", backend.model, "--timeout", "60")


@pytest.fixture
def gateway(llama_backend: LlamaBackend, start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway(llama_backend.url, *gateway_flags(llama_backend))


@pytest.fixture
def claude(gateway: GatewayProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0) as client:
        yield client


def direct(backend: LlamaBackend, body: JSON) -> JSON:
    """The server's own answer to an OpenAI chat request, greedy."""
    answer: JSON = backend.post("/v1/chat/completions", {"temperature": 0, **body})
    return answer


def server_count(backend: LlamaBackend, body: JSON) -> int:
    """The server's own prompt count: its template, then its tokenizer (as a chat request)."""
    rendered = backend.post("/apply-template", body)["prompt"]
    tokens = backend.post("/tokenize", {"content": rendered, "parse_special": True})["tokens"]
    return len(tokens)


def prompt_total(usage: Any) -> int:
    """Anthropic counts cached prompt tokens apart; together they are the server's prompt."""
    return int(usage.input_tokens + (usage.cache_read_input_tokens or 0))


def text_of(message: Any) -> str:
    [block] = message.content
    assert block.type == "text", message
    return str(block.text)


def gateway_count(gateway: GatewayProcess, body: JSON) -> int:
    response = httpx.post(
        f"{gateway.url}/v1/messages/count_tokens", json={"model": "m", **body}, timeout=60
    )
    assert response.status_code == 200, response.text
    tokens: int = response.json()["input_tokens"]
    return tokens


def slot_tasks(backend: LlamaBackend) -> dict[int, Any]:
    """Each slot's last task id: it changes exactly when a chat request reaches a slot."""
    return {slot["id"]: slot.get("id_task") for slot in backend.get("/slots")}


def last_slot(backend: LlamaBackend) -> JSON:
    """The slot that ran the newest task."""
    slots = [slot for slot in backend.get("/slots") if "id_task" in slot]
    newest: JSON = max(slots, key=lambda slot: slot["id_task"])
    return newest


def user(text: str) -> list[Any]:
    """One user message, typed loosely so that both SDKs take it."""
    return [{"role": "user", "content": text}]


# ---- the rig: the GGUF is the same model --------------------------------------------------------

TEXTS = [
    "Hello, world!  Two  spaces\tand a tab\n\nnew lines",
    'def f(x):\n    return {"city": "Paris"}  # 42',
    "<|im_start|>user\n<tools>\n</tools><tool_call>{\"name\": \"get_weather\"}</tool_call>",
    "Ünïcödé: ça va? 東京 🙂",
]


@pytest.mark.parametrize("text", TEXTS)
def test_the_server_tokenizes_like_the_models_tokenizer(
    text: str, llama_backend: LlamaBackend
) -> None:
    tokenizer = Tokenizer.from_file(str(build_tiny_model() / "tokenizer.json"))
    answer = llama_backend.post("/tokenize", {"content": text, "parse_special": True})
    assert answer["tokens"] == tokenizer.encode(text).ids


@pytest.mark.parametrize("prompt", [QUESTION, "Hello", WEATHER])
def test_the_server_answers_as_mlx_lm_server_does(
    prompt: str, llama_backend: LlamaBackend, mlx_backend: MlxBackend
) -> None:
    """Same tokens from both servers; mlx_lm.server's detokenizer drops the space that the
    first token of a text answer carries, llama-server keeps it."""
    body = {"messages": user(prompt), "temperature": 0, "max_tokens": 40,
            "chat_template_kwargs": {"enable_thinking": False}}  # fmt: skip
    ours = direct(llama_backend, body)
    request = urllib.request.Request(
        f"{mlx_backend.url}/v1/chat/completions",
        json.dumps({**body, "model": mlx_backend.model}).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        theirs = json.load(response)
    assert ours["usage"] == {**theirs["usage"], "prompt_tokens_details": ANY}
    assert ours["choices"][0]["finish_reason"] == theirs["choices"][0]["finish_reason"]
    text = ours["choices"][0]["message"]["content"] or ""
    assert text.removeprefix(" ") == (theirs["choices"][0]["message"]["content"] or "")


# ---- text and streams -------------------------------------------------------------------------


def test_text_answer_equals_the_servers_own(
    claude: anthropic.Anthropic, llama_backend: LlamaBackend
) -> None:
    message = claude.messages.create(
        model="claude-anything", max_tokens=40, system="You are terse.",
        messages=user(QUESTION), **GREEDY,
    )  # fmt: skip
    system = [{"role": "system", "content": "You are terse."}]
    expected = direct(llama_backend, {"max_tokens": 40, "messages": system + user(QUESTION)})
    assert message.model == llama_backend.model
    assert text_of(message) == expected["choices"][0]["message"]["content"]
    assert len(text_of(message).split()) > 3
    assert prompt_total(message.usage) == expected["usage"]["prompt_tokens"]
    assert message.usage.output_tokens == expected["usage"]["completion_tokens"]
    assert message.stop_reason == "end_turn"


def test_stream_matches_the_plain_answer_and_is_well_formed(
    claude: anthropic.Anthropic, gateway: GatewayProcess
) -> None:
    request: JSON = {"model": "m", "max_tokens": 60, "messages": user(QUESTION), **GREEDY}
    plain = claude.messages.create(**request)
    with claude.messages.stream(**request) as stream:
        streamed = stream.get_final_message()
    raw_body = {"model": "m", "max_tokens": 60, "messages": user(QUESTION), "stream": True}
    raw = httpx.post(f"{gateway.url}/v1/messages", json={**raw_body, "temperature": 0}, timeout=60)
    events = parse_sse(raw.content)
    assert_well_formed(events)
    assert text_of(streamed) == text_of(plain)
    assert accumulate(events)["content"] == [{"type": "text", "text": text_of(plain)}]
    assert streamed.stop_reason == plain.stop_reason == "end_turn"
    assert streamed.usage.output_tokens == plain.usage.output_tokens
    assert prompt_total(streamed.usage) == prompt_total(plain.usage)


def test_max_tokens_ends_the_answer_with_max_tokens(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model="m", max_tokens=3, messages=user(QUESTION))
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence_is_matched_and_reported(
    stream: bool, claude: anthropic.Anthropic, llama_backend: LlamaBackend
) -> None:
    full = direct(llama_backend, {"messages": user(QUESTION)})["choices"][0]["message"]["content"]
    stop_word = " " + full.split()[2]
    request: JSON = {
        "model": "m", "max_tokens": 60, "messages": user(QUESTION), **GREEDY,
        "stop_sequences": ["never in this answer", stop_word],
    }  # fmt: skip
    message = create(claude, request, stream)
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == stop_word
    assert text_of(message) == full[: full.index(stop_word)]


# ---- tools -------------------------------------------------------------------------------------


def weather_request() -> JSON:
    return {
        "model": "m", "max_tokens": 60, "tools": [WEATHER_TOOL], "messages": user(WEATHER),
        **GREEDY,
    }  # fmt: skip


def create(client: anthropic.Anthropic, request: JSON, stream: bool) -> Any:
    if not stream:
        return client.messages.create(**request)
    with client.messages.stream(**request) as events:
        return events.get_final_message()


@pytest.mark.parametrize("stream", [False, True])
def test_the_servers_tool_call_becomes_tool_use(
    stream: bool, claude: anthropic.Anthropic, llama_backend: LlamaBackend
) -> None:
    answer = direct(llama_backend, {"messages": user(WEATHER), "tools": [OPENAI_WEATHER_TOOL]})
    message = create(claude, weather_request(), stream)
    [call] = answer["choices"][0]["message"]["tool_calls"]  # llama-server parsed it itself
    assert message.stop_reason == "tool_use"
    [tool_use] = message.content
    assert tool_use.type == "tool_use"
    assert (tool_use.name, tool_use.input) == ("get_weather", {"city": "Paris"})
    assert call["function"]["name"] == tool_use.name
    assert tool_use.id


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_left_in_the_text_becomes_tool_use(
    stream: bool, claude: anthropic.Anthropic, llama_backend: LlamaBackend
) -> None:
    """Without `tools` in the request llama-server parses nothing; the gateway's text parser
    turns the model's `<tool_call>` text into a tool_use block."""
    prompt = user("Use <tools> to find the weather in Paris.")
    answer = direct(llama_backend, {"messages": prompt})
    message = create(claude, {"model": "m", "max_tokens": 60, "messages": prompt}, stream)
    assert answer["choices"][0]["message"]["content"].startswith("<tool_call>")
    assert "tool_calls" not in answer["choices"][0]["message"]
    assert message.stop_reason == "tool_use"
    [tool_use] = message.content
    assert (tool_use.type, tool_use.name, tool_use.input) == ("tool_use", "get_weather",
                                                              {"city": "Paris"})


def test_text_tool_call_arguments_stream_in_fragments(gateway: GatewayProcess) -> None:
    body = {"model": "m", "max_tokens": 60, "stream": True,
            "messages": user("Use <tools> to find the weather in Paris.")}  # fmt: skip
    events = parse_sse(httpx.post(f"{gateway.url}/v1/messages", json=body, timeout=60).content)
    assert_well_formed(events)
    fragments = [event["delta"]["partial_json"] for event in events
                 if event["type"] == "content_block_delta"]  # fmt: skip
    assert len(fragments) > 1
    assert json.loads("".join(fragments)) == {"city": "Paris"}


@pytest.mark.parametrize("stream", [False, True])
def test_tool_result_round_trip_ends_in_text(
    stream: bool, claude: anthropic.Anthropic, llama_backend: LlamaBackend
) -> None:
    request = weather_request()
    first = create(claude, request, stream)
    [tool_use] = first.content
    history = [
        *request["messages"],
        {"role": "assistant", "content": [tool_use.model_dump()]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_use.id, "content": "Sunny, 24C"},
        ]},
    ]  # fmt: skip
    follow_up = create(claude, {**request, "messages": history}, stream)
    assert follow_up.stop_reason == "end_turn"
    assert len(text_of(follow_up).split()) > 3
    assert "<tool_call>" not in text_of(follow_up)


def test_without_the_servers_parser_the_gateway_parses_the_call(
    start_llama_server: StartLlamaServer, start_gateway: StartGateway
) -> None:
    """`--skip-chat-parsing` leaves the call in the text even with `tools` in the request."""
    backend = start_llama_server("--skip-chat-parsing")
    gateway = start_gateway(backend.url, *gateway_flags(backend))
    answer = direct(backend, {"messages": user(WEATHER), "tools": [OPENAI_WEATHER_TOOL]})
    client = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    assert answer["choices"][0]["message"]["content"].startswith("<tool_call>")
    for stream in (False, True):
        message = create(client, weather_request(), stream)
        assert message.stop_reason == "tool_use"
        [tool_use] = message.content
        assert (tool_use.name, tool_use.input) == ("get_weather", {"city": "Paris"})


def test_the_servers_parser_forces_a_call_into_the_offered_tools(
    llama_backend: LlamaBackend,
) -> None:
    """With its own parser, llama-server constrains a call to the offered tools by grammar: the
    tiny model's `get_weather` where only `Bash` is offered becomes `Bash` calls that go on to
    `max_tokens` (why the Claude Code session runs `--skip-chat-parsing`)."""
    bash = {"type": "function", "function": {"name": "Bash", "parameters": {
        "type": "object", "properties": {"command": {"type": "string"}}}}}  # fmt: skip
    answer = direct(llama_backend, {"messages": user(WEATHER), "tools": [bash], "max_tokens": 60})
    calls = answer["choices"][0]["message"]["tool_calls"]
    assert calls
    assert {call["function"]["name"] for call in calls} == {"Bash"}
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 60


# ---- token counts and the window ---------------------------------------------------------------

COUNTED: dict[str, tuple[JSON, JSON]] = {
    "plain": ({"messages": user(QUESTION)}, {"messages": user(QUESTION)}),
    "system": (
        {"system": "You are terse.", "messages": user("Say hello.")},
        {"messages": [{"role": "system", "content": "You are terse."}, *user("Say hello.")]},
    ),
    "tools": (
        {"tools": [WEATHER_TOOL], "messages": user(WEATHER)},
        {"tools": [OPENAI_WEATHER_TOOL], "messages": user(WEATHER)},
    ),
}


@pytest.mark.parametrize("name", COUNTED)
def test_count_tokens_equals_the_servers_count_and_usage(
    name: str, gateway: GatewayProcess, llama_backend: LlamaBackend
) -> None:
    anthropic_body, openai_body = COUNTED[name]
    counted = gateway_count(gateway, anthropic_body)
    response = httpx.post(
        f"{gateway.url}/v1/messages",
        json={"model": "m", "max_tokens": 8, **anthropic_body}, timeout=60,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert counted == server_count(llama_backend, openai_body)
    assert counted == usage["input_tokens"] + usage.get("cache_read_input_tokens", 0)


def test_tool_round_trip_count_equals_usage(
    claude: anthropic.Anthropic, gateway: GatewayProcess
) -> None:
    request = weather_request()
    [tool_use] = create(claude, request, stream=False).content
    history = [
        *request["messages"],
        {"role": "assistant", "content": [tool_use.model_dump()]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_use.id, "content": "Sunny, 24C"},
        ]},
    ]  # fmt: skip
    counted = gateway_count(gateway, {"tools": [WEATHER_TOOL], "messages": history})
    follow_up = claude.messages.create(**{**request, "messages": history})
    assert counted == prompt_total(follow_up.usage)


def test_the_window_comes_from_props_and_over_it_nothing_reaches_a_slot(
    gateway: GatewayProcess, llama_backend: LlamaBackend
) -> None:
    body = {"model": "m", "max_tokens": 10, "messages": user(LONG)}
    tokens = server_count(llama_backend, {"messages": user(LONG)})
    before = slot_tasks(llama_backend)
    for stream in (False, True):
        response = httpx.post(f"{gateway.url}/v1/messages", json={**body, "stream": stream},
                              timeout=60)  # fmt: skip
        assert response.status_code == 400, response.text
        assert response.json()["error"] == {
            "type": "invalid_request_error",
            "message": f"prompt is too long: {tokens} tokens > {WINDOW} maximum",
        }
    assert llama_backend.get("/props")["default_generation_settings"]["n_ctx"] == WINDOW
    assert slot_tasks(llama_backend) == before
    with pytest.raises(urllib.error.HTTPError) as refused:  # sent directly, it reaches a slot
        direct(llama_backend, {"messages": user(LONG), "max_tokens": 10})
    assert refused.value.code == 400
    assert slot_tasks(llama_backend) != before


def test_max_tokens_past_the_window_is_clamped_to_what_is_left(
    gateway: GatewayProcess, llama_backend: LlamaBackend
) -> None:
    body = {"messages": user(QUESTION)}
    tokens = gateway_count(gateway, body)
    response = httpx.post(f"{gateway.url}/v1/messages",
                          json={"model": "m", "max_tokens": 100_000, **body}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["stop_reason"] == "end_turn"
    assert last_slot(llama_backend)["params"]["n_predict"] == WINDOW - tokens


def test_the_server_stops_at_the_clamped_limit(gateway: GatewayProcess) -> None:
    """A prompt leaving 3 to 8 tokens of room: the tiny model's answers are 16+ tokens long, so
    the server's own answer limit shows the `max_tokens` it was sent."""
    words = 1200
    while (room := WINDOW - gateway_count(gateway, padded(words))) > 8:
        words += max((room - 6) // 3, 1)
    assert room >= 3, "the padding overshot; pick another step"
    response = httpx.post(f"{gateway.url}/v1/messages",
                          json={"model": "m", "max_tokens": 100_000, **padded(words)}, timeout=60)
    answer = response.json()
    assert answer["stop_reason"] == "max_tokens", answer
    assert answer["usage"]["output_tokens"] == room


def padded(words: int) -> JSON:
    return {"messages": user("one two three " * (words // 3))}


def test_a_larger_window_is_read_and_used(
    start_llama_server: StartLlamaServer, start_gateway: StartGateway
) -> None:
    backend = start_llama_server(window=LARGE_WINDOW)
    gateway = start_gateway(backend.url, *gateway_flags(backend))
    body = {"messages": user(LONG)}
    tokens = gateway_count(gateway, body)
    response = httpx.post(f"{gateway.url}/v1/messages",
                          json={"model": "m", "max_tokens": 100_000, **body}, timeout=120)
    assert response.status_code == 200, response.text
    assert WINDOW < tokens == server_count(backend, body)
    assert backend.get("/props")["default_generation_settings"]["n_ctx"] == LARGE_WINDOW
    assert last_slot(backend)["params"]["n_predict"] == LARGE_WINDOW - tokens
    assert response.json()["stop_reason"] == "end_turn"


# ---- the server's prompt cache across turns ------------------------------------------------------

THINK_BLOCK = 4  # `<think>`, `\n\n`, `</think>`, `\n\n`


def conversation_usage(client: anthropic.Anthropic, extra: JSON, turns: int) -> list[Any]:
    """Usage of each turn of one growing conversation, each answer sent back as it came."""
    messages = user("Tell me a story about a lighthouse keeper.")
    usages = []
    for turn in range(turns):
        message = client.messages.create(
            model="m", max_tokens=2000, messages=messages, **GREEDY, **extra
        )
        usages.append(message.usage)
        answer = [block.model_dump() for block in message.content if block.type == "text"]
        messages = [*messages, {"role": "assistant", "content": answer},
                    *user(f"And then, part {turn + 2}?")]  # fmt: skip
    return usages


def test_with_thinking_on_each_turn_reads_the_whole_last_turn_from_the_cache(
    claude: anthropic.Anthropic,
) -> None:
    """With `enable_thinking` the template adds nothing to the generation prompt that the
    history drops, so turn N+1 starts with turn N's prompt and answer: the server reads all of
    it from its cache but the end token, which was sampled and never evaluated."""
    thinking = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    usages = conversation_usage(claude, thinking, 4)
    for last, usage in itertools.pairwise(usages):
        assert usage.cache_read_input_tokens == prompt_total(last) + last.output_tokens - 1
        assert usage.input_tokens < last.output_tokens + 30


def test_by_default_each_turn_reads_the_answer_again(claude: anthropic.Anthropic) -> None:
    """Thinking off, the template ends the generation prompt with an empty think block that it
    leaves out when it renders the answer in the history, so the cache holds turn N's prompt
    less that block, and the answer is processed again on turn N+1."""
    usages = conversation_usage(claude, {}, 4)
    for last, usage in itertools.pairwise(usages):
        assert usage.cache_read_input_tokens == prompt_total(last) - THINK_BLOCK
        assert usage.input_tokens > last.output_tokens


# ---- disconnects and restarts ------------------------------------------------------------------


def test_a_client_that_leaves_mid_stream_stops_the_generation(
    gateway: GatewayProcess, llama_backend: LlamaBackend
) -> None:
    """The end token banned, the answer would run to 4000 tokens; the client reads a few chunks
    and leaves. The server counts the tokens it generated for the cancelled request, so the
    check does not depend on how fast a loaded machine generates."""
    body = {
        "model": "m", "max_tokens": 4000, "stream": True, "messages": user("Keep going"),
        "logit_bias": {str(END_TOKEN): -100},
    }  # fmt: skip
    before = llama_backend.metrics()["tokens_predicted_total"]
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=60) as rsp:
        lines = rsp.iter_lines()
        assert sum(1 for _, line in zip(range(10), lines, strict=False) if line) > 3
    deadline = time.monotonic() + 30
    while any(slot["is_processing"] for slot in llama_backend.get("/slots")):
        assert time.monotonic() < deadline, llama_backend.get("/slots")
        time.sleep(0.02)
    generated = llama_backend.metrics()["tokens_predicted_total"] - before
    assert 3 < generated < 4000
    assert last_slot(llama_backend)["params"]["n_predict"] == 4000
    answer = direct(llama_backend, {"messages": user(QUESTION), "max_tokens": 5})
    assert answer["usage"]["completion_tokens"] == 5


def test_the_backend_restarts_without_restarting_the_gateway(
    start_llama_server: StartLlamaServer, start_gateway: StartGateway
) -> None:
    port = free_port()
    backend = start_llama_server(port=port)
    gateway = start_gateway(backend.url, *gateway_flags(backend))
    client = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    request: JSON = {"model": "m", "max_tokens": 40, "messages": user(QUESTION), **GREEDY}
    before = text_of(client.messages.create(**request))
    stop(backend.process)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(**request)
    assert caught.value.status_code == 503
    assert "MLX backend unavailable" in str(caught.value)
    start_llama_server(port=port)
    assert text_of(client.messages.create(**request)) == before
    assert gateway_count(gateway, {"messages": user(LONG)}) > WINDOW
    assert gateway.alive()


# ---- the OpenAI endpoint ------------------------------------------------------------------------


def test_openai_chat_passes_through(gateway: GatewayProcess, llama_backend: LlamaBackend) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    messages: list[Any] = user(QUESTION)
    completion = client.chat.completions.create(
        model="gpt-anything", messages=messages, max_tokens=15, temperature=0
    )
    expected = direct(llama_backend, {"max_tokens": 15, "messages": messages})
    assert completion.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert completion.usage.completion_tokens == expected["usage"]["completion_tokens"] == 15
    chunks = list(client.chat.completions.create(
        model="gpt-anything", messages=messages, max_tokens=15, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ))  # fmt: skip
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected["choices"][0]["message"]["content"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 15


def test_openai_tools_and_stop_pass_through(gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    called = client.chat.completions.create(
        model="m", messages=user(WEATHER), tools=[OPENAI_WEATHER_TOOL], temperature=0,  # type: ignore[list-item]
    )  # fmt: skip
    [call] = called.choices[0].message.tool_calls or []
    assert called.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    full = client.chat.completions.create(model="m", messages=user(QUESTION), temperature=0)
    text = full.choices[0].message.content or ""
    word = text.split()[2]
    stopped = client.chat.completions.create(
        model="m", messages=user(QUESTION), temperature=0, stop=[word]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(word)]


def test_models_lists_the_served_model(
    gateway: GatewayProcess, llama_backend: LlamaBackend
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    assert [model.id for model in client.models.list()] == [llama_backend.model]
