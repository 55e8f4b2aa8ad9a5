"""The model's context window, and fitting a request into it.

The window is `--context-window` when given, else discovered once per backend model and kept on the
gateway (a failed discovery is tried again after `RETRY_AFTER` seconds, not on every request):
vLLM's `GET /v1/models` (`max_model_len`), llama.cpp's `GET /props` (`n_ctx`), Ollama's
`POST /api/show` (`num_ctx` when the model sets it, else `<arch>.context_length`), an mlx model's
own config.json (`max_position_embeddings`). The answers are read by the pure parsers below.

Fitting (`fitted_max_tokens`): an answer limit that would run past the window is lowered to what
is left; a prompt that leaves nothing is refused with Anthropic's own wording (`prompt is too long:
N tokens > M maximum`, which Claude Code reads to compact the conversation), never cut silently.
Only an exact count refuses: an estimate only lowers the limit, and the backend has the last word;
its own overflow errors get the same wording (`context_overflow_error`, used by upstream.py).

`PromptContext` holds the per-model state and makes the calls through the backend client; the
rest of this module, like tokens.py and localmodel.py, does no I/O.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from mlx_gateway.backends.localmodel import (
    LocalTokenizer,
    build_local_tokenizer,
    find_model_folder,
    read_model_files,
)
from mlx_gateway.backends.profiles import BackendProfile
from mlx_gateway.backends.tokens import (
    Json,
    TokenCount,
    apply_template_body,
    chat_tokenize_body,
    count_from_tokenize_answer,
    estimate_tokens,
    prompt_from_template_answer,
    prompt_part,
    text_tokenize_body,
)
from mlx_gateway.errors import (
    BackendFailed,
    BackendRejected,
    BackendUnavailable,
    GatewayError,
    PromptTooLong,
)

log = logging.getLogger("mlx_gateway.context")

RETRY_AFTER = 30.0
# Pieces of new text up to this size are tokenized on the event loop; bigger ones in a thread,
# so one long new prompt does not hold up every other stream for tens of milliseconds.
THREAD_MIN_CHARS = 16_000
WINDOW_KEYS = ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions")

_json = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


# ---- discovery: reading the answers -----------------------------------------------------------


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def window_from_vllm_models(answer: Any, model: str) -> int | None:
    entries = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(entries, list):
        return None
    entries = [entry for entry in entries if isinstance(entry, dict)]
    named = [entry for entry in entries if entry.get("id") == model]
    chosen = named or (entries if len(entries) == 1 else [])
    return _positive_int(chosen[0].get("max_model_len")) if chosen else None


def window_from_llama_cpp_props(answer: Any, _model: str) -> int | None:
    if not isinstance(answer, dict):
        return None
    settings = answer.get("default_generation_settings")
    per_slot = settings.get("n_ctx") if isinstance(settings, dict) else None
    return _positive_int(per_slot) or _positive_int(answer.get("n_ctx"))


_NUM_CTX = re.compile(r"^\s*num_ctx\s+(\d+)\s*$", re.MULTILINE)


def window_from_ollama_show(answer: Any, _model: str) -> int | None:
    """A `num_ctx` the model sets is what Ollama runs it with; else the trained length."""
    if not isinstance(answer, dict):
        return None
    parameters = answer.get("parameters")
    match = _NUM_CTX.search(parameters) if isinstance(parameters, str) else None
    if match:
        return int(match[1])
    info = answer.get("model_info")
    if not isinstance(info, dict):
        return None
    architecture = info.get("general.architecture")
    return _positive_int(info.get(f"{architecture}.context_length"))


def window_from_model_config(config: Any) -> int | None:
    """config.json of a Hugging Face / mlx model; multimodal ones nest it in `text_config`."""
    if not isinstance(config, dict):
        return None
    for section in (config, config.get("text_config")):
        if isinstance(section, dict):
            for key in WINDOW_KEYS:
                if window := _positive_int(section.get(key)):
                    return window
    return None


WINDOW_PARSERS: dict[str, Callable[[Any, str], int | None]] = {
    "vllm_models": window_from_vllm_models,
    "llama_cpp_props": window_from_llama_cpp_props,
    "ollama_show": window_from_ollama_show,
}


# ---- fitting ----------------------------------------------------------------------------------


def prompt_too_long(tokens: int, maximum: int) -> PromptTooLong:
    return PromptTooLong(f"prompt is too long: {tokens} tokens > {maximum} maximum")


def fitted_max_tokens(prompt: TokenCount, max_tokens: int, window: int) -> int:
    """The answer limit that fits the window. An exact prompt that leaves no room is refused;
    an estimated one is sent unchanged, for the backend to judge."""
    room = window - prompt.tokens
    if room <= 0:
        if prompt.exact:
            raise prompt_too_long(prompt.tokens, window)
        return max_tokens
    return min(max_tokens, room)


# ---- the backends' own overflow errors --------------------------------------------------------

_FLAGS = re.IGNORECASE | re.DOTALL
_MAXIMUM = re.compile(r"maximum context length is (\d+) tokens", _FLAGS)
# After vLLM's / OpenAI's "maximum context length is M tokens", the total requested, best first.
_REQUESTED = (
    re.compile(r"too large: (?P<answer>\d+)\..*?your request has (?P<prompt>\d+) input", _FLAGS),
    re.compile(r"for a total of (?:at least )?(?P<total>\d+) tokens", _FLAGS),
    re.compile(r"requested (?P<total>\d+) tokens", _FLAGS),
    re.compile(r"(?:resulted in|has|contains) (?:at least )?(?P<total>\d+) (?:input )?tokens",
               _FLAGS),
)  # fmt: skip
# Messages that carry both numbers: (total, maximum) as named groups.
_BOTH = (
    # llama.cpp
    re.compile(r"request \((?P<total>\d+) tokens\) exceeds the available context size "
               r"\((?P<maximum>\d+) tokens\)", _FLAGS),
    # vLLM's engine
    re.compile(r"prompt \(length (?P<total>\d+)\) is longer than the maximum model length of "
               r"(?P<maximum>\d+)", _FLAGS),
)  # fmt: skip
# Overflow without usable numbers (llama.cpp before it said them, Ollama, LM Studio, others).
_MARKERS = (
    "exceeds the available context size",
    "exceed_context_size_error",
    "context_length_exceeded",
    "maximum context length",
    "exceeds the context length",
    "greater than the context length",
    "context window exceeded",
    "prompt is too long",
)


def _requested(message: str) -> tuple[int, int] | None:
    maximum = _MAXIMUM.search(message)
    if maximum is None:
        return None
    for pattern in _REQUESTED:
        match = pattern.search(message)
        if match is None:
            continue
        groups = match.groupdict()
        if groups.get("total"):
            return int(groups["total"]), int(maximum[1])
        return int(groups["prompt"]) + int(groups["answer"]), int(maximum[1])
    return None


def _llama_cpp_fields(body: bytes) -> tuple[int, int] | None:
    try:
        parsed = _decoder.decode(body)
    except msgspec.DecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return None
    total, maximum = _positive_int(error.get("n_prompt_tokens")), _positive_int(error.get("n_ctx"))
    return (total, maximum) if total and maximum else None


def context_overflow_error(message: str, body: bytes = b"") -> PromptTooLong | None:
    """A backend's "does not fit the context" error in Anthropic's wording, else None."""
    numbers = _requested(message)
    for pattern in _BOTH:
        if numbers is None and (match := pattern.search(message)):
            numbers = int(match["total"]), int(match["maximum"])
    lowered = message.lower()
    if numbers is None and any(marker in lowered for marker in _MARKERS):
        numbers = _llama_cpp_fields(body)
        if numbers is None:
            prefix = "" if lowered.startswith("prompt is too long") else "prompt is too long: "
            return PromptTooLong(prefix + message)
    return prompt_too_long(*numbers) if numbers else None


def _server_cannot_count(error: Exception) -> bool:
    """Whether every count would fail now: the server is unreachable, or it has no such
    endpoint. A refusal of this one prompt (its content, its length) says nothing of the next."""
    if isinstance(error, BackendUnavailable) and error.unreachable:
        return True
    return isinstance(error, BackendRejected | BackendFailed) and error.backend_status in (
        404,
        405,
        501,
    )


# ---- the per-gateway state ---------------------------------------------------------------------


class BackendCalls(Protocol):
    """What PromptContext needs of upstream.Upstream (a protocol, so tests can pass fakes)."""

    async def get_json_bytes(self, path: str) -> bytes: ...

    async def post_json_bytes(self, path: str, body: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class LocalModel:
    tokenizer: LocalTokenizer | None = None
    window: int | None = None


def load_local_model(model: str, environ: Mapping[str, str]) -> LocalModel:
    """Reads the model's files as mlx_lm.server finds them; runs in a worker thread."""
    try:
        folder = find_model_folder(model, environ)
        if folder is None:
            log.info("model %s is not a local folder or cached download; estimating counts", model)
            return LocalModel()
        files = read_model_files(folder)
        local = LocalModel(build_local_tokenizer(files), window_from_model_config(files.config))
    except Exception:  # broken files must not break serving; the counts fall back to estimates
        log.warning("cannot read the tokenizer of %s; estimating counts", model, exc_info=True)
        return LocalModel()
    log.info("model files of %s read from %s", model, folder)
    return local


class PromptContext:
    """Context windows and prompt counts per backend model, for the life of one gateway."""

    def __init__(
        self,
        profile: BackendProfile,
        backend: BackendCalls,
        *,
        configured_window: int = 0,
        environ: Mapping[str, str] | None = None,
        retry_after: float = RETRY_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.backend = backend
        self.configured_window = configured_window
        self.environ = os.environ if environ is None else environ
        self.retry_after = retry_after
        self.clock = clock
        self._windows: dict[str, int] = {}
        self._retry_at: dict[tuple[str, str], float] = {}
        self._locals: dict[str, asyncio.Task[LocalModel]] = {}
        self._counts: OrderedDict[bytes, TokenCount] = OrderedDict()
        self._discovery = asyncio.Lock()

    async def fit(self, model: str, body: Json, max_tokens: int) -> tuple[int, TokenCount | None]:
        """The answer limit to send, and the prompt count; without a known window nothing is
        counted, so the common case costs one dict lookup."""
        window = await self.window(model)
        if window is None:
            return max_tokens, None
        count = await self.count(model, body)
        return fitted_max_tokens(count, max_tokens, window), count

    def known_windows(self) -> dict[str, int]:
        return dict(self._windows)

    async def window(self, model: str) -> int | None:
        if self.configured_window:
            return self.configured_window
        known = self._windows.get(model)
        if known is not None or not self._may_try("window", model):
            return known
        async with self._discovery:  # concurrent first requests wait for one discovery
            if model not in self._windows and self._may_try("window", model):
                window = await self._discover(model)
                if window:
                    self._windows[model] = window
                else:
                    self._failed("window", model)
        return self._windows.get(model)

    def known_window(self, model: str) -> int | None:
        """The window as far as it is known now, without asking the backend."""
        return self.configured_window or self._windows.get(model)

    async def count(self, model: str, body: Json) -> TokenCount:
        prompt = prompt_part(body)
        key = hashlib.blake2b(_json.encode(prompt), digest_size=16).digest()
        if (known := self._counts.get(key)) is not None:
            self._counts.move_to_end(key)
            return known
        counted = await self._count(model, prompt)
        if counted.exact:  # an estimate may be replaced by a real count once the backend is back
            self._counts[key] = counted
            if len(self._counts) > 256:
                self._counts.popitem(last=False)
        return counted

    async def _count(self, model: str, prompt: Json) -> TokenCount:
        if self.profile.tokenize_path and self._may_try("tokenize", model):
            tokens = await self._count_by_backend(model, prompt, self.profile.tokenize_path)
            if tokens is not None:
                return TokenCount(tokens, exact=True)
        if self.profile.reads_local_model:
            local = (await self._local(model)).tokenizer
            tokens = await self._count_locally(local, prompt) if local else None
            if tokens is not None:
                return TokenCount(tokens, exact=True)
        return TokenCount(estimate_tokens(prompt), exact=False)

    async def _count_by_backend(self, model: str, prompt: Json, tokenize: str) -> int | None:
        template_path = self.profile.apply_template_path
        try:
            if template_path:
                rendered = await self._post(template_path, apply_template_body(prompt))
                text = prompt_from_template_answer(rendered)
                answer = await self._post(tokenize, text_tokenize_body(text)) if text else None
            else:
                answer = await self._post(tokenize, chat_tokenize_body(prompt))
            tokens = count_from_tokenize_answer(answer)
        except (GatewayError, msgspec.DecodeError) as error:
            if _server_cannot_count(error):
                log.info("backend token count failed (%s); estimating for %gs", error, RETRY_AFTER)
                self._failed("tokenize", model)
            else:  # this prompt only (an image, an overflow): the next one is counted again
                log.debug("backend token count refused this prompt (%s); estimating", error)
            return None
        if tokens is None:  # an answer this server will never make usable
            self._failed("tokenize", model)
        return tokens

    async def _count_locally(self, local: LocalTokenizer, prompt: Json) -> int | None:
        try:
            text = local.render(prompt)
        except Exception as error:  # a model's template is foreign code; failing means estimate
            log.debug("chat template failed (%s); estimating", error)
            return None
        pieces, known, todo = local.plan(text)
        if sum(map(len, todo)) >= THREAD_MIN_CHARS:
            counts = await asyncio.to_thread(local.encode_counts, todo)
        else:
            counts = local.encode_counts(todo)
        return local.finish(pieces, known, dict(zip(todo, counts, strict=True)))

    async def _discover(self, model: str) -> int | None:
        if self.profile.reads_local_model:
            window = (await self._local(model)).window
            if window:
                log.info("context window of %s: %d tokens (config.json)", model, window)
                return window
        probe = self.profile.context_probe
        if probe is None:
            return None
        path = probe.path.replace("{model}", model)
        try:
            if probe.post_model:
                answer = await self._post(path, {"model": model})
            else:
                answer = _decoder.decode(await self.backend.get_json_bytes(path))
        except (GatewayError, msgspec.DecodeError) as error:
            log.info("context window discovery failed (%s); retrying in %gs", error, RETRY_AFTER)
            return None
        window = WINDOW_PARSERS[probe.parser](answer, model)
        log.info("context window of %s: %s tokens (%s)", model, window or "unknown", path)
        return window

    async def _post(self, path: str, body: Json) -> Any:
        return _decoder.decode(await self.backend.post_json_bytes(path, _json.encode(body)))

    async def _local(self, model: str) -> LocalModel:
        task = self._locals.get(model)
        if task is None:
            task = asyncio.ensure_future(asyncio.to_thread(load_local_model, model, self.environ))
            self._locals[model] = task
        # shield: a client that goes away must not cancel the load other requests wait for
        return await asyncio.shield(task)

    def _may_try(self, what: str, model: str) -> bool:
        return self.clock() >= self._retry_at.get((what, model), 0.0)

    def _failed(self, what: str, model: str) -> None:
        self._retry_at[(what, model)] = self.clock() + self.retry_after
