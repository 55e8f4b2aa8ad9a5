"""Backend profiles: the few real differences between OpenAI-compatible servers, kept as data.

The core never branches on a backend's name; it reads these fields. Only quirks that were seen
on a real server belong here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import msgspec


@dataclass(frozen=True, slots=True)
class ContextProbe:
    """Where a server tells its context window: `path` is fetched (GET, or POST of
    `{"model": <backend model>}` when `post_model`) and the answer is read by the parser named
    `parser` in `context.WINDOW_PARSERS`. `{model}` in the path is the backend model's name."""

    path: str
    parser: str
    post_model: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """A backend error whose text contains `marker` (lower case) refuses this request's content,
    whatever its status: the client gets a 400 saying `meaning`, and no retry."""

    marker: str
    meaning: str


IMAGES = "the model does not accept images"
TOOLS = "the server cannot render tools for this model"
# Seen on every kind: a text-only model asked about an image.
COMMON_REFUSALS = (
    Refusal("image input is not supported", IMAGES),
    Refusal("does not support image", IMAGES),
    Refusal("audio input is not supported", "the model does not accept audio"),
)


@dataclass(frozen=True, slots=True)
class BackendProfile:
    name: str
    # How reasoning is switched on and off: Qwen3-style chat templates read `enable_thinking`
    # from `chat_template_kwargs` (vLLM, mlx_lm.server, llama.cpp); None when there is no switch.
    thinking_switch: str | None = "chat_template_kwargs"
    # The field earlier reasoning would go back in. None for every known server: Qwen3-style
    # templates show the reasoning of the current tool loop only, so a new user message would
    # drop what the loop's prompts held and the server's prompt cache would be read again from
    # the first reasoned answer on (see the README, "Prompt cache").
    reasoning_back_field: str | None = None
    # JSON-schema keys removed from tool parameters because the server rejects them.
    schema_keys_to_strip: tuple[str, ...] = ()
    # Error texts that refuse this request's content (see Refusal): a 400, not a 502.
    refusals: tuple[Refusal, ...] = COMMON_REFUSALS
    # Whether the server says which stop sequence ended the output (vLLM's `stop_reason`).
    # Others strip the matched text and say only "stop", so the gateway watches for the
    # sequences itself instead of forwarding them, which makes `stop_sequence` exact.
    reports_stop_match: bool = False
    # Where the context window is discovered (see ContextProbe); None: only --context-window.
    context_probe: ContextProbe | None = None
    # Exact prompt counts from the server itself. vLLM's `/tokenize` takes the chat request and
    # answers `count`; llama.cpp renders it with `/apply-template` first, and its `/tokenize`
    # takes the text. Without them the gateway counts locally or estimates (see tokens.py).
    tokenize_path: str | None = None
    apply_template_path: str | None = None
    # mlx_lm.server loads `--mlx-model` from a folder or the Hugging Face cache, so the gateway
    # can read the same tokenizer, chat template and config.json (the context window).
    reads_local_model: bool = False
    # The command that starts this kind of server, for the hint when it cannot be reached;
    # `{model}` and `{port}` are filled in. Empty when there is no one command to suggest.
    start_command: str = ""
    # Requests sent at once when the configuration says nothing (0: no limit). mlx_lm.server
    # serves one long prompt at a time well; the others batch. llama.cpp's own slot count
    # (`total_slots` in /props) replaces it when the probe reads it.
    max_concurrency: int = 0
    # A cheap GET that any answer below 500 proves the server is there.
    health_path: str = "/health"


PROFILES: dict[str, BackendProfile] = {
    "mlx_lm": BackendProfile(
        name="mlx_lm",
        refusals=(
            *COMMON_REFUSALS,
            Refusal("only 'text' content type is supported", IMAGES),
        ),
        reads_local_model=True,
        start_command="mlx_lm.server --model {model} --port {port}",
        max_concurrency=1,
    ),
    "ollama": BackendProfile(
        name="ollama",
        thinking_switch=None,
        context_probe=ContextProbe("/api/show", "ollama_show", post_model=True),
        start_command="ollama serve",
        refusals=(*COMMON_REFUSALS, Refusal("does not support tools", TOOLS)),
        health_path="/api/version",
    ),
    "llama_cpp": BackendProfile(
        name="llama_cpp",
        context_probe=ContextProbe("/props", "llama_cpp_props"),
        tokenize_path="/tokenize",
        apply_template_path="/apply-template",
        start_command="llama-server -m <model.gguf> --jinja --port {port}",
        refusals=(
            *COMMON_REFUSALS,
            Refusal("tools param requires --jinja", TOOLS + " (start llama-server with --jinja)"),
            Refusal("unsupported param: tools", TOOLS + " (start llama-server with --jinja)"),
            Refusal("failed to load image", IMAGES),
        ),
    ),
    "vllm": BackendProfile(
        name="vllm",
        reports_stop_match=True,
        context_probe=ContextProbe("/v1/models", "vllm_models"),
        tokenize_path="/tokenize",
        start_command="vllm serve {model} --port {port}",
        refusals=(
            *COMMON_REFUSALS,
            Refusal("is not a multimodal model", IMAGES),
            Refusal("at most 0 image(s) may be provided", IMAGES),
            Refusal('"auto" tool choice requires --enable-auto-tool-choice', TOOLS),
        ),
    ),
    "lmstudio": BackendProfile(
        name="lmstudio",
        thinking_switch=None,
        start_command="lms server start --port {port}",
        refusals=(*COMMON_REFUSALS, Refusal("model does not support images", IMAGES)),
        health_path="/v1/models",
    ),
    "openai": BackendProfile(name="openai", thinking_switch=None, health_path="/v1/models"),
}

_DEFAULT_PORTS = {11434: "ollama", 1234: "lmstudio", 8000: "vllm", 8081: "mlx_lm"}


def guess_kind(url: str) -> str:
    """The last resort when no probe answered: the well-known default ports, else mlx_lm."""
    return _DEFAULT_PORTS.get(urlsplit(url).port or 0, "mlx_lm")


def resolve_profile(backend: str, url: str) -> BackendProfile:
    """A forced kind, else the port guess (the probe in probe.py replaces it once it answers)."""
    return PROFILES[backend if backend != "auto" else guess_kind(url)]


_NO_PARAMETERS = msgspec.Raw(b'{"type":"object","properties":{}}')
_any_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


def tool_parameters(schema: msgspec.Raw, profile: BackendProfile) -> msgspec.Raw | dict[str, Any]:
    """A tool's JSON schema as the client wrote it, unless the backend needs keys removed."""
    if len(schema) == 0:
        return _NO_PARAMETERS
    if not profile.schema_keys_to_strip:
        return schema
    stripped = _strip_schema(_any_decoder.decode(schema), profile.schema_keys_to_strip)
    return cast(dict[str, Any], stripped)


def _strip_schema(schema: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_schema(v, keys) for k, v in schema.items() if k not in keys}
    if isinstance(schema, list):
        return [_strip_schema(item, keys) for item in schema]
    return schema


def start_hint(profile: BackendProfile, base_url: str, model: str) -> str:
    """What to do when nothing answers at `base_url`: start the server, or point at it."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    command = profile.start_command.format(model=model, port=port)
    start = f"start the model server (`{command}`) or" if command else "start the model server or"
    return f"{start} point --mlx-url at the one you run"
