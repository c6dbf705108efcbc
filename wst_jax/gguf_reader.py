"""GGUF files (llama.cpp's format) as Hugging Face checkpoints, read with `gguf` (numpy, no torch).

A GGUF file holds a key-value header (architecture, sizes, tokenizer, chat template) and tensors,
most of them quantized. This module turns both into what a Hugging Face folder holds:
  * `hf_config(metadata, tensor_names)`: the config.json dict our `DecoderConfig.from_hf` reads;
  * `open_tensors(path)`: every tensor under its HF name, in HF layout ([out, in] for linear
    layers), dequantized to f32 when read, with llama.cpp's conversion edits undone (the q/k row
    permutation of llama models, Gemma's +1 on norm weights).
The tokenizer comes from `wst_jax.gguf_tokenizer`.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np

from wst_jax.errors import NotFoundError

# The quantization types we dequantize (what the zoo's files use, plus the plain float types).
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K")

# GGUF `general.architecture` -> HF `model_type`.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3_text"}

# Per-layer GGUF tensor names -> HF names (after "model.layers.N."); the ffn norm is named by
# what it is in each family: Llama's pre-MLP norm is HF's post_attention_layernorm, while Gemma 3
# has a norm on each side of both attention and the MLP.
_LAYER = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_LAYER_BY_ARCH = {
    "llama": {"ffn_norm": "post_attention_layernorm"},
    "qwen2": {"ffn_norm": "post_attention_layernorm"},
    "gemma3": {"ffn_norm": "pre_feedforward_layernorm",
               "post_attention_norm": "post_attention_layernorm",
               "post_ffw_norm": "post_feedforward_layernorm",
               "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"},
}
_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# Gemma 3 facts llama.cpp hard-codes instead of writing them into the header
# (llama-model.cpp, LLM_ARCH_GEMMA3): every 6th layer is global, the others slide; local layers
# use rope theta 10000; attention scales by head_dim ** -0.5 (query_pre_attn_scalar = head_dim).
_GEMMA3_GLOBAL_EVERY = 6
_GEMMA3_LOCAL_ROPE_THETA = 10000.0


@functools.lru_cache(maxsize=4)
def _reader(path: str, mtime: float) -> gguf.GGUFReader:
  del mtime  # part of the cache key only: a rewritten file is read again
  return gguf.GGUFReader(path)


def reader(path) -> gguf.GGUFReader:
  """The (memory-mapped, cached) reader of a GGUF file; parsing the header takes seconds."""
  path = Path(path)
  if not path.is_file():
    raise NotFoundError(f"GGUF file {str(path)!r} does not exist.")
  try:
    return _reader(str(path.resolve()), path.stat().st_mtime)
  except (ValueError, KeyError) as err:   # what gguf raises on a bad magic or a truncated file
    raise ValueError(f"{path}: not a readable GGUF file ({err}).") from err


def read_metadata(path) -> dict[str, Any]:
  """The GGUF header as {key: str | int | float | bool | list}, e.g.
  "general.architecture" -> "llama", "tokenizer.ggml.tokens" -> list[str]. Decoded once per file
  (seconds for a large vocabulary): one load asks for it for the config, the tensors and the
  tokenizer. Read-only: callers share the dict."""
  return _metadata(reader(path))


@functools.lru_cache(maxsize=4)
def _metadata(gguf_reader: gguf.GGUFReader) -> dict[str, Any]:
  return {key: field.contents() for key, field in gguf_reader.fields.items()
          if not key.startswith("GGUF.")}


def architecture(metadata: dict, source: str) -> str:
  arch = metadata.get("general.architecture")
  if arch not in ARCHITECTURES:
    raise ValueError(f"{source}: GGUF architecture {arch!r} is not supported; supported: "
                     f"{sorted(ARCHITECTURES)}.")
  return arch


def hf_config(metadata: dict, tensor_names, source: str = "GGUF file") -> dict:
  """The HF config.json dict of a GGUF file (its header and the names of its tensors)."""
  arch = architecture(metadata, source)

  def need(key):
    if f"{arch}.{key}" not in metadata:
      raise ValueError(f"{source}: GGUF header has no {arch}.{key!r}.")
    return metadata[f"{arch}.{key}"]

  if any(k.startswith(f"{arch}.rope.scaling.") for k in metadata):
    raise ValueError(f"{source}: GGUF rope scaling ({arch}.rope.scaling.*) is not supported.")
  d, heads = need("embedding_length"), need("attention.head_count")
  head_dim = metadata.get(f"{arch}.attention.key_length", d // heads)
  tokens = metadata.get("tokenizer.ggml.tokens")
  vocab = metadata.get(f"{arch}.vocab_size", len(tokens) if tokens else None)
  if vocab is None:
    raise ValueError(f"{source}: GGUF header gives no vocabulary size.")
  config = dict(
      model_type=ARCHITECTURES[arch], vocab_size=int(vocab), hidden_size=d,
      num_hidden_layers=need("block_count"), num_attention_heads=heads,
      num_key_value_heads=metadata.get(f"{arch}.attention.head_count_kv", heads),
      head_dim=head_dim, intermediate_size=need("feed_forward_length"),
      max_position_embeddings=need("context_length"),
      rms_norm_eps=need("attention.layer_norm_rms_epsilon"),
      tie_word_embeddings="output.weight" not in set(tensor_names),
      bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
      eos_token_id=metadata.get("tokenizer.ggml.eos_token_id"),
      pad_token_id=metadata.get("tokenizer.ggml.padding_token_id"))
  theta = float(metadata.get(f"{arch}.rope.freq_base", 10000.0))
  if arch == "gemma3":
    layers = config["num_hidden_layers"]
    config.update(
        architectures=["Gemma3ForCausalLM"], hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=head_dim, sliding_window=need("attention.sliding_window"),
        layer_types=["full_attention" if (i + 1) % _GEMMA3_GLOBAL_EVERY == 0 else
                     "sliding_attention" for i in range(layers)],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": theta},
                         "sliding_attention": {"rope_type": "default",
                                               "rope_theta": _GEMMA3_LOCAL_ROPE_THETA}},
        final_logit_softcapping=None, attn_logit_softcapping=None)
  else:
    config.update(
        architectures=["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        hidden_act="silu", rope_parameters={"rope_type": "default", "rope_theta": theta})
  return config


def hf_name(gguf_name: str, arch: str, source: str = "GGUF file") -> str:
  """GGUF tensor name -> HF name, e.g. "blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight"."""
  m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
  if m:
    layer, kind, suffix = m.groups()
    table = {**_LAYER, **_LAYER_BY_ARCH[arch]}
    if kind in table:
      return f"model.layers.{layer}.{table[kind]}.{suffix}"
  else:
    base, _, suffix = gguf_name.rpartition(".")
    if base in _GLOBAL and suffix == "weight":
      return f"{_GLOBAL[base]}.weight"
  raise ValueError(f"{source}: GGUF tensor {gguf_name!r} has no counterpart in our {arch} decoder.")


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row permutation (convert_hf_to_gguf.py `permute`), which interleaves
  the two rotate-half halves of each head's rows for its own rope kernel. w: [n_head * Dh, in]."""
  # llama.cpp wrote rows (head, half, i) as (head, i, half); read them back in that order.
  return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def _dequantizer(tensor, arch: str, config: dict, source: str) -> Callable[[], np.ndarray]:
  """-> a function that returns the tensor as f32 in HF layout (numpy shape = GGUF dims reversed)."""
  qtype = tensor.tensor_type.name
  if qtype not in SUPPORTED_TYPES:
    raise ValueError(f"{source}: tensor {tensor.name!r} is quantized as {qtype}, which we do not "
                     f"dequantize; supported: {', '.join(SUPPORTED_TYPES)}.")
  shape = tuple(int(n) for n in reversed(tensor.shape))
  name = tensor.name

  def read() -> np.ndarray:
    w = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(shape)
    if arch == "llama" and re.search(r"\.attn_[qk]\.weight$", name):
      heads = config["num_attention_heads" if ".attn_q." in name else "num_key_value_heads"]
      w = _unpermute(w, heads)
    if arch == "gemma3" and name.endswith("norm.weight"):
      w = w - 1.0   # llama.cpp stores Gemma's RMSNorm (1 + w) as its own norm weight 1 + w
    return w

  return read


class _OneTensorCache:
  """Dequantizes a tensor once however many device blocks are read from it; keeps only the
  latest tensor, so loading never holds more than one dequantized tensor beside the model."""

  def __init__(self):
    self.name, self.value = None, None

  def get(self, name: str, read: Callable[[], np.ndarray]) -> np.ndarray:
    if self.name != name:
      self.name, self.value = name, read()
    return self.value


def open_tensors(path, tensor_cls) -> tuple[dict, dict]:
  """(HF config dict, {HF name: tensor_cls(file, shape, read)}) of a GGUF file.

  `tensor_cls` is `checkpoints.Tensor`: `read(index)` returns that block (a tuple of slices in
  HF layout) of the f32 dequantized tensor.
  """
  path = Path(path)
  source = str(path)
  metadata = read_metadata(path)
  arch = architecture(metadata, source)
  gguf_tensors = reader(path).tensors
  config = hf_config(metadata, [t.name for t in gguf_tensors], source)
  cache = _OneTensorCache()
  tensors = {}
  for t in gguf_tensors:
    read = _dequantizer(t, arch, config, source)
    shape = tuple(int(n) for n in reversed(t.shape))
    tensors[hf_name(t.name, arch, source)] = tensor_cls(
        path.name, shape, lambda index, name=t.name, read=read: cache.get(name, read)[index])
  return config, tensors


def config(path) -> dict:
  """The HF config.json dict of the GGUF file at `path`."""
  return hf_config(read_metadata(path), [t.name for t in reader(path).tensors], str(path))
