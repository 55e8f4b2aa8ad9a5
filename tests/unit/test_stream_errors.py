"""An error frame in a backend's stream (`data: {"error": {...}}`, as llama.cpp and vLLM send
when generation fails after their 200) is a failure of the stream, raised where chunks are
decoded, so every wing ends its stream as its protocol fails; never an empty chunk."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlx_gateway.anthropic.stream import StreamTranslator
from mlx_gateway.errors import BackendStreamFailed, GatewayError
from mlx_gateway.parse.chat import decode_chunk, decode_chunk_array, decode_completion
from mlx_gateway.parse.chunkreader import ChunkReader
from mlx_gateway.responses.stream import ResponsesStream
from tests.unit.test_stream_batches import sse, wire_chunk

LLAMA_CPP = {"error": {"code": 500, "message": "llama_decode failed", "type": "server_error"}}
VLLM = {
    "error": {"object": "error", "message": "engine dead", "type": "InternalServerError",
              "param": None, "code": 500}
}  # fmt: skip
BARE = {"error": "out of memory"}
TYPE_ONLY = {"error": {"type": "server_error"}}

FRAMES = [
    (LLAMA_CPP, "llama_decode failed"),
    (VLLM, "engine dead"),
    (BARE, "out of memory"),
    (TYPE_ONLY, "server_error"),
]
IDS = ["llama.cpp", "vllm", "a bare string", "no message"]


@pytest.mark.parametrize(("frame", "message"), FRAMES, ids=IDS)
def test_an_error_chunk_is_raised_with_the_backends_message(frame: Any, message: str) -> None:
    with pytest.raises(BackendStreamFailed) as caught:
        decode_chunk(json.dumps(frame))
    assert message in caught.value.message
    assert caught.value.status == 502
    assert caught.value.retryable


@pytest.mark.parametrize(("frame", "message"), FRAMES, ids=IDS)
def test_an_error_in_a_run_of_chunks_is_raised(frame: Any, message: str) -> None:
    array = json.dumps([wire_chunk("a"), frame, wire_chunk("b")]).encode()
    with pytest.raises(BackendStreamFailed, match=message):
        decode_chunk_array(array, 3)


def test_a_whole_answer_that_is_an_error_is_raised() -> None:
    with pytest.raises(BackendStreamFailed, match="llama_decode failed"):
        decode_completion(json.dumps(LLAMA_CPP).encode())


def test_a_null_error_and_the_word_in_text_are_no_error() -> None:
    assert decode_chunk('{"choices": [], "error": null}').error is None
    text = wire_chunk('"error": {"message": "x"}')
    array = json.dumps([text, text]).encode()
    assert array.find(b'"error"') < 0  # escaped inside the text
    chunks = decode_chunk_array(json.dumps([text, {**text, "error": None}]).encode(), 2)
    assert chunks is not None
    assert len(chunks) == 2


def machines() -> list[Any]:
    return [
        StreamTranslator(message_id="msg_1", model="m", estimated_input_tokens=1),
        ResponsesStream(model="m", response_id="resp_1", created_at=1),
    ]


@pytest.mark.parametrize("learn_from", [1, 2, 8])
@pytest.mark.parametrize("machine", machines(), ids=["anthropic", "responses"])
def test_every_byte_boundary_raises_the_error(machine: Any, learn_from: int) -> None:
    """The reader raises at any split of the bytes, on every path (decoded one by one, as a run,
    while learning the text template, after it), so each wing's relay can fail the stream."""
    data = sse(wire_chunk(""), wire_chunk("a"), wire_chunk("b"), wire_chunk("c"), LLAMA_CPP)
    data += b"data: [DONE]\n\n"
    for at in range(len(data) + 1):
        reader = ChunkReader(type(machine)(**_options(machine)), learn_from)
        with pytest.raises(BackendStreamFailed, match="llama_decode failed"):
            _read_all(reader, data[:at], data[at:])


def _read_all(reader: ChunkReader[Any], *reads: bytes) -> None:
    for read in reads:
        reader.feed(read)
    reader.flush()


def _options(machine: Any) -> dict[str, Any]:
    if isinstance(machine, ResponsesStream):
        return {"model": "m", "response_id": "resp_1", "created_at": 1}
    return {"message_id": "msg_1", "model": "m", "estimated_input_tokens": 1}


def failed(machine: Any, error: GatewayError) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = machine.fail(error)
    return events


def test_the_wings_fail_with_the_backends_words() -> None:
    error = BackendStreamFailed("llama_decode failed")
    anthropic, responses = machines()
    [event] = failed(anthropic, error)
    assert event["type"] == "error"
    assert event["error"]["type"] == "api_error"
    assert "llama_decode failed" in event["error"]["message"]
    [event] = failed(responses, error)
    assert event["type"] == "response.failed"
    assert event["response"]["status"] == "failed"
    assert event["response"]["error"]["code"] == "server_error"  # Codex retries it
    assert "llama_decode failed" in event["response"]["error"]["message"]
