"""`mlx-gateway doctor`: asks a backend directly what the gateway, Claude Code and Codex need of
it, and prints one line per check (ok / warn / fail) with the fix.

Every call goes through the gateway's own backend code (upstream.py, the profile, the context
window discovery and token counting), so what the doctor sees is what the gateway will see. The
exit status is 1 when Claude Code or Codex would not work (nothing answers, no chat answer, no
stream, tools refused), else 0; warnings (a small window, tool calls the model does not make,
no prompt cache) are told but do not fail.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import msgspec

from mlx_gateway.backends.context import PromptContext
from mlx_gateway.backends.probe import probe
from mlx_gateway.backends.profiles import PROFILES, BackendProfile, resolve_profile
from mlx_gateway.backends.upstream import Upstream
from mlx_gateway.cli import build_parser
from mlx_gateway.config import Config, load_config
from mlx_gateway.errors import ConfigError, GatewayError, InvalidRequest
from mlx_gateway.parse.sse import SSEDecoder

CLAUDE_CODE_PROMPT = 20_000  # tokens in Claude Code's first request, about
TEXT_CALL_MARKERS = ("<tool_call>", "<function=", "[TOOL_CALLS]", '"name": "get_weather"')
# A 1x1 PNG: enough to learn whether the server takes images at all.
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
    "z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
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
START_HINTS = {
    "mlx_lm": "mlx_lm.server --model {model} --port {port}",
    "llama_cpp": "llama-server -m MODEL.gguf --jinja -c 32768 --port {port}",
    "ollama": "ollama serve",
    "vllm": "vllm serve {model} --port {port}",
    "lmstudio": "lms server start",
}
WINDOW_HINTS = {
    "mlx_lm": "mlx_lm.server takes the model's own context (config.json): pick a longer one",
    "llama_cpp": "start llama-server with -c 32768 (or more)",
    "ollama": "set num_ctx (OLLAMA_CONTEXT_LENGTH=32768 ollama serve)",
    "vllm": "start vllm with --max-model-len 32768",
    "lmstudio": "load the model with a larger context length",
}

Json = dict[str, Any]
_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # ok, warn or fail
    detail: str
    fix: str = ""
    # A failed check that stops Claude Code and Codex from working.
    blocking: bool = False


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix, blocking=True)


# ---- reading the answers (pure) ----------------------------------------------------------------


def model_ids(answer: Any) -> list[str]:
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list):
        return []
    return [entry["id"] for entry in data if isinstance(entry, dict) and "id" in entry]


def window_check(window: int | None, profile: BackendProfile) -> Check:
    fix = WINDOW_HINTS.get(profile.name, "serve the model with a larger context")
    if window is None:
        return warn("context window", "unknown", "pass --context-window N (the model's context)")
    if window < CLAUDE_CODE_PROMPT:
        detail = f"{window} tokens: under the ~20k tokens of Claude Code's first request"
        return warn("context window", detail, fix)
    return ok("context window", f"{window} tokens")


def first_message(answer: Any) -> Json:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict):
            return message
    return {}


def tool_call_check(message: Json) -> Check:
    calls = message.get("tool_calls") or []
    if calls:
        function = calls[0].get("function") or {}
        name, arguments = function.get("name"), function.get("arguments")
        return ok("tool calling", f"structured tool_calls: {name} {arguments}")
    text = str(message.get("content") or "")
    if any(marker in text for marker in TEXT_CALL_MARKERS):
        return ok("tool calling", "written as text (e.g. <tool_call>), which the gateway parses")
    return warn(
        "tool calling",
        "the model answered without calling get_weather",
        "Claude Code and Codex need a model that calls tools (e.g. a Qwen3 or a coder model)",
    )


def stream_chunks(body: bytes) -> list[Json]:
    decoder = SSEDecoder()
    events = decoder.feed(body) + decoder.flush()
    chunks = []
    for event in events:
        if event.comment is None and event.data and event.data != "[DONE]":
            decoded = _decoder.decode(event.data)
            if isinstance(decoded, dict):
                chunks.append(decoded)
    return chunks


def _deltas(chunks: list[Json]) -> list[Json]:
    deltas = []
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                deltas.append(choice["delta"])
    return deltas


def reasoning_check(chunks: list[Json]) -> Check:
    deltas = _deltas(chunks)
    for field in ("reasoning_content", "reasoning"):
        if any(delta.get(field) for delta in deltas):
            return ok("reasoning", f"as `{field}`: becomes thinking blocks")
    text = "".join(str(delta.get("content") or "") for delta in deltas)
    if "<think>" in text or "</think>" in text:
        return ok("reasoning", "inline <think> tags: split into thinking blocks")
    return ok("reasoning", "none seen: the model answered without a reasoning part")


def usage_check(chunks: list[Json]) -> Check:
    if any(isinstance(chunk.get("usage"), dict) for chunk in chunks):
        return ok("stream usage", "streams end with usage (stream_options.include_usage)")
    return warn(
        "stream usage",
        "no usage in streams: token counts of streamed answers are estimates",
        "a server version that honours stream_options.include_usage",
    )


def cache_check(second: Any) -> Check:
    usage = second.get("usage") if isinstance(second, dict) else None
    details = (usage or {}).get("prompt_tokens_details") or {}
    cached, prompt = details.get("cached_tokens"), (usage or {}).get("prompt_tokens")
    if isinstance(cached, int) and cached > 0:
        return ok("prompt cache", f"{cached} of {prompt} prompt tokens reused on the repeat")
    detail = "cached_tokens not reported" if cached is None else "0 tokens reused on the repeat"
    return warn(
        "prompt cache",
        detail + ": every turn may process the whole prompt again",
        "a server with a prompt cache that reports usage.prompt_tokens_details.cached_tokens",
    )


# ---- asking the backend ------------------------------------------------------------------------


class Doctor:
    """The checks, in order; each records a Check and may stop the rest (nothing answers)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.url = config.backend_base_url
        self.model = config.mlx_model
        self.how = "--backend"
        self._use(resolve_profile(config.backend, self.url))
        self.checks: list[Check] = []

    def _use(self, profile: BackendProfile) -> None:
        config = self.config
        self.profile = profile
        self.upstream = Upstream(self.url, profile, config.timeout, config.total_timeout)
        self.context = PromptContext(
            profile, self.upstream, configured_window=config.context_window
        )

    async def _identify(self) -> None:
        """The kind the server says it is, as the gateway learns it; the port guess only when
        nothing tells."""
        if self.config.backend != "auto":
            return
        identity = await probe(self.url)
        if identity.kind is None:
            self.how = "guessed from the port: no probe answered"
            return
        self.how = "asked the server"
        self._use(PROFILES[identity.kind])

    async def run(self) -> list[Check]:
        await self._identify()
        await self.upstream.start()
        try:
            steps: list[Callable[[], Awaitable[bool]]] = [
                self.reachable, self.window, self.chat, self.tools, self.stream,
                self.counting, self.cache, self.images,
            ]  # fmt: skip
            for step in steps:
                if not await step():
                    break
        finally:
            await self.upstream.close()
        return self.checks

    def add(self, check: Check) -> bool:
        self.checks.append(check)
        return not check.blocking

    async def chat_json(self, body: Json) -> Any:
        return _decoder.decode(await self.upstream.complete(_json.encode(body)))

    def body(self, content: Any, max_tokens: int = 32, **extra: Any) -> Json:
        message = {"role": "user", "content": content}
        return {"model": self.model, "messages": [message], "max_tokens": max_tokens, **extra}

    async def reachable(self) -> bool:
        started = time.perf_counter()
        try:
            answer = _decoder.decode(await self.upstream.get_json_bytes("/v1/models"))
        except GatewayError as error:
            return self.add(fail("reachable", error.message, self._start_hint()))
        except msgspec.DecodeError:
            detail = f"{self.url}/v1/models did not answer JSON: not an OpenAI-compatible server"
            return self.add(fail("reachable", detail, "point --mlx-url at the model server"))
        took = (time.perf_counter() - started) * 1000
        self.add(ok("reachable", f"{self.url} answered GET /v1/models in {took:.0f} ms"))
        self.add(ok("kind", f"{self.profile.name} ({self.how}; --backend sets it)"))
        return self.add(self._models_check(model_ids(answer)))

    def _models_check(self, ids: list[str]) -> Check:
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        if not ids or self.model in ids:
            return ok("models", shown or "none listed")
        detail = f"{shown}; --mlx-model {self.model} is not among them"
        return warn("models", detail, "pass --mlx-model with one of the listed names")

    def _start_hint(self) -> str:
        port = urlsplit(self.url).port or 80
        recipe = START_HINTS.get(self.profile.name, "")
        start = (
            f"start the server: {recipe.format(model=self.model, port=port)}; " if recipe else ""
        )
        return start + "or pass --mlx-url with the address it listens on"

    async def window(self) -> bool:
        return self.add(window_check(await self.context.window(self.model), self.profile))

    async def chat(self) -> bool:
        try:
            message = first_message(await self.chat_json(self.body("Say hello.")))
        except (GatewayError, msgspec.DecodeError) as error:
            return self.add(fail("chat", _reason(error), "check the server's log and --mlx-model"))
        text = str(message.get("content") or message.get("reasoning_content") or "")
        text = text or str(message.get("reasoning") or "")
        return self.add(ok("chat", f"answered {text.strip()[:40]!r}"))

    async def tools(self) -> bool:
        question = "What's the weather in Paris? Call the get_weather tool."
        body = self.body(question, 256, tools=[WEATHER_TOOL], tool_choice="required")
        try:
            answer = await self.chat_json(body)
        except InvalidRequest:  # some servers refuse "required"; the strong prompt remains
            del body["tool_choice"]
            try:
                answer = await self.chat_json(body)
            except (GatewayError, msgspec.DecodeError) as error:
                fix = "llama-server needs --jinja; check the server's tool support"
                return self.add(fail("tool calling", f"tools refused: {_reason(error)}", fix))
        except (GatewayError, msgspec.DecodeError) as error:
            return self.add(fail("tool calling", _reason(error), "check the server's log"))
        return self.add(tool_call_check(first_message(answer)))

    async def stream(self) -> bool:
        body = self.body("Think first, then answer: what is 17 + 25?", 128, stream=True)
        body["stream_options"] = {"include_usage": True}
        if self.profile.thinking_switch == "chat_template_kwargs":
            body["chat_template_kwargs"] = {"enable_thinking": True, "thinking": True}
        try:
            pieces = []
            async with self.upstream.stream(_json.encode(body)) as stream:
                async for piece in stream:
                    pieces.append(piece)
            chunks = stream_chunks(b"".join(pieces))
        except (GatewayError, msgspec.DecodeError) as error:
            return self.add(fail("streaming", _reason(error), "check the server's log"))
        self.add(reasoning_check(chunks))
        return self.add(usage_check(chunks))

    async def counting(self) -> bool:
        counted = await self.context.count(self.model, self.body("How are you today?"))
        if counted.exact:
            how = "the server's tokenizer" if self.profile.tokenize_path else "the model's files"
            return self.add(ok("token counting", f"exact ({how})"))
        fix = "for mlx_lm.server, pass --mlx-model as the folder or Hub id the server loaded"
        detail = "estimated (characters / 3.5): count_tokens and window fitting are approximate"
        return self.add(warn("token counting", detail, fix))

    async def cache(self) -> bool:
        prompt = "Read this and say OK. " + "The quick brown fox jumps over the lazy dog. " * 40
        try:
            await self.chat_json(self.body(prompt, 1))  # fills the cache
            second = await self.chat_json(self.body(prompt, 1))
        except (GatewayError, msgspec.DecodeError) as error:
            return self.add(warn("prompt cache", _reason(error), "check the server's log"))
        return self.add(cache_check(second))

    async def images(self) -> bool:
        content = [
            {"type": "text", "text": "What colour is this pixel?"},
            {"type": "image_url", "image_url": {"url": PIXEL}},
        ]
        try:
            await self.chat_json(self.body(content, 8))
        except (GatewayError, msgspec.DecodeError) as error:
            fix = "a vision model (e.g. mlx_vlm.server with a VL model) if you send images"
            return self.add(warn("images", f"refused: {_reason(error)}", fix))
        return self.add(ok("images", "accepted"))


def _reason(error: Exception) -> str:
    text = error.message if isinstance(error, GatewayError) else str(error)
    return text if len(text) <= 200 else text[:200] + "..."


# ---- the command -------------------------------------------------------------------------------


def verdict(checks: list[Check]) -> str:
    blocking = [check for check in checks if check.blocking]
    if blocking:
        reasons = "; ".join(f"{check.name}: {check.detail}" for check in blocking)
        return f"Claude Code and Codex would not work: {reasons}"
    warned = [check.name for check in checks if check.status == "warn"]
    tail = f" (see the warnings: {', '.join(warned)})" if warned else ""
    return "Claude Code and Codex should work through the gateway" + tail


def text_report(config: Config, checks: list[Check]) -> str:
    lines = [f"mlx-gateway doctor: {config.backend_base_url} (model {config.mlx_model})"]
    for check in checks:
        line = f"{check.status:<5} {check.name:<15} {check.detail}"
        lines.append(line + (f" -- fix: {check.fix}" if check.fix else ""))
    lines.append(verdict(checks))
    return "\n".join(lines)


def json_report(config: Config, checks: list[Check]) -> str:
    report = {
        "url": config.backend_base_url,
        "model": config.mlx_model,
        "ok": not any(check.blocking for check in checks),
        "verdict": verdict(checks),
        "checks": [
            {key: value for key, value in asdict(check).items() if key != "blocking"}
            for check in checks
        ],
    }
    return _json.encode(report).decode()


def run_doctor(argv: Sequence[str]) -> int:
    parser = build_parser()
    parser.prog = "mlx-gateway doctor"
    parser.description = "Checks a backend for the gateway, Claude Code and Codex."
    parser.add_argument("--json", action="store_true", help="one JSON report for machines")
    args = parser.parse_args(argv)
    flags = {name: value for name, value in vars(args).items() if name not in ("config", "json")}
    try:
        config = load_config(flags, os.environ, args.config)
    except ConfigError as exc:
        print(f"mlx-gateway: error: {exc.message}", file=sys.stderr)
        return 2
    checks = asyncio.run(Doctor(config).run())
    print(json_report(config, checks) if args.json else text_report(config, checks))
    return 1 if any(check.blocking for check in checks) else 0
