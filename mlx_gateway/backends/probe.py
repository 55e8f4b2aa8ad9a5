"""What kind of server a backend is, asked of the server itself rather than guessed from its port.

Every kind answers something only it answers: llama.cpp's `GET /props` (its generation settings,
`total_slots`, `build_info`), Ollama's `GET /api/version`, LM Studio's `GET /api/v0/models`
(entries with `compatibility_type` and `state`), vLLM's `GET /v1/models` (`owned_by: "vllm"`,
`max_model_len`; llama.cpp says `"llamacpp"` there), and mlx_lm.server's `/v1/models` (entries
with no `owned_by`) and `/health` (`{"status": "ok"}`). The paths are asked at once, and the
answers read by the pure parsers below in that order of trust; the first that recognises its
server wins. A server that answers none of them but is there is a generic OpenAI server; one
that answers nothing at all leaves the kind unknown (the caller falls back to the port guess).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from mlx_gateway.backends.httpclient import HttpClient, TransportError

PROBE_TIMEOUT = 5.0
# Marked as a probe (a server's log, or a test's recording, can tell it from a client's request)
# and as coming from a gateway (another gateway refuses it rather than forward it round).
_ACCEPT_JSON = b"Accept: application/json\r\nX-MLX-Gateway-Hop: 1\r\nX-MLX-Gateway-Probe: pool\r\n"
_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


@dataclass(frozen=True, slots=True)
class Identity:
    """What a probe learnt. `kind` None: nothing answered that tells (down, or still loading)."""

    kind: str | None
    reachable: bool = True
    # llama.cpp's parallel slots: the requests it serves at once.
    slots: int | None = None
    models: tuple[str, ...] = ()
    detail: str = ""


# ---- the parsers: one decoded answer in, an Identity or None out ------------------------------


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _entries(answer: Any) -> list[dict[str, Any]] | None:
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list):
        return None
    return [entry for entry in data if isinstance(entry, dict)]


def _ids(entries: list[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(entry["id"] for entry in entries if isinstance(entry.get("id"), str))


def from_llama_props(answer: Any) -> Identity | None:
    if not isinstance(answer, dict):
        return None
    settings = answer.get("default_generation_settings")
    build = answer.get("build_info")
    if not isinstance(settings, dict) and not isinstance(build, str):
        return None
    model = answer.get("model_alias") or answer.get("model_path")
    return Identity(
        "llama_cpp",
        slots=_positive_int(answer.get("total_slots")),
        models=(model,) if isinstance(model, str) and model else (),
        detail=build if isinstance(build, str) else "",
    )


def from_ollama_version(answer: Any) -> Identity | None:
    if isinstance(answer, dict) and isinstance(answer.get("version"), str) and len(answer) == 1:
        return Identity("ollama", detail=answer["version"])
    return None


_LMSTUDIO_KEYS = ("compatibility_type", "state", "max_context_length")


def from_lmstudio_models(answer: Any) -> Identity | None:
    entries = _entries(answer)
    if not entries or not all(any(key in e for key in _LMSTUDIO_KEYS) for e in entries):
        return None
    loaded = [entry for entry in entries if entry.get("state") == "loaded"]
    return Identity("lmstudio", models=_ids(loaded or entries))


# Who says what in `owned_by` of `GET /v1/models`.
OWNERS = {"vllm": "vllm", "llamacpp": "llama_cpp", "sglang": "openai"}


def from_openai_models(answer: Any) -> Identity | None:
    """vLLM and llama.cpp name themselves in `owned_by`; mlx_lm.server writes no `owned_by`;
    any other list of models is a generic OpenAI-compatible server."""
    entries = _entries(answer)
    if entries is None:
        return None
    owners = {entry.get("owned_by") for entry in entries}
    known = [OWNERS[owner] for owner in owners if isinstance(owner, str) and owner in OWNERS]
    if known:
        kind = known[0]
    elif owners <= {None} and answer.get("object") == "list":
        kind = "mlx_lm"
    else:
        kind = "openai"
    return Identity(kind, models=_ids(entries))


def from_health(answer: Any) -> Identity | None:
    """mlx_lm.server's `{"status": "ok"}` (llama.cpp says the same, but its /props came first)."""
    if isinstance(answer, dict) and answer.get("status") == "ok":
        return Identity("mlx_lm")
    return None


# Asked in this order of trust: a server's own endpoint before the OpenAI-compatible list.
PARSERS: tuple[tuple[str, Callable[[Any], Identity | None]], ...] = (
    ("/props", from_llama_props),
    ("/api/version", from_ollama_version),
    ("/api/v0/models", from_lmstudio_models),
    ("/v1/models", from_openai_models),
    ("/health", from_health),
)
PROBE_PATHS = tuple(path for path, _ in PARSERS)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any  # the decoded JSON, or None


def identify(answers: Mapping[str, Answer | None]) -> Identity:
    """The kind from the answers to PROBE_PATHS (None: no answer at all on that path)."""
    for path, parser in PARSERS:
        answer = answers.get(path)
        if answer is not None and answer.status == 200:
            identity = parser(answer.body)
            if identity is not None:
                return identity
    reachable = any(answer is not None for answer in answers.values())
    return Identity(None, reachable=reachable)


# ---- the one call that does I/O ---------------------------------------------------------------


async def _get(client: HttpClient, path: str) -> Answer | None:
    try:
        response = await client.request("GET", path, headers=_ACCEPT_JSON)
        body = await response.read()
    except (TransportError, OSError, TimeoutError):
        return None
    try:
        decoded = _decoder.decode(body)
    except msgspec.DecodeError:
        decoded = None
    return Answer(response.status, decoded)


async def probe(base_url: str, timeout: float = PROBE_TIMEOUT) -> Identity:
    """Asks every probe path at once on connections of its own, closed afterwards."""
    client = HttpClient(base_url, timeout=timeout, total_timeout=timeout)
    try:
        answers = await asyncio.gather(*(_get(client, path) for path in PROBE_PATHS))
    finally:
        client.close()
    return identify(dict(zip(PROBE_PATHS, answers, strict=True)))


async def alive(base_url: str, path: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """The health check: any answer below 500 on the kind's cheap path."""
    client = HttpClient(base_url, timeout=timeout, total_timeout=timeout)
    try:
        answer = await _get(client, path)
    finally:
        client.close()
    return answer is not None and answer.status < 500
