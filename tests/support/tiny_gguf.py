"""Write the tiny test model (see `tiny_model`) as a GGUF file for llama.cpp's `llama-server`.

The same weights, tokenizer and chat template as the folder mlx_lm.server loads, so both servers
run the same deterministic little state machine. What a GGUF needs beyond the weights:

* `llama.*` hyperparameters. `llama.context_length` is the window the model claims to be trained
  for; llama-server caps each slot's `--ctx-size` to it ("the slot context exceeds the training
  context of the model - capping"), so a test that needs a larger window asks for a file that
  claims it (`context_length`; the default is `max_position_embeddings`, 4096). The tiny model's
  script does not depend on the window: RoPE's slowest pair, which its tools detector uses,
  turns by about 0.02 rad over 4096 positions and 0.4 over 65536.
* The query and key projections with their rows reordered: Hugging Face's Llama rotates the two
  halves of each head (`rotate_half`), llama.cpp's `llama` architecture rotates adjacent pairs, so
  row `i` of the first half and row `i` of the second half become rows `2i` and `2i + 1`. Without
  this the tools detector, which sits on RoPE's slowest pair, would see a spinning key.
* The tokenizer as `tokenizer.ggml.*` metadata: model `gpt2` (byte-level BPE), pre-tokenizer
  `gpt-2` (the regex of `pre_tokenizers.ByteLevel(use_regex=True)`), the byte-level vocabulary in
  id order, the merges as `"left right"` strings, and a type per token: special added tokens are
  CONTROL (never printed, never matched in plain text), the other added tokens (`<tool_call>`,
  the tool-call body pieces) USER_DEFINED (matched in any text and printed as written), all
  others NORMAL.
* `tokenizer.chat_template`, which `llama-server --jinja` renders for chat requests.

Each file is cached next to the model folder under `$MLX_GATEWAY_TEST_CACHE`, named by the window
it claims and a hash of the model folder's own recipe name, this file and the `gguf` package
version; it is written to a temporary name and renamed, so a concurrent reader never sees half a
file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from numpy.typing import NDArray
from safetensors.numpy import load_file

from tests.support.tiny_model import build_tiny_model, default_cache_root

Matrix = NDArray[np.float32]
ARCH = "llama"
SPECIAL_TYPE = int(gguf.TokenType.CONTROL)
ADDED_TYPE = int(gguf.TokenType.USER_DEFINED)
NORMAL_TYPE = int(gguf.TokenType.NORMAL)

# Hugging Face layer tensor -> llama.cpp tensor, `{}` being the layer index.
LAYER_TENSORS = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
ROTATED = ("self_attn.q_proj.weight", "self_attn.k_proj.weight")


def build_tiny_gguf(context_length: int | None = None, cache_root: Path | None = None) -> Path:
    """Return the GGUF of the tiny model claiming `context_length` (default: the trained 4096),
    writing it if this recipe has not been written yet."""
    root = (cache_root or default_cache_root()).expanduser().resolve()
    model = build_tiny_model(root)
    config = _read_json(model / "config.json")
    window = context_length or int(config["max_position_embeddings"])
    final = root / f"{model.name}-ctx{window}-{_recipe_hash(model)}.gguf"
    if final.exists():
        return final
    handle, staging = tempfile.mkstemp(prefix=".writing-", suffix=".gguf", dir=root)
    os.close(handle)
    try:
        write_gguf(model, Path(staging), window)
        os.chmod(staging, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(staging, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
    return final


def _recipe_hash(model: Path) -> str:
    """The model folder's name already hashes its recipe; add the converter and its library."""
    digest = hashlib.sha256(model.name.encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(version("gguf").encode())
    return digest.hexdigest()[:16]


def write_gguf(model: Path, path: Path, context_length: int) -> None:
    """Convert the model folder at `model` into one GGUF file at `path` (float32 throughout)."""
    config = _read_json(model / "config.json")
    tokenizer = _read_json(model / "tokenizer.json")
    tokenizer_config = _read_json(model / "tokenizer_config.json")
    writer = gguf.GGUFWriter(str(path), ARCH)
    _add_hyperparameters(writer, config, context_length)
    _add_tokenizer(writer, tokenizer, config)
    writer.add_chat_template(str(tokenizer_config["chat_template"]))
    for name, tensor in _tensors(model, config):
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _add_hyperparameters(
    writer: gguf.GGUFWriter, config: dict[str, Any], context_length: int
) -> None:
    writer.add_name("tiny-llama")
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    writer.add_context_length(context_length)
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(int(config["num_key_value_heads"]))
    writer.add_key_length(int(config["head_dim"]))
    writer.add_value_length(int(config["head_dim"]))
    writer.add_rope_dimension_count(int(config["head_dim"]))
    writer.add_rope_freq_base(float(config["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(int(config["vocab_size"]))


def _add_tokenizer(
    writer: gguf.GGUFWriter, tokenizer: dict[str, Any], config: dict[str, Any]
) -> None:
    tokens, types = _vocabulary(tokenizer, int(config["vocab_size"]))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([_merge_text(merge) for merge in tokenizer["model"]["merges"]])
    ids = {token: index for index, token in enumerate(tokens)}
    writer.add_eos_token_id(int(config["eos_token_id"]))
    # No BOS is ever added (as in the Hugging Face tokenizer); naming one keeps llama.cpp from
    # falling back to its GPT-2 default id, which here is an ordinary token.
    writer.add_bos_token_id(ids["<|endoftext|>"])
    writer.add_pad_token_id(ids["<|endoftext|>"])
    writer.add_add_bos_token(False)


def _vocabulary(tokenizer: dict[str, Any], size: int) -> tuple[list[str], list[int]]:
    """Every id's text and type; added tokens are stored as written, the rest byte-encoded."""
    tokens: list[str | None] = [None] * size
    types = [NORMAL_TYPE] * size
    for text, index in tokenizer["model"]["vocab"].items():
        tokens[index] = text
    for added in tokenizer["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = SPECIAL_TYPE if added["special"] else ADDED_TYPE
    missing = [index for index, token in enumerate(tokens) if token is None]
    if missing:
        raise RuntimeError(f"token ids without text: {missing[:10]}")
    return [token for token in tokens if token is not None], types


def _merge_text(merge: str | list[str]) -> str:
    """Newer `tokenizers` save a merge as a pair, older ones as one `"left right"` string."""
    return merge if isinstance(merge, str) else " ".join(merge)


def _tensors(model: Path, config: dict[str, Any]) -> list[tuple[str, Matrix]]:
    weights = load_file(str(model / "model.safetensors"))
    heads = int(config["num_attention_heads"])
    kv_heads = int(config["num_key_value_heads"])
    named = [(GLOBAL_TENSORS[name], weights[name]) for name in GLOBAL_TENSORS]
    for layer in range(int(config["num_hidden_layers"])):
        for source, target in LAYER_TENSORS.items():
            tensor = weights[f"model.layers.{layer}.{source}"]
            if source in ROTATED:
                tensor = _pairs_adjacent(tensor, heads if "q_proj" in source else kv_heads)
            named.append((f"blk.{layer}.{target}", tensor))
    return [(name, np.ascontiguousarray(tensor, dtype=np.float32)) for name, tensor in named]


def _pairs_adjacent(weight: Matrix, heads: int) -> Matrix:
    """Per head, interleave the two halves of the rows: [a0..a7, b0..b7] -> [a0, b0, a1, b1...]."""
    rows, columns = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, columns).swapaxes(1, 2).reshape(rows, columns)
