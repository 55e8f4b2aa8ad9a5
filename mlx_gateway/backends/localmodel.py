"""The model's own files, for counting exactly what mlx_lm.server will: `tokenizer.json` with the
`tokenizers` package and the chat template rendered with jinja2 the way transformers'
`apply_chat_template` does, after the message clean-up mlx_lm.server applies first. transformers
is not imported: its import alone takes seconds and pulls in half of PyPI.

`read_model_files` is the one place that reads them; everything else here is pure.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlx_gateway.backends.tokens import REASONING_FIELDS, Json, content_text, tools_as_values

if TYPE_CHECKING:
    from jinja2 import Template
    from tokenizers import Tokenizer

SPECIAL_TOKEN_NAMES = tuple(
    f"{name}_token" for name in ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
)
# Token pairs by which mlx_lm infers that a model reasons; it then renders the template with
# `enable_thinking=True` unless the request says otherwise (mlx_lm.tokenizer_utils._infer_thinking).
THINKING_MARKERS: tuple[tuple[str, ...], ...] = (
    ("<think>", "</think>"),
    ("<longcat_think>", "</longcat_think>"),
    ("<|think:start|>", "<|think:end|>"),
    ("<|channel>", "<channel|>"),
    ("<|open|>", "<|close|>", "<|sep|>", "<|end_of_msg|>"),
)


# ---- the chat template, as transformers renders it --------------------------------------------


def template_messages(messages: list[Json]) -> list[Json]:
    """The messages as mlx_lm.server hands them to the template: `process_message_content`
    (text parts joined, null content as "", tool-call arguments parsed into objects), then
    transformers' clean-up (null-valued keys dropped, reasoning under the names templates read)."""
    return [_alias_reasoning(_clean_message(message)) for message in messages]


def _clean_message(message: Json) -> Json:
    cleaned = {key: value for key, value in message.items() if key != "tool_calls"}
    cleaned["content"] = content_text(message.get("content"))
    if message.get("tool_calls"):
        cleaned["tool_calls"] = [_parsed_call(call) for call in message["tool_calls"]]
    return {key: value for key, value in cleaned.items() if value is not None}


def _parsed_call(call: Json) -> Json:
    function = call.get("function")
    arguments = function.get("arguments") if isinstance(function, dict) else None
    if not isinstance(function, dict) or not isinstance(arguments, str) or not arguments:
        return call
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return call  # mlx_lm.server would refuse the request; the count is moot
    return {**call, "function": {**function, "arguments": parsed}}


def _alias_reasoning(message: Json) -> Json:
    reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _tojson(value: Any, ensure_ascii: bool = False, **options: Any) -> str:
    # transformers' own filter: jinja's escapes HTML and knows no indent/separators/sort_keys.
    return json.dumps(value, ensure_ascii=ensure_ascii, **options)


def _raise_exception(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def compile_template(source: str) -> Template:
    """The environment transformers builds: sandboxed, trim_blocks and lstrip_blocks, loop
    controls, `{% generation %}` (which only marks training spans), and its globals."""
    from jinja2 import ext, nodes
    from jinja2.parser import Parser
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(ext.Extension):
        tags = {"generation"}  # noqa: RUF012 - jinja's own declaration style

        def parse(self, parser: Parser) -> nodes.Node:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return str(caller())

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment.from_string(source)


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    """The model's template(s) and the variables mlx_lm.server renders them with."""

    templates: Mapping[str, Template]
    variables: Mapping[str, Any]  # the special tokens, and mlx_lm's `enable_thinking` default

    def render(self, body: Json) -> str:
        tools = body.get("tools")
        if tools is not None:
            tools = tools_as_values(tools)
        template = self.templates.get("tool_use" if tools is not None else "default")
        template = template or self.templates.get("default")
        if template is None:
            raise LookupError("the model has several chat templates and none is the default")
        kwargs = {**self.variables, **(body.get("chat_template_kwargs") or {})}
        return template.render(
            messages=template_messages(body.get("messages", [])),
            tools=tools,
            documents=None,
            add_generation_prompt=True,
            **kwargs,
        )


# ---- the model's tokenizer, counted piece by piece ---------------------------------------------


class PieceCounts:
    """Token counts of prompt pieces, least recently used dropped beyond `max_chars` of text."""

    def __init__(self, max_chars: int = 4_000_000) -> None:
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._chars = 0
        self._max_chars = max_chars

    def known(self, pieces: Iterable[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for piece in pieces:
            count = self._counts.get(piece)
            if count is not None:
                self._counts.move_to_end(piece)
                found[piece] = count
        return found

    def remember(self, counts: Mapping[str, int]) -> None:
        for piece, count in counts.items():
            if piece not in self._counts:
                self._chars += len(piece)
            self._counts[piece] = count
        while self._chars > self._max_chars and self._counts:
            piece, _ = self._counts.popitem(last=False)
            self._chars -= len(piece)


def boundary_tokens(added_tokens: Iterable[Mapping[str, Any]]) -> list[str]:
    """Added tokens before which the tokenizer always starts afresh: matched on the raw text
    (not normalized), not swallowing the whitespace before them (lstrip) nor depending on the
    character before them (single_word), and not overlapping another added token that a longer
    leftmost match would prefer."""
    contents = [str(token.get("content", "")) for token in added_tokens]
    candidates = [
        str(token["content"])
        for token in added_tokens
        if token.get("content")
        and not token.get("normalized")
        and not token.get("lstrip")
        and not token.get("single_word")
    ]
    return [token for token in candidates if not _overlaps(token, contents)]


def _overlaps(token: str, others: list[str]) -> bool:
    for other in others:
        if other == token:
            continue
        if token in other[1:]:
            return True
        if any(other.endswith(token[:size]) for size in range(1, min(len(token), len(other)))):
            return True
    return False


class LocalTokenizer:
    """A model's tokenizer and chat template. `plan` and `finish` run on the event loop;
    `encode_counts` is the expensive part and may run in a worker thread."""

    def __init__(
        self, tokenizer: Tokenizer, template: ChatTemplate | None, boundaries: list[str]
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        alternatives = "|".join(re.escape(token) for token in sorted(boundaries, key=len))
        self._splitter = re.compile(f"(?=(?:{alternatives}))") if boundaries else None
        self.pieces = PieceCounts()

    def render(self, body: Json) -> str:
        if self.template is None:
            raise LookupError("the model has no chat template")
        return self.template.render(body)

    def plan(self, text: str) -> tuple[list[str], dict[str, int], list[str]]:
        """The pieces of `text`, the counts already known, and the pieces still to tokenize."""
        pieces = self._splitter.split(text) if self._splitter else [text]
        known = self.pieces.known(pieces)
        todo = list(dict.fromkeys(piece for piece in pieces if piece not in known))
        return pieces, known, todo

    def encode_counts(self, pieces: list[str]) -> list[int]:
        encodings = self.tokenizer.encode_batch_fast(pieces, add_special_tokens=False)
        return [len(encoding.ids) for encoding in encodings]

    def finish(self, pieces: list[str], known: dict[str, int], new: Mapping[str, int]) -> int:
        self.pieces.remember(new)
        return sum(known[piece] if piece in known else new[piece] for piece in pieces)

    def count_text(self, text: str) -> int:
        pieces, known, todo = self.plan(text)
        return self.finish(pieces, known, dict(zip(todo, self.encode_counts(todo), strict=True)))

    def count(self, body: Json) -> int:
        return self.count_text(self.render(body))


# ---- the model's files (the one place that reads them) -----------------------------------------


@dataclass(frozen=True, slots=True)
class ModelFiles:
    folder: Path
    tokenizer_json: str | None = None
    tokenizer_config: Json | None = None
    special_tokens_map: Json | None = None
    templates: Mapping[str, str] | None = None  # chat_template.jinja and additional templates
    config: Json | None = None


def hub_cache(environ: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps downloads, by its own precedence of variables."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if environ.get(name):
            return Path(environ[name]).expanduser()
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser() / "hub"
    cache = Path(environ["XDG_CACHE_HOME"]) if environ.get("XDG_CACHE_HOME") else None
    return (cache or Path.home() / ".cache") / "huggingface" / "hub"


def find_model_folder(model: str, environ: Mapping[str, str]) -> Path | None:
    """`--mlx-model` as mlx_lm.server resolves it: a folder, or a Hugging Face cache entry
    (`models--org--name/snapshots/<revision of refs/main>`, else the newest snapshot)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder
    if model.count("/") != 1 or model.startswith(("/", ".", "~")):
        return None
    repo = hub_cache(environ) / ("models--" + model.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    snapshots = sorted((repo / "snapshots").glob("*"), key=lambda path: path.stat().st_mtime)
    return snapshots[-1] if snapshots else None


def _read_text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _read_json(path: Path) -> Json | None:
    text = _read_text(path)
    value = json.loads(text) if text is not None else None
    return value if isinstance(value, dict) else None


def read_model_files(folder: Path) -> ModelFiles:
    """Raises OSError or ValueError for an unreadable or broken file."""
    templates = {"default": text} if (text := _read_text(folder / "chat_template.jinja")) else {}
    for path in sorted((folder / "additional_chat_templates").glob("*.jinja")):
        templates[path.stem] = path.read_text(encoding="utf-8")
    return ModelFiles(
        folder=folder,
        tokenizer_json=_read_text(folder / "tokenizer.json"),
        tokenizer_config=_read_json(folder / "tokenizer_config.json"),
        special_tokens_map=_read_json(folder / "special_tokens_map.json"),
        templates=templates or None,
        config=_read_json(folder / "config.json"),
    )


# ---- building the counter from the files -------------------------------------------------------


def template_sources(files: ModelFiles) -> dict[str, str]:
    """Template files win over `chat_template` in tokenizer_config.json, as in transformers;
    a Python renderer named by `chat_template_type` (mlx_lm) cannot be reproduced here."""
    config = files.tokenizer_config or {}
    if config.get("chat_template_type"):
        return {}
    if files.templates:
        return dict(files.templates)
    source = config.get("chat_template")
    if isinstance(source, str):
        return {"default": source}
    if isinstance(source, list):
        return {str(item["name"]): str(item["template"]) for item in source if "name" in item}
    return {}


def special_token_variables(files: ModelFiles) -> dict[str, str]:
    merged = {**(files.special_tokens_map or {}), **(files.tokenizer_config or {})}
    variables = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = merged.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            variables[name] = value
    return variables


def thinks_by_default(vocab: Mapping[str, int]) -> bool:
    return any(all(token in vocab for token in marker) for marker in THINKING_MARKERS)


def build_local_tokenizer(files: ModelFiles) -> LocalTokenizer | None:
    """None without tokenizer.json; without a usable template the counter can still count
    text but `render` refuses, and the caller estimates."""
    if files.tokenizer_json is None:
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(files.tokenizer_json)
    added = [
        {"content": token.content, "normalized": token.normalized, "lstrip": token.lstrip,
         "single_word": token.single_word}
        for token in tokenizer.get_added_tokens_decoder().values()
    ]  # fmt: skip
    sources = template_sources(files)
    template = None
    if sources:
        variables: dict[str, Any] = dict(special_token_variables(files))
        variables["enable_thinking"] = thinks_by_default(tokenizer.get_vocab())
        compiled = {name: compile_template(source) for name, source in sources.items()}
        template = ChatTemplate(templates=compiled, variables=variables)
    return LocalTokenizer(tokenizer, template, boundary_tokens(added))
