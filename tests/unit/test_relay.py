"""The OpenAI relay: whole events only, at every split, and how the stream ended."""

from __future__ import annotations

import pytest

from mlx_gateway.parse.relay import EventRelay

CHUNK = b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
FINISH = b'data: {"choices":[{"delta":{},"finish_reason": "stop"}]}\n\n'
DONE = b"data: [DONE]\n\n"

ENDINGS: list[tuple[str, bytes, str | None, bool]] = [
    ("finish and done", CHUNK + FINISH + DONE, None, True),
    ("finish without done", CHUNK + FINISH, None, False),
    ("done without finish", CHUNK + DONE, None, True),
    ("done without its blank line", CHUNK + b"data: [DONE]\n", None, True),
    ("neither", CHUNK + CHUNK, "before the answer was complete", False),
    ("half an event", CHUNK + FINISH[:20], "inside an event", False),
    ("CR LF lines", CHUNK.replace(b"\n", b"\r\n") + FINISH.replace(b"\n", b"\r\n"), None, False),
    ("a null finish only", CHUNK, "before the answer was complete", False),
]


@pytest.mark.parametrize(
    ("stream", "failure", "done"), [c[1:] for c in ENDINGS], ids=[c[0] for c in ENDINGS]
)
def test_every_split(stream: bytes, failure: str | None, done: bool) -> None:
    for cut in range(len(stream) + 1):
        relay = EventRelay()
        sent = relay.feed(stream[:cut]) + relay.feed(stream[cut:])
        result = relay.failure()
        assert (result is None) == (failure is None), cut
        if failure is not None and result is not None:
            assert failure in result
        else:
            assert sent == stream[: len(sent)]
            assert stream[len(sent) :].strip() in (b"", b"data: [DONE]")
        assert relay.saw_done == done


def test_only_whole_events_go_out() -> None:
    relay = EventRelay()
    assert relay.feed(CHUNK[:10]) == b""
    assert relay.feed(CHUNK[10:] + FINISH[:5]) == CHUNK
    assert relay.feed(FINISH[5:]) == FINISH
