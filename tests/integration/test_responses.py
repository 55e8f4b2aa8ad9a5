"""POST /v1/responses through the real gateway process, driven by the official `openai` SDK and
raw HTTP against the scripted backend: what the backend receives, what the client gets back,
streamed and whole, and the errors in the OpenAI shape."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess
from tests.support.scripted_backend import Completion as ChatAnswer
from tests.support.scripted_backend import (
    Drop,
    HttpError,
    ScriptedBackend,
    Stream,
    chunk,
    text_stream,
)

MODEL = "test-org/Test-Model-4bit"
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello\n*** End Patch\n"
EXEC_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "exec_command",
    "description": "Run a shell command.",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
}
PATCH_TOOL: dict[str, Any] = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files with a patch.",
    "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch"'},
}


@pytest.fixture
def gateway(scripted_backend: ScriptedBackend, start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway(scripted_backend.url, "--mlx-model", MODEL)


@pytest.fixture
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)


def call_delta(call_id: str, name: str, arguments: str, index: int = 0) -> dict[str, Any]:
    function = {"name": name, "arguments": arguments}
    return {"index": index, "id": call_id, "type": "function", "function": function}


def test_a_whole_answer(client: openai.OpenAI, scripted_backend: ScriptedBackend) -> None:
    scripted_backend.queue(ChatAnswer(text="Hello there", reasoning="thinking first"))
    response = client.responses.create(
        model="gpt-5-codex", input="hi", instructions="Be brief.", max_output_tokens=50
    )
    assert response.status == "completed"
    assert response.output_text == "Hello there"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 7)
    sent = scripted_backend.last_json()
    assert sent["model"] == MODEL
    assert sent["stream"] is False
    assert sent["max_tokens"] == 50
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


def test_a_streamed_answer_with_the_sdk(
    client: openai.OpenAI, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(text_stream(["Hel", "lo", "!"], reasoning_pieces=["hmm"]))
    events = list(client.responses.create(model="m", input="hi", stream=True))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(set(numbers))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Hello!"
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == "Hello!"
    assert "hmm" not in final.output_text
    sent = scripted_backend.last_json()
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["max_tokens"] > 512  # no client limit: not the servers' short default


def test_the_stream_helper_parses_calls_and_the_final_response(
    client: openai.OpenAI, scripted_backend: ScriptedBackend
) -> None:
    patch_args = json.dumps({"input": PATCH})
    scripted_backend.queue(
        text_stream(
            ["I'll do both."],
            "tool_calls",
            tool_call_deltas=[
                call_delta("call_a", "exec_command", '{"cmd": "ls"}'),
                call_delta("call_b", "apply_patch", patch_args, index=1),
            ],
        )
    )
    with client.responses.stream(
        model="m", input="go", tools=[EXEC_TOOL, PATCH_TOOL]  # type: ignore[list-item]
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    function, custom = final.output[1], final.output[2]
    assert function.type == "function_call"
    assert (function.call_id, function.name, function.arguments) == (
        "call_a", "exec_command", '{"cmd": "ls"}'
    )  # fmt: skip
    assert custom.type == "custom_tool_call"
    assert (custom.call_id, custom.name, custom.input) == ("call_b", "apply_patch", PATCH)
    sent = scripted_backend.last_json()
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["exec_command", "apply_patch"]


def test_a_conversation_with_calls_reaches_the_backend_as_chat(
    client: openai.OpenAI, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(ChatAnswer(text="Done."))
    items: list[Any] = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "D"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]},
        {"type": "function_call", "call_id": "a", "name": "exec_command", "arguments": "{}"},
        {"type": "custom_tool_call", "call_id": "b", "name": "apply_patch", "input": PATCH},
        {"type": "function_call_output", "call_id": "a", "output": "ok"},
        {"type": "custom_tool_call_output", "call_id": "b", "output": "patched"},
    ]
    client.responses.create(model="m", input=items, tools=[EXEC_TOOL, PATCH_TOOL], store=False)
    messages = scripted_backend.last_json()["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool"]
    calls = messages[2]["tool_calls"]
    assert [c["id"] for c in calls] == ["a", "b"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"input": PATCH}


def test_the_token_limit_makes_the_response_incomplete(
    client: openai.OpenAI, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(text_stream(["cut sho"], "length"))
    events = list(client.responses.create(model="m", input="hi", stream=True))
    assert events[-1].type == "response.incomplete"
    incomplete = events[-1].response  # type: ignore[union-attr]
    assert incomplete.incomplete_details is not None
    assert incomplete.incomplete_details.reason == "max_output_tokens"


DETAILED_USAGE = {
    "prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160,
    "prompt_tokens_details": {"cached_tokens": 96},
    "completion_tokens_details": {"reasoning_tokens": 25},
}  # fmt: skip (as vLLM and llama.cpp count them)


@pytest.mark.parametrize("stream", [True, False])
def test_cached_and_reasoning_tokens_reach_the_client(
    client: openai.OpenAI, scripted_backend: ScriptedBackend, stream: bool
) -> None:
    if stream:
        scripted_backend.queue(
            text_stream(["ok"], reasoning_pieces=["hm"], usage=DETAILED_USAGE)
        )
        with client.responses.stream(model="m", input="hi") as events:
            response = events.get_final_response()
    else:
        scripted_backend.queue(ChatAnswer(text="ok", reasoning="hm", usage=DETAILED_USAGE))
        response = client.responses.create(model="m", input="hi")
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (120, 40, 160)
    assert usage.input_tokens_details.cached_tokens == 96
    assert usage.output_tokens_details.reasoning_tokens == 25


@pytest.mark.parametrize(
    "reply",
    [
        Stream([chunk({"content": "partial"}), Drop()], usage=None, done=False),
        Stream([chunk({"content": "partial"})], usage=None, done=True),
    ],
    ids=["the connection drops", "no finish reason"],
)
def test_a_broken_stream_ends_with_response_failed(
    gateway: GatewayProcess, scripted_backend: ScriptedBackend, reply: Stream
) -> None:
    scripted_backend.queue(reply)
    response = httpx.post(
        f"{gateway.url}/v1/responses", json={"model": "m", "input": "hi", "stream": True}
    )
    assert response.status_code == 200
    frames = [f for f in response.text.split("\n\n") if f.startswith("event:")]
    last = json.loads(frames[-1].split("data: ", 1)[1])
    assert last["type"] == "response.failed"
    assert last["response"]["error"]["code"] == "server_error"
    assert "response.completed" not in response.text


ERROR_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("previous_response_id", {"model": "m", "input": "hi", "previous_response_id": "resp_1"},
     "previous_response_id: "),
    ("a bad input type", {"model": "m", "input": [{"role": "user", "content": 3}]},
     "input.0.content"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_bad_requests_are_400_in_the_openai_shape(
    gateway: GatewayProcess, body: dict[str, Any], message: str
) -> None:
    response = httpx.post(f"{gateway.url}/v1/responses", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert message in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_backend_errors_before_the_stream(
    client: openai.OpenAI, scripted_backend: ScriptedBackend
) -> None:
    scripted_backend.queue(HttpError(500, "boom"))
    with pytest.raises(openai.InternalServerError) as raised:
        client.responses.create(model="m", input="hi", stream=True)
    assert raised.value.status_code == 502
    scripted_backend.stop()
    with pytest.raises(openai.APIStatusError) as unavailable:
        client.responses.create(model="m", input="hi")
    assert unavailable.value.status_code == 503
    assert "MLX backend unavailable" in unavailable.value.message


def test_a_prompt_over_the_window_is_a_400_with_its_code(
    client: openai.OpenAI, scripted_backend: ScriptedBackend
) -> None:
    """Codex tells the user the context is full, instead of retrying, by this code."""
    message = "This model's maximum context length is 4096 tokens. You requested 5000 tokens"
    scripted_backend.queue(HttpError(400, {"error": {"message": message}}))
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="m", input="hi", stream=True)
    assert raised.value.code == "context_length_exceeded"


def test_the_model_list_serves_the_sdk_and_codex(
    scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(
        scripted_backend.url, "--mlx-model", MODEL, "--model-map", "gpt-5-codex=other/Model",
        "--context-window", "16384",
    )  # fmt: skip
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    assert [model.id for model in client.models.list()] == [MODEL, "other/Model", "gpt-5-codex"]
    # What Codex asks (with its version in the query) and decodes: the `models` entries.
    response = httpx.get(f"{gateway.url}/v1/models?client_version=0.171.0", timeout=10)
    assert response.status_code == 200
    entries = response.json()["models"]
    assert [entry["slug"] for entry in entries] == [MODEL, "other/Model", "gpt-5-codex"]
    for entry in entries:
        assert entry["context_window"] == 16384
        assert entry["apply_patch_tool_type"] == "freeform"
        assert entry["shell_type"] == "shell_command"
