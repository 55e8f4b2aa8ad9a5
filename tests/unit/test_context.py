"""Context windows: discovery answers per backend, the fit decision, the backends' own overflow
errors, and PromptContext's caching, retries and choice of counter (with a fake backend)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mlx_gateway.backends.context import (
    PromptContext,
    context_overflow_error,
    fitted_max_tokens,
    load_local_model,
    window_from_llama_cpp_props,
    window_from_model_config,
    window_from_ollama_show,
    window_from_vllm_models,
)
from mlx_gateway.backends.profiles import PROFILES, BackendProfile
from mlx_gateway.backends.tokens import TokenCount, estimate_tokens
from mlx_gateway.backends.upstream import backend_status_error
from mlx_gateway.errors import (
    BackendFailed,
    BackendRefused,
    BackendRejected,
    BackendUnavailable,
    GatewayError,
    NotFound,
    PromptTooLong,
)
from tests.support.tiny_model import build_tiny_model

BODY: dict[str, Any] = {
    "model": "m",
    "messages": [{"role": "user", "content": "hello " * 40}],
    "max_tokens": 100,
    "stream": True,
}

# ---- discovery answers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "model", "window"),
    [
        ({"data": [{"id": "a", "max_model_len": 100}, {"id": "m", "max_model_len": 8192}]}, "m",
         8192),
        ({"data": [{"id": "served-name", "max_model_len": 32768}]}, "m", 32768),
        ({"data": [{"id": "a", "max_model_len": 1}, {"id": "b", "max_model_len": 2}]}, "m", None),
        ({"data": [{"id": "m"}]}, "m", None),
        ({"data": [{"id": "m", "max_model_len": "big"}]}, "m", None),
        ({"object": "list"}, "m", None),
        ([], "m", None),
    ],
)  # fmt: skip
def test_window_from_vllm_models(answer: Any, model: str, window: int | None) -> None:
    assert window_from_vllm_models(answer, model) == window


@pytest.mark.parametrize(
    ("answer", "window"),
    [
        ({"default_generation_settings": {"n_ctx": 4096, "params": {}}, "total_slots": 1}, 4096),
        ({"n_ctx": 2048}, 2048),
        ({"default_generation_settings": {}, "n_ctx": 512}, 512),
        ({"default_generation_settings": {"n_ctx": 0}}, None),
        ({}, None),
        ("x", None),
    ],
)
def test_window_from_llama_cpp_props(answer: Any, window: int | None) -> None:
    assert window_from_llama_cpp_props(answer, "m") == window


@pytest.mark.parametrize(
    ("answer", "window"),
    [
        ({"model_info": {"general.architecture": "qwen3", "qwen3.context_length": 40960}}, 40960),
        ({"parameters": "temperature 0.6\nnum_ctx 8192\nstop \"<|im_end|>\"",
          "model_info": {"general.architecture": "qwen3", "qwen3.context_length": 40960}}, 8192),
        ({"model_info": {"general.architecture": "llama"}}, None),
        ({"parameters": "temperature 1"}, None),
        ({}, None),
    ],
)  # fmt: skip
def test_window_from_ollama_show(answer: Any, window: int | None) -> None:
    assert window_from_ollama_show(answer, "m") == window


@pytest.mark.parametrize(
    ("config", "window"),
    [
        ({"max_position_embeddings": 40960, "model_type": "qwen3"}, 40960),
        ({"model_type": "gemma3", "text_config": {"max_position_embeddings": 131072}}, 131072),
        ({"n_positions": 1024}, 1024),
        ({"max_position_embeddings": True}, None),
        ({}, None),
        (None, None),
    ],
)
def test_window_from_model_config(config: Any, window: int | None) -> None:
    assert window_from_model_config(config) == window


# ---- fitting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "exact", "max_tokens", "window", "expected"),
    [
        (100, True, 50, 1000, 50),  # fits: unchanged
        (100, True, 900, 1000, 900),  # exactly fills the window
        (100, True, 100_000, 1000, 900),  # clamped to what is left
        (999, True, 10, 1000, 1),
        (100, False, 100_000, 1000, 900),  # an estimate clamps too
        (1000, False, 50, 1000, 50),  # ...but never refuses: the backend decides
        (5000, False, 50, 1000, 50),
    ],
)
def test_fitted_max_tokens(
    tokens: int, exact: bool, max_tokens: int, window: int, expected: int
) -> None:
    assert fitted_max_tokens(TokenCount(tokens, exact), max_tokens, window) == expected


@pytest.mark.parametrize(("tokens", "window"), [(1000, 1000), (4097, 4096)])
def test_an_exact_prompt_that_does_not_fit_is_refused(tokens: int, window: int) -> None:
    with pytest.raises(PromptTooLong) as caught:
        fitted_max_tokens(TokenCount(tokens, exact=True), 10, window)
    assert caught.value.message == f"prompt is too long: {tokens} tokens > {window} maximum"
    assert caught.value.status == 400
    assert caught.value.anthropic_type == "invalid_request_error"


# ---- the backends' own overflow errors --------------------------------------------------------

VLLM_OLD = (
    "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
    "(4000 in the messages, 1000 in the completion). Please reduce the length of the messages "
    "or completion."
)
VLLM_NEW = (
    "This model's maximum context length is 4096 tokens. However, you requested 1000 output "
    "tokens and your prompt contains at least 4001 input tokens, for a total of at least 5001 "
    "tokens. Please reduce the length of the input prompt or the number of requested output tokens."
)
VLLM_INPUT = (
    "This model's maximum context length is 4096 tokens. However, your request has 6000 input "
    "tokens. Please reduce the length of the input messages."
)
VLLM_MAX_TOKENS = (
    "'max_tokens' or 'max_completion_tokens' is too large: 3000. This model's maximum context "
    "length is 4096 tokens and your request has 2000 input tokens (3000 > 4096 - 2000)."
)
OPENAI = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted in "
    "130001 tokens. Please reduce the length of the messages."
)
LLAMA_CPP = (
    "request (9412 tokens) exceeds the available context size (8192 tokens), try increasing it"
)
VLLM_ENGINE = "The decoder prompt (length 5000) is longer than the maximum model length of 4096."


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (VLLM_OLD, "prompt is too long: 5000 tokens > 4096 maximum"),
        (VLLM_NEW, "prompt is too long: 5001 tokens > 4096 maximum"),
        (VLLM_INPUT, "prompt is too long: 6000 tokens > 4096 maximum"),
        (VLLM_MAX_TOKENS, "prompt is too long: 5000 tokens > 4096 maximum"),
        (OPENAI, "prompt is too long: 130001 tokens > 128000 maximum"),
        (LLAMA_CPP, "prompt is too long: 9412 tokens > 8192 maximum"),
        (VLLM_ENGINE, "prompt is too long: 5000 tokens > 4096 maximum"),
        ("the request exceeds the available context size, try increasing it",
         "prompt is too long: the request exceeds the available context size, try increasing it"),
        ("Prompt is too long: lots", "Prompt is too long: lots"),
        ("model 'x' not found", None),
        ("Only 'text' content type is supported.", None),
    ],
)  # fmt: skip
def test_context_overflow_error(message: str, expected: str | None) -> None:
    error = context_overflow_error(message)
    assert (error.message if error else None) == expected


def test_llama_cpp_numbers_are_read_from_the_error_object() -> None:
    body = {
        "error": {
            "code": 400,
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 5000,
            "n_ctx": 4096,
            "message": "the request exceeds the available context size, try increasing it",
        }
    }
    error = backend_status_error(400, json.dumps(body).encode(), PROFILES["llama_cpp"])
    assert isinstance(error, PromptTooLong)
    assert error.message == "prompt is too long: 5000 tokens > 4096 maximum"


@pytest.mark.parametrize("status", [400, 413, 500])
def test_backend_status_error_maps_overflow_whatever_the_status(status: int) -> None:
    body = json.dumps({"object": "error", "message": VLLM_OLD, "type": "BadRequestError"}).encode()
    error = backend_status_error(status, body, PROFILES["vllm"])
    assert isinstance(error, PromptTooLong)
    assert (error.status, error.message) == (400, "prompt is too long: 5000 tokens > 4096 maximum")


def test_other_backend_errors_are_unchanged() -> None:
    error = backend_status_error(400, b'{"error": "bad thing"}', PROFILES["mlx_lm"])
    assert not isinstance(error, PromptTooLong)
    assert error.message == "backend rejected the request (HTTP 400): bad thing"


# ---- PromptContext with a fake backend --------------------------------------------------------


class FakeBackend:
    """Answers by path; records every call. An exception instance as the answer is raised."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, Any]] = []

    async def get_json_bytes(self, path: str) -> bytes:
        self.calls.append((path, None))
        return self._answer(path)

    async def post_json_bytes(self, path: str, body: bytes) -> bytes:
        self.calls.append((path, json.loads(body)))
        return self._answer(path)

    def _answer(self, path: str) -> bytes:
        answer = self.answers.get(path, NotFound(f"no route {path}"))
        if isinstance(answer, GatewayError):
            raise answer
        return answer if isinstance(answer, bytes) else msgspec.json.encode(answer)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_context(
    profile: BackendProfile, backend: FakeBackend, **options: Any
) -> tuple[PromptContext, Clock]:
    clock = Clock()
    context = PromptContext(profile, backend, clock=clock, environ={}, **options)
    return context, clock


def run(coroutine_factory: Callable[[], Any]) -> Any:
    return asyncio.run(coroutine_factory())


def test_configured_window_needs_no_discovery() -> None:
    backend = FakeBackend({})
    context, _ = make_context(PROFILES["vllm"], backend, configured_window=1000)
    assert run(lambda: context.window("m")) == 1000
    assert backend.calls == []


def test_vllm_window_is_discovered_once_and_counts_come_from_tokenize() -> None:
    backend = FakeBackend(
        {"/v1/models": {"data": [{"id": "m", "max_model_len": 1000}]}, "/tokenize": {"count": 77}}
    )
    context, _ = make_context(PROFILES["vllm"], backend)

    async def scenario() -> list[Any]:
        return [await context.fit("m", BODY, 5000), await context.fit("m", BODY, 10)]

    assert run(scenario) == [(923, TokenCount(77, True)), (10, TokenCount(77, True))]
    paths = [path for path, _ in backend.calls]
    assert paths == ["/v1/models", "/tokenize"]  # the second count came from the cache
    tokenize_body = backend.calls[1][1]
    assert tokenize_body == {"model": "m", "messages": BODY["messages"],
                             "add_generation_prompt": True}  # fmt: skip


def test_llama_cpp_counts_by_template_then_tokenize() -> None:
    backend = FakeBackend(
        {
            "/props": {"default_generation_settings": {"n_ctx": 100}},
            "/apply-template": {"prompt": "<|user|>hello"},
            "/tokenize": {"tokens": list(range(120))},
        }
    )
    context, _ = make_context(PROFILES["llama_cpp"], backend)
    with pytest.raises(PromptTooLong, match=r"^prompt is too long: 120 tokens > 100 maximum$"):
        run(lambda: context.fit("m", BODY, 10))
    assert [path for path, _ in backend.calls] == ["/props", "/apply-template", "/tokenize"]
    assert backend.calls[1][1] == {"messages": BODY["messages"]}
    assert backend.calls[2][1] == {"content": "<|user|>hello", "add_special": True,
                                   "parse_special": True}  # fmt: skip


def test_ollama_window_is_asked_by_model_and_counts_are_estimated() -> None:
    show = {"model_info": {"general.architecture": "qwen3", "qwen3.context_length": 200}}
    backend = FakeBackend({"/api/show": show})
    context, _ = make_context(PROFILES["ollama"], backend)
    estimate = estimate_tokens(BODY)
    assert run(lambda: context.fit("qwen3:8b", BODY, 1000)) == (
        200 - estimate,
        TokenCount(estimate, exact=False),
    )
    assert backend.calls == [("/api/show", {"model": "qwen3:8b"})]


def test_without_a_window_nothing_is_counted_and_discovery_is_retried_later() -> None:
    backend = FakeBackend({"/v1/models": BackendUnavailable("refused")})
    context, clock = make_context(PROFILES["vllm"], backend, retry_after=30)
    assert run(lambda: context.fit("m", BODY, 5000)) == (5000, None)
    assert run(lambda: context.fit("m", BODY, 5000)) == (5000, None)
    assert [path for path, _ in backend.calls] == ["/v1/models"]
    backend.answers["/v1/models"] = {"data": [{"id": "m", "max_model_len": 4000}]}
    backend.answers["/tokenize"] = {"count": 10}
    clock.now = 31
    assert run(lambda: context.fit("m", BODY, 5000)) == (3990, TokenCount(10, True))


@pytest.mark.parametrize(
    "failure",
    [
        BackendRejected("backend rejected the request (HTTP 404): no route", 404),
        BackendUnavailable("cannot connect to 127.0.0.1:1 (refused)", unreachable=True),
    ],
    ids=["no endpoint", "unreachable"],
)
def test_a_failing_tokenize_endpoint_falls_back_to_the_estimate_for_a_while(
    failure: GatewayError,
) -> None:
    models = {"data": [{"id": "m", "max_model_len": 4000}]}
    backend = FakeBackend({"/v1/models": models, "/tokenize": failure})
    context, clock = make_context(PROFILES["vllm"], backend, retry_after=30)
    estimate = TokenCount(estimate_tokens(BODY), exact=False)
    assert run(lambda: context.count("m", BODY)) == estimate
    assert run(lambda: context.count("m", BODY)) == estimate
    assert [path for path, _ in backend.calls] == ["/tokenize"]  # not asked again at once
    backend.answers["/tokenize"] = {"count": 3}
    clock.now = 31
    assert run(lambda: context.count("m", BODY)) == TokenCount(3, True)


@pytest.mark.parametrize(
    "refusal",
    [
        BackendRefused("the model does not accept images (backend said: ...)"),
        BackendRejected("backend rejected the request (HTTP 400): bad image", 400),
        BackendFailed(500, "image input is not supported"),
    ],
    ids=["refused", "4xx", "5xx"],
)
def test_a_count_refused_for_one_prompt_does_not_stop_counting_the_next(
    refusal: GatewayError,
) -> None:
    backend = FakeBackend({"/tokenize": refusal})
    context, _ = make_context(PROFILES["vllm"], backend, retry_after=30)
    other = {**BODY, "messages": [{"role": "user", "content": "another prompt"}]}
    assert not run(lambda: context.count("m", BODY)).exact
    backend.answers["/tokenize"] = {"count": 3}
    assert run(lambda: context.count("m", other)) == TokenCount(3, True)
    assert [path for path, _ in backend.calls] == ["/tokenize", "/tokenize"]


def test_concurrent_first_requests_share_one_discovery() -> None:
    backend = FakeBackend({"/props": {"n_ctx": 64}})
    context, _ = make_context(PROFILES["llama_cpp"], backend)

    async def scenario() -> list[int | None]:
        return list(await asyncio.gather(*(context.window("m") for _ in range(5))))

    assert run(scenario) == [64] * 5
    assert len(backend.calls) == 1


def test_backends_without_discovery_never_call() -> None:
    backend = FakeBackend({})
    context, _ = make_context(PROFILES["openai"], backend)
    assert run(lambda: context.fit("gpt", BODY, 5000)) == (5000, None)
    assert run(lambda: context.count("gpt", BODY)) == TokenCount(estimate_tokens(BODY), False)
    assert backend.calls == []


def test_mlx_model_counts_exactly_from_its_folder_and_knows_its_window() -> None:
    folder = str(build_tiny_model())
    backend = FakeBackend({})
    context, _ = make_context(PROFILES["mlx_lm"], backend)
    long_body = {**BODY, "messages": [{"role": "user", "content": "hello world " * 3000}]}

    async def scenario() -> tuple[int | None, TokenCount, TokenCount]:
        window = await context.window(folder)
        small = await context.count(folder, BODY)
        big = await context.count(folder, long_body)  # long enough to go to a worker thread
        return window, small, big

    window, small, big = run(scenario)
    assert window == 4096
    assert small.exact
    assert big.exact
    assert 40 < small.tokens < 300
    assert big.tokens > 4096
    with pytest.raises(PromptTooLong, match=rf"^prompt is too long: {big.tokens} tokens > 4096"):
        run(lambda: context.fit(folder, long_body, 10))
    assert backend.calls == []


def test_an_unknown_mlx_model_is_estimated(tmp_path: Path) -> None:
    context, _ = make_context(PROFILES["mlx_lm"], FakeBackend({}))
    assert run(lambda: context.window("org/not-downloaded")) is None
    assert run(lambda: context.count("org/not-downloaded", BODY)).exact is False


def test_broken_model_files_are_logged_and_estimated(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{not json")
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 10}')
    local = load_local_model(str(tmp_path), {})
    assert local.tokenizer is None
    assert local.window is None


def test_a_failing_template_is_estimated(tmp_path: Path) -> None:
    tiny = build_tiny_model()
    for name in ("tokenizer.json", "config.json"):
        (tmp_path / name).write_bytes((tiny / name).read_bytes())
    (tmp_path / "chat_template.jinja").write_text("{{ raise_exception('user/assistant only') }}")
    context, _ = make_context(PROFILES["mlx_lm"], FakeBackend({}))
    counted = run(lambda: context.fit(str(tmp_path), BODY, 10_000))
    assert counted == (4096 - estimate_tokens(BODY), TokenCount(estimate_tokens(BODY), False))
