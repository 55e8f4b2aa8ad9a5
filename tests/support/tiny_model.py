"""Build a tiny Llama model folder that `mlx_lm.server --model <folder>` loads, offline, in seconds.

The model is a real 2-layer Llama (float32 safetensors, byte-level BPE tokenizer, ChatML template
with Qwen/Hermes tool calling), but its weights are set by hand so that greedy decoding is a small
state machine over the last token. That makes its answers deterministic and useful to tests:

* plain prompts get gibberish made of real words ending with `<|im_end|>` after 16-28 tokens; where
  in the word chain the answer starts depends on a hash of the prompt (attention averages a random
  2-vector per token), so different prompts usually get different answers;
* a prompt whose tools block (`<tools>`) is not yet followed by a `<tool_response>` gets exactly
  `<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>`, which
  mlx_lm.server parses into `tool_calls` (it infers its `json_tools` parser from the template);
* `chat_template_kwargs: {"thinking": true}` opens `<think>` in the prompt; the model then reasons
  (a fixed word chain), closes `</think>` and answers as above. `enable_thinking: false` renders
  Qwen3's empty think block. mlx_lm passes `enable_thinking=True` by default whenever `<think>` is
  in the vocabulary, so reasoning cannot be keyed on it without being on for every request;
* banning `<|im_end|>` through `logit_bias` makes the answer chain loop, for runs to `max_tokens`.

How the weights do it (hidden size 64): dims 8..63 are one-hot "states" (one per scripted token,
all other tokens share state 0, "free"); lm_head maps each state to its successor. Layer 0 head 0
attends, position-independently (RoPE's slowest pair barely turns with rope_theta 1e6), to `<tools>`
and, more strongly, to `<tool_response>`, writing +/- into a signal dim that decides between
`<tool_call>` and the answer chain in the free state. Head 1 attends uniformly and writes the prompt
hash. Every other weight is small seeded noise.

The folder is cached under `$MLX_GATEWAY_TEST_CACHE` (default `~/.cache/mlx-gateway-tests`) in a
subfolder named by a hash of this file and of the training text, built in a temporary folder and
renamed into place so concurrent builders never see half a model.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tokenizers
from numpy.typing import NDArray
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

Matrix = NDArray[np.float32]

SEED = 20240611
VOCAB_TRAINED = 2048
HIDDEN, HEADS, HEAD_DIM, INTERMEDIATE, LAYERS = 64, 4, 16, 128, 2
CONTEXT = 4096
ROPE_THETA = 1e6

# Residual-stream layout.
BIAS, F_TOOLS, F_RESP, SIG = 0, 1, 2, 3
HASH = (4, 5)
TOKEN_R = (6, 7)
STATE0 = 8
MAX_STATES = HIDDEN - STATE0
FREE = 0  # state index of every unscripted token

# Gains, chosen so that the state logit is ~50, the tools signal moves `<tool_call>` by ~+/-15 and
# the prompt hash by a logit or two: greedy picks by >11 logits wherever the script is fixed
# (measured on prompts up to 8k tokens); the hash only breaks the tie between the answer's starts.
ALPHA, KAPPA, ETA = 10.0, 11.5, 2.0
Q_GAIN, K_GAIN, SIG_GAIN, HASH_GAIN = 2.2, 2.2, 0.108, 0.5
SIG_ON = 0.5  # the signal dim's value when the tools block is live
R_SCALE, NOISE = 0.3, 1e-3

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKUP = [
    "<tool_call>", "</tool_call>", "<think>", "</think>",
    "<tools>", "</tools>", "<tool_response>", "</tool_response>",
]  # fmt: skip
# Added so that the scripted tool call can be spelled with distinct tokens: a state machine over the
# last token cannot emit the same token twice with different successors.
CALL_PIECES = ['{"name": "', '", "arguments": {"', '": "', '"}}']
TOOL_CALL_BODY = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
ANSWER_LEN, ANSWER_STARTS, REASONING_LEN = 28, (0, 4, 8, 12), 8

# Modules present in every supported Python; the cache key hashes their text, not their names.
CORPUS = sorted([
    "argparse.py", "ast.py", "calendar.py", "collections/__init__.py", "configparser.py", "csv.py",
    "dataclasses.py", "difflib.py", "enum.py", "fractions.py", "functools.py", "heapq.py",
    "inspect.py", "json/decoder.py", "json/encoder.py", "logging/__init__.py", "pprint.py",
    "random.py", "shutil.py", "statistics.py", "string.py", "textwrap.py", "typing.py", "uuid.py",
])  # fmt: skip

CHAT_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' }}
{{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and ' }}
{{- 'arguments within <tool_call></tool_call> XML tags.<|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' + (message.content or '') }}
{%- for tool_call in message.tool_calls or [] %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '<tool_call>{"name": "' + tool_call.name + '", "arguments": ' }}
{%- if tool_call.arguments is string %}{{- tool_call.arguments }}\
{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
{{- '}</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
{{- '<|im_start|>user' }}
{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
{{- '<|im_end|>\\n' }}
{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}
{{- '<think>\\n\\n</think>\\n\\n' }}
{%- elif thinking is defined and thinking %}
{{- '<think>' }}
{%- endif %}
{%- endif %}
"""


@dataclass(frozen=True)
class Script:
    """The token ids the model emits, by role."""

    eos: int
    think: int
    think_end: int
    tools: int
    tool_response: int
    reasoning: list[int]
    tool_call: list[int]  # `<tool_call>`, the body pieces, `</tool_call>`
    answer: list[int]


def default_cache_root() -> Path:
    configured = os.environ.get("MLX_GATEWAY_TEST_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "mlx-gateway-tests"


def build_tiny_model(cache_root: Path | None = None) -> Path:
    """Return the folder of the tiny model, building it if this recipe has not been built yet."""
    corpus = _read_corpus()
    # Resolved, because mlx_lm.server lists the resolved `--model` path in GET /v1/models.
    root = (cache_root or default_cache_root()).expanduser().resolve()
    final = root / f"tiny-llama-{_recipe_hash(corpus)}"
    if (final / "config.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        _write_model(staging, corpus)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        os.rename(staging, final)
    except OSError:
        # Another process won the race; its folder is complete because it was renamed whole.
        if not (final / "config.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _read_corpus() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = [stdlib / name for name in CORPUS]
    return [path.read_text(encoding="utf-8") for path in paths if path.exists()]


def _recipe_hash(corpus: list[str]) -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(tokenizers.__version__.encode())
    for text in corpus:
        digest.update(text.encode())
    return digest.hexdigest()[:16]


def _write_model(folder: Path, corpus: list[str]) -> None:
    tokenizer = _train_tokenizer(corpus)
    script = _make_script(tokenizer)
    vocab_size = tokenizer.get_vocab_size()
    tokenizer.save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", _tokenizer_config(tokenizer))
    _write_json(folder / "config.json", _model_config(vocab_size, script.eos))
    weights = _craft_weights(script, vocab_size, np.random.default_rng(SEED))
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "mlx"})


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _train_tokenizer(corpus: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TRAINED,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    added = [AddedToken(text, special=False, normalized=False) for text in MARKUP + CALL_PIECES]
    tokenizer.add_tokens(added)
    return tokenizer


def _tokenizer_config(tokenizer: Tokenizer) -> dict[str, object]:
    added = {
        str(token_id): {
            "content": token.content,
            **dict.fromkeys(("lstrip", "normalized", "rstrip", "single_word"), False),
            "special": token.special,
        }
        for token_id, token in sorted(tokenizer.get_added_tokens_decoder().items())
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": CONTEXT,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


def _model_config(vocab_size: int, eos: int) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": CONTEXT,
        "rms_norm_eps": 1e-6,
        "rope_theta": ROPE_THETA,
        "tie_word_embeddings": False,
        "vocab_size": vocab_size,
        "bos_token_id": None,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }


def _token_texts(tokenizer: Tokenizer) -> dict[str, int]:
    """Decoded text -> id, for tokens that decode to clean text on their own."""
    texts: dict[str, int] = {}
    for token_id in range(tokenizer.get_vocab_size()):
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        if text and "\ufffd" not in text:
            texts.setdefault(text, token_id)
    return texts


def _token_id(tokenizer: Tokenizer, text: str) -> int:
    token_id = tokenizer.token_to_id(text)
    if token_id is None:
        raise RuntimeError(f"{text!r} is not a token")
    return token_id


def _spell_distinct(text: str, pieces: dict[str, int], used: frozenset[int]) -> list[int] | None:
    """Spell `text` with tokens that are all different (longest pieces first), or None."""
    if not text:
        return []
    for end in range(len(text), 0, -1):
        token_id = pieces.get(text[:end])
        if token_id is None or token_id in used:
            continue
        rest = _spell_distinct(text[end:], pieces, used | {token_id})
        if rest is not None:
            return [token_id, *rest]
    return None


def _make_script(tokenizer: Tokenizer) -> Script:
    ids = {text: _token_id(tokenizer, text) for text in SPECIAL + MARKUP}
    texts = _token_texts(tokenizer)
    body = _spell_distinct(TOOL_CALL_BODY, texts, frozenset())
    if body is None:
        raise RuntimeError("the tool call cannot be spelled with distinct tokens")
    rng = np.random.default_rng(SEED)
    words = _pick(texts, r" [a-z]{3,9}", set(body), ANSWER_LEN + REASONING_LEN, rng)
    capitals = _pick(texts, r" [A-Z][a-z]{2,9}", set(body), len(ANSWER_STARTS) + 1, rng)
    answer = words[:ANSWER_LEN]
    for index, start in enumerate(ANSWER_STARTS):
        answer[start] = capitals[index]
        if start:  # close the previous sentence so the next one starts cleanly
            answer[start - 1] = texts[";!?"[index % 3]]
    answer[-1] = texts["."]
    reasoning = [capitals[-1], *words[ANSWER_LEN + 1 :]]
    tool_call = [ids["<tool_call>"], *body, ids["</tool_call>"]]
    return Script(
        eos=ids["<|im_end|>"], think=ids["<think>"], think_end=ids["</think>"],
        tools=ids["<tools>"], tool_response=ids["<tool_response>"],
        reasoning=reasoning, tool_call=tool_call, answer=answer,
    )  # fmt: skip


def _pick(
    texts: dict[str, int], pattern: str, exclude: set[int], count: int, rng: np.random.Generator
) -> list[int]:
    matcher = re.compile(pattern)
    candidates = sorted(i for t, i in texts.items() if matcher.fullmatch(t) and i not in exclude)
    return [int(i) for i in rng.choice(candidates, size=count, replace=False)]


def _state_of(script: Script) -> dict[int, int]:
    """Token id -> one-hot state index, for every token that has a scripted successor."""
    scripted = [script.think, *script.reasoning, *script.tool_call, *script.answer]
    if len(set(scripted)) != len(scripted) or len(scripted) >= MAX_STATES:
        raise RuntimeError("scripted tokens must be distinct and fit the state dims")
    return {token: index + 1 for index, token in enumerate(scripted)}


def _transitions(script: Script) -> list[tuple[int, int]]:
    """Unconditional (token, next token) pairs; the free state is handled separately."""
    chains = [
        [script.think, *script.reasoning, script.think_end],
        [*script.tool_call, script.eos],
        [*script.answer, script.eos],
    ]
    return [pair for chain in chains for pair in itertools.pairwise(chain)]


def _craft_weights(script: Script, vocab: int, rng: np.random.Generator) -> dict[str, Matrix]:
    states = _state_of(script)
    weights = {
        "model.embed_tokens.weight": _embeddings(script, vocab, states, rng),
        "lm_head.weight": _lm_head(script, vocab, states, rng),
        "model.norm.weight": np.ones(HIDDEN, np.float32),
    }
    for layer in range(LAYERS):
        weights.update(_layer(layer, rng))
    return weights


def _noise(rng: np.random.Generator, *shape: int) -> Matrix:
    return (rng.standard_normal(shape) * NOISE).astype(np.float32)


def _embeddings(
    script: Script, vocab: int, states: dict[int, int], rng: np.random.Generator
) -> Matrix:
    embed = _noise(rng, vocab, HIDDEN)
    angles = rng.uniform(0, 2 * np.pi, vocab)
    embed[:, BIAS] = 1.0
    embed[:, TOKEN_R[0]] = R_SCALE * np.cos(angles)
    embed[:, TOKEN_R[1]] = R_SCALE * np.sin(angles)
    embed[:, STATE0:] = 0.0
    embed[:, STATE0 + FREE] = 1.0
    for token, state in states.items():
        embed[token, STATE0 + FREE] = 0.0
        embed[token, STATE0 + state] = 1.0
    markup = [script.tools, script.tool_response, script.eos, script.think, script.think_end]
    embed[markup, TOKEN_R[0] : TOKEN_R[1] + 1] = 0.0  # template markup should not sway the hash
    embed[script.tools, F_TOOLS] = 1.0
    embed[script.tool_response, F_RESP] = 1.0
    return embed


def _lm_head(
    script: Script, vocab: int, states: dict[int, int], rng: np.random.Generator
) -> Matrix:
    head = _noise(rng, vocab, HIDDEN)
    for token, successor in _transitions(script):
        head[successor, STATE0 + states[token]] += ALPHA
    # With `<|im_end|>` banned the answer loops instead of wandering off the chain.
    head[script.answer[0], STATE0 + states[script.answer[-1]]] += ALPHA / 2
    call = script.tool_call[0]
    head[call, STATE0 + FREE] += ALPHA
    head[call, SIG] += KAPPA
    head[call, BIAS] -= KAPPA * SIG_ON / 2
    for index, start in enumerate(ANSWER_STARTS):
        angle = 2 * np.pi * index / len(ANSWER_STARTS)
        head[script.answer[start], STATE0 + FREE] += ALPHA
        head[script.answer[start], HASH[0]] += ETA * np.cos(angle)
        head[script.answer[start], HASH[1]] += ETA * np.sin(angle)
    return head


def _layer(layer: int, rng: np.random.Generator) -> dict[str, Matrix]:
    width = HEADS * HEAD_DIM
    prefix = f"model.layers.{layer}."
    attention = {name: _noise(rng, width, HIDDEN) for name in ("q_proj", "k_proj", "v_proj")}
    attention["o_proj"] = _noise(rng, HIDDEN, width)
    if layer == 0:
        _wire_detectors(attention)
    weights = {f"{prefix}self_attn.{name}.weight": value for name, value in attention.items()}
    weights[f"{prefix}mlp.gate_proj.weight"] = _noise(rng, INTERMEDIATE, HIDDEN)
    weights[f"{prefix}mlp.up_proj.weight"] = _noise(rng, INTERMEDIATE, HIDDEN)
    weights[f"{prefix}mlp.down_proj.weight"] = _noise(rng, HIDDEN, INTERMEDIATE)
    weights[f"{prefix}input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
    weights[f"{prefix}post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
    return weights


def _wire_detectors(attention: dict[str, Matrix]) -> None:
    """Head 0: tools-block detector -> SIG. Head 1: uniform average of TOKEN_R -> HASH."""
    q, k, v, o = (attention[name] for name in ("q_proj", "k_proj", "v_proj", "o_proj"))
    for head in (0, 1):
        rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
        q[rows], k[rows], v[rows], o[:, rows] = 0.0, 0.0, 0.0, 0.0
    slow = HEAD_DIM // 2 - 1  # RoPE's slowest pair: ~0.02 rad over the whole context
    q[slow, BIAS] = Q_GAIN
    k[slow, F_TOOLS] = K_GAIN
    k[slow, F_RESP] = 1.5 * K_GAIN  # any tool result outweighs the tools block
    v[0, F_TOOLS], v[0, F_RESP] = 1.0, -1.0
    o[SIG, 0] = SIG_GAIN
    v[HEAD_DIM, TOKEN_R[0]], v[HEAD_DIM + 1, TOKEN_R[1]] = 1.0, 1.0
    o[HASH[0], HEAD_DIM], o[HASH[1], HEAD_DIM + 1] = HASH_GAIN, HASH_GAIN
