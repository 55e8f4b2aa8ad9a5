"""Backend identity from the servers' own answers. The mlx_lm.server answers were taken from
the real server (mlx-lm 0.32) on the test rig's tiny model; the others are the documented
shapes of llama.cpp's /props and /v1/models, vLLM's /v1/models, Ollama's /api/version and LM
Studio's /api/v0/models."""

from __future__ import annotations

from typing import Any

import pytest

from mlx_gateway.backends.probe import (
    PROBE_PATHS,
    Answer,
    Identity,
    from_health,
    from_llama_props,
    from_lmstudio_models,
    from_ollama_version,
    from_openai_models,
    identify,
)

MLX_MODELS = {
    "object": "list",
    "data": [
        {
            "id": "/root/.cache/mlx-gateway-tests/tiny-llama-fbad0b874008088f",
            "object": "model",
            "created": 1796525871,
        }
    ],
}
MLX_HEALTH = {"status": "ok"}
LLAMA_PROPS = {
    "default_generation_settings": {"n_ctx": 8192, "params": {"temperature": 0.8}},
    "total_slots": 4,
    "model_path": "/models/qwen3-8b-q4_k_m.gguf",
    "chat_template": "{% for message in messages %}...",
    "modalities": {"vision": False, "audio": False},
    "build_info": "b6000-1d72c841",
}
LLAMA_MODELS = {
    "object": "list",
    "data": [
        {
            "id": "qwen3-8b-q4_k_m.gguf",
            "object": "model",
            "created": 1750000000,
            "owned_by": "llamacpp",
            "meta": {"n_ctx_train": 40960},
        }
    ],
}
VLLM_MODELS = {
    "object": "list",
    "data": [
        {
            "id": "Qwen/Qwen3-8B",
            "object": "model",
            "created": 1750000000,
            "owned_by": "vllm",
            "root": "Qwen/Qwen3-8B",
            "parent": None,
            "max_model_len": 32768,
            "permission": [],
        }
    ],
}
OLLAMA_VERSION = {"version": "0.9.6"}
OLLAMA_MODELS = {
    "object": "list",
    "data": [{"id": "qwen3:8b", "object": "model", "created": 1750000000, "owned_by": "library"}],
}
LMSTUDIO_V0 = {
    "object": "list",
    "data": [
        {
            "id": "qwen2-vl-7b-instruct",
            "object": "model",
            "type": "vlm",
            "publisher": "mlx-community",
            "arch": "qwen2_vl",
            "compatibility_type": "mlx",
            "quantization": "4bit",
            "state": "not-loaded",
            "max_context_length": 32768,
        },
        {
            "id": "meta-llama-3.1-8b-instruct",
            "object": "model",
            "type": "llm",
            "compatibility_type": "gguf",
            "state": "loaded",
            "max_context_length": 131072,
        },
    ],
}
LMSTUDIO_MODELS = {
    "object": "list",
    "data": [
        {"id": "meta-llama-3.1-8b-instruct", "object": "model", "owned_by": "organization_owner"}
    ],
}
NOT_FOUND = Answer(404, None)


def answers(**by_path: Any) -> dict[str, Answer | None]:
    """Every probe path 404 (a server that is there), except those given (None: no answer)."""
    table: dict[str, Answer | None] = dict.fromkeys(PROBE_PATHS, NOT_FOUND)
    for key, value in by_path.items():
        table[_PATHS[key]] = None if value is None else Answer(200, value)
    return table


_PATHS = {
    "props": "/props",
    "version": "/api/version",
    "lmstudio": "/api/v0/models",
    "v1_models": "/v1/models",
    "health": "/health",
}


@pytest.mark.parametrize(
    ("server", "table", "kind"),
    [
        ("mlx_lm.server", answers(v1_models=MLX_MODELS, health=MLX_HEALTH), "mlx_lm"),
        ("mlx_lm.server, empty cache", answers(v1_models={"object": "list", "data": []}), "mlx_lm"),
        (
            "llama-server",
            answers(props=LLAMA_PROPS, v1_models=LLAMA_MODELS, health=MLX_HEALTH),
            "llama_cpp",
        ),
        ("llama-server without /props", answers(v1_models=LLAMA_MODELS), "llama_cpp"),
        ("vLLM", answers(v1_models=VLLM_MODELS, health=None), "vllm"),
        ("Ollama", answers(version=OLLAMA_VERSION, v1_models=OLLAMA_MODELS), "ollama"),
        ("LM Studio", answers(lmstudio=LMSTUDIO_V0, v1_models=LMSTUDIO_MODELS), "lmstudio"),
        (
            "SGLang",
            answers(v1_models={"object": "list", "data": [{"id": "m", "owned_by": "sglang"}]}),
            "openai",
        ),
        ("another OpenAI server", answers(v1_models=OLLAMA_MODELS), "openai"),
        ("only /health", answers(health=MLX_HEALTH), "mlx_lm"),
    ],
)
def test_each_server_is_recognised_by_its_answers(
    server: str, table: dict[str, Answer | None], kind: str
) -> None:
    assert identify(table).kind == kind, server


def test_llama_cpp_props_give_slots_model_and_build() -> None:
    assert from_llama_props(LLAMA_PROPS) == Identity(
        "llama_cpp",
        slots=4,
        models=("/models/qwen3-8b-q4_k_m.gguf",),
        detail="b6000-1d72c841",
    )


def test_lm_studio_lists_loaded_models_first() -> None:
    identity = from_lmstudio_models(LMSTUDIO_V0)
    assert identity is not None
    assert identity.models == ("meta-llama-3.1-8b-instruct",)


def test_nothing_answering_is_unknown_and_unreachable() -> None:
    silent = identify(dict.fromkeys(PROBE_PATHS))
    assert (silent.kind, silent.reachable) == (None, False)


def test_a_server_that_answers_only_errors_is_there_but_unknown() -> None:
    loading = {path: Answer(503, {"error": {"message": "Loading model"}}) for path in PROBE_PATHS}
    assert identify(loading) == Identity(None, reachable=True)


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        "ok",
        {"data": "x"},
        {"status": "loading"},
        {"version": 3},
        {"a": 1, "version": "1"},
    ],
)
def test_parsers_refuse_what_is_not_theirs(answer: Any) -> None:
    for parser in (from_llama_props, from_ollama_version, from_lmstudio_models, from_health):
        assert parser(answer) is None
    assert from_openai_models(answer) is None or isinstance(answer, dict)
