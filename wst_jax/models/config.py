"""Decoder configuration, read from (and written to) a Hugging Face `config.json`.

One dataclass covers both families we implement:
  * "gpt2":  learned positions, LayerNorm, GELU MLP, biases everywhere, tied embeddings.
  * "llama": RoPE, RMSNorm, grouped-query attention, gated MLP (SwiGLU / GeGLU); q/k/v/o biases
             as the config says. Llama 2/3, Qwen2/2.5, SmolLM, Mistral, and Gemma 3 text
             ("gemma3_text"), which turns on the options below: (1 + w) RMSNorm, embeddings
             times sqrt(hidden), post-norms, q/k norms, query_pre_attn_scalar, sliding-window
             layers with their own RoPE theta, and optional logit softcaps.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# HF `model_type` -> our family.
FAMILIES = {"gpt2": "gpt2", "llama": "llama", "qwen2": "llama", "mistral": "llama",
            "gemma3_text": "llama"}

# Per-layer attention kinds, as HF's `layer_types` spells them.
FULL, SLIDING = "full_attention", "sliding_attention"

# What HF's Gemma 3 classes hard-code (no config key): `from_hf` sets these, `to_hf` checks them.
# transformers' Gemma3Attention never applies attn_logit_softcapping (5.24 stores it and drops
# it; Gemma 3 replaced it by q/k norms), so neither do we for "gemma3_text".
_GEMMA3 = dict(norm_offset=1.0, scale_embeddings=True, post_norms=True, qk_norm=True,
               attn_softcap=None)
# HF's Llama, Qwen2 and Mistral classes have none of the options.
_PLAIN = dict(norm_offset=0.0, scale_embeddings=False, post_norms=False, qk_norm=False,
              attn_softcap=None, final_softcap=None, query_pre_attn_scalar=None,
              sliding_window=None, layer_types=None, local_rope_theta=None,
              local_rope_scaling=None)

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "mistral": "MistralForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  family: str                      # "gpt2" | "llama"
  model_type: str                  # HF model_type, kept for saving
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  max_position_embeddings: int
  norm_eps: float
  activation: str = "silu"         # "silu" (SwiGLU) | "gelu_new" | "gelu" | "gelu_pytorch_tanh"
  rope_theta: float = 10000.0
  rope_scaling: tuple[tuple[str, Any], ...] | None = None  # sorted items of HF rope dict
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  tie_word_embeddings: bool = False
  bos_token_id: int | None = None
  eos_token_id: tuple[int, ...] = ()
  pad_token_id: int | None = None
  dtype: str = "float32"           # compute dtype
  param_dtype: str = "float32"
  # Options of the "llama" family. The defaults are plain Llama; "gemma3_text" sets them.
  norm_offset: float = 0.0         # RMSNorm multiplies by (norm_offset + weight); Gemma: 1
  scale_embeddings: bool = False   # token embeddings times sqrt(hidden_size)
  post_norms: bool = False         # RMSNorm on the attention and MLP outputs, before the residual
  qk_norm: bool = False            # RMSNorm over head_dim on queries and keys, before RoPE
  query_pre_attn_scalar: float | None = None  # scores times this ** -0.5; None: head_dim
  attn_softcap: float | None = None   # scores -> cap * tanh(scores / cap), before the mask
                                      # (Gemma 2's; HF's Gemma 3 ignores the config key)
  final_softcap: float | None = None  # the same on the output logits
  sliding_window: int | None = None   # a sliding layer sees this many tokens (itself included)
  layer_types: tuple[str, ...] | None = None  # FULL | SLIDING per layer; None: all FULL
  local_rope_theta: float | None = None  # RoPE of sliding layers; None: as the full layers
  local_rope_scaling: tuple[tuple[str, Any], ...] | None = None  # with local_rope_theta

  def __post_init__(self):
    if self.layer_types is not None:
      if len(self.layer_types) != self.num_layers or not set(self.layer_types) <= {FULL, SLIDING}:
        raise ValueError(f"layer_types={self.layer_types!r}: need {self.num_layers} entries "
                         f"(num_layers), each {FULL!r} or {SLIDING!r}.")
      if SLIDING in self.layer_types and not self.sliding_window:
        raise ValueError(f"layer_types has {SLIDING!r} layers but "
                         f"sliding_window={self.sliding_window!r}.")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self):
    return jnp.dtype(self.param_dtype)

  def is_sliding(self, layer: int) -> bool:
    """Whether layer `layer` attends only within `sliding_window` (else causal over all)."""
    return self.layer_types is not None and self.layer_types[layer] == SLIDING

  def rope(self, sliding: bool = False) -> tuple[float, dict]:
    """(theta, HF rope dict without theta) of a full (sliding=False) or sliding layer."""
    if sliding and self.local_rope_theta is not None:
      return self.local_rope_theta, dict(self.local_rope_scaling or {})
    return self.rope_theta, dict(self.rope_scaling or {})

  def replace(self, **kw) -> "DecoderConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_hf(cls, hf: dict, *, source: str = "config.json", **overrides) -> "DecoderConfig":
    """Builds the config from a parsed HF config dict; `source` names the file in errors."""
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
      raise ValueError(f"{source}: model_type={model_type!r} is not supported; "
                       f"supported: {sorted(FAMILIES)}.")
    eos = hf.get("eos_token_id")
    eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)

    def need(key):
      if key not in hf:
        raise ValueError(f"{source}: missing key {key!r} for model_type={model_type!r}.")
      return hf[key]

    if FAMILIES[model_type] == "gpt2":
      d, h = need("n_embd"), need("n_head")
      kw = dict(hidden_size=d, num_layers=need("n_layer"), num_heads=h, num_kv_heads=h,
                head_dim=d // h, intermediate_size=hf.get("n_inner") or 4 * d,
                max_position_embeddings=need("n_positions"),
                norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                activation=hf.get("activation_function", "gelu_new"),
                qkv_bias=True, out_bias=True, mlp_bias=True,
                tie_word_embeddings=hf.get("tie_word_embeddings", True))
    elif model_type == "gemma3_text":
      kw = _gemma3_from_hf(hf, source, need)
    else:
      d, h = need("hidden_size"), need("num_attention_heads")
      # transformers 5 writes `rope_parameters`; older files use rope_theta + rope_scaling.
      rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
      theta, scaling = _rope(rope, hf.get("rope_theta", 10000.0), source,
                             "rope_parameters" if hf.get("rope_parameters") else "rope_scaling")
      bias = bool(hf.get("attention_bias", False))
      qwen = model_type == "qwen2"   # Qwen2 has q/k/v biases but none on o_proj.
      kw = dict(hidden_size=d, num_layers=need("num_hidden_layers"), num_heads=h,
                num_kv_heads=hf.get("num_key_value_heads") or h,
                head_dim=hf.get("head_dim") or d // h,
                intermediate_size=need("intermediate_size"),
                max_position_embeddings=hf.get("max_position_embeddings", 2048),
                norm_eps=hf.get("rms_norm_eps", 1e-6),
                activation=hf.get("hidden_act", "silu"), rope_theta=theta, rope_scaling=scaling,
                qkv_bias=qwen or bias, out_bias=bias and not qwen,
                mlp_bias=bool(hf.get("mlp_bias", False)),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)))
    kw.update(family=FAMILIES[model_type], model_type=model_type, vocab_size=need("vocab_size"),
              bos_token_id=hf.get("bos_token_id"), eos_token_id=eos,
              pad_token_id=hf.get("pad_token_id"))
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict:
    """The HF config.json dict that `from_hf` reads back to this config (dtypes aside)."""
    eos = list(self.eos_token_id) if len(self.eos_token_id) != 1 else self.eos_token_id[0]
    common = dict(model_type=self.model_type, vocab_size=self.vocab_size,
                  bos_token_id=self.bos_token_id, eos_token_id=eos or None,
                  pad_token_id=self.pad_token_id, tie_word_embeddings=self.tie_word_embeddings)
    if self.family == "gpt2":
      return dict(common, architectures=["GPT2LMHeadModel"], n_embd=self.hidden_size,
                  n_layer=self.num_layers, n_head=self.num_heads, n_inner=self.intermediate_size,
                  n_positions=self.max_position_embeddings, layer_norm_epsilon=self.norm_eps,
                  activation_function=self.activation)
    # The options HF hard-codes per model class must match that class.
    implied = _GEMMA3 if self.model_type == "gemma3_text" else _PLAIN
    wrong = {k: getattr(self, k) for k, v in implied.items() if getattr(self, k) != v}
    if wrong:
      raise ValueError(f"{wrong} cannot be written as model_type={self.model_type!r}, "
                       f"which implies {implied}.")
    shape = dict(architectures=[_ARCHITECTURES[self.model_type]], hidden_size=self.hidden_size,
                 num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
                 num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim,
                 intermediate_size=self.intermediate_size,
                 max_position_embeddings=self.max_position_embeddings,
                 rms_norm_eps=self.norm_eps, attention_bias=self.out_bias)
    if self.model_type == "gemma3_text":
      rope = {kind: dict(scaling or {"rope_type": "default"}, rope_theta=theta)
              for kind, (theta, scaling) in [(FULL, self.rope(False)), (SLIDING, self.rope(True))]}
      return dict(common, **shape, hidden_activation=self.activation, rope_parameters=rope,
                  query_pre_attn_scalar=(self.head_dim if self.query_pre_attn_scalar is None
                                         else self.query_pre_attn_scalar),
                  sliding_window=self.sliding_window,
                  layer_types=list(self.layer_types or [FULL] * self.num_layers),
                  attn_logit_softcapping=None,
                  final_logit_softcapping=self.final_softcap)
    rope = dict(self.rope_scaling or {"rope_type": "default"}, rope_theta=self.rope_theta)
    return dict(common, **shape, hidden_act=self.activation, rope_parameters=rope,
                mlp_bias=self.mlp_bias)


def _rope(rope: dict, default_theta: float, source: str, key: str):
  """An HF rope dict (rope_type, rope_theta, factor...) -> (theta, sorted scaling items or None
  for plain RoPE); `key` names it in errors."""
  rope = dict(rope)
  theta = rope.pop("rope_theta", default_theta)
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "linear", "llama3"):
    raise ValueError(f"{source}: {key}: rope type {rope_type!r} is not supported "
                     "(supported: default, linear, llama3).")
  return float(theta), None if rope_type == "default" else tuple(sorted(rope.items()))


def _gemma3_from_hf(hf: dict, source: str, need) -> dict:
  """The Gemma 3 text fields. The shape keys are required; others absent (or null) take
  transformers' Gemma3TextConfig defaults, as transformers would."""
  def key(name, default):
    return hf[name] if hf.get(name) is not None else default

  if hf.get("use_bidirectional_attention"):
    raise ValueError(f"{source}: use_bidirectional_attention=True (an encoder, e.g. "
                     "EmbeddingGemma) is not supported: our decoder is causal.")
  n = need("num_hidden_layers")
  # transformers 5 writes `layer_types`; older files say every k-th layer is full.
  layer_types = hf.get("layer_types")
  if layer_types is None:
    k = key("sliding_window_pattern", 6)
    layer_types = [SLIDING if (i + 1) % k else FULL for i in range(n)]
  layer_types = tuple(layer_types)
  if len(layer_types) != n or not set(layer_types) <= {FULL, SLIDING}:
    raise ValueError(f"{source}: layer_types={list(layer_types)!r} needs {n} entries "
                     f"(num_hidden_layers), each {FULL!r} or {SLIDING!r}.")
  window = hf.get("sliding_window", 4096)
  if SLIDING in layer_types and (not isinstance(window, int) or window < 1):
    raise ValueError(f"{source}: sliding_window={window!r}, but layer_types has "
                     f"{SLIDING!r} layers; it needs a positive int.")
  # transformers 5: rope_parameters = {"full_attention": {...}, "sliding_attention": {...}};
  # older files: rope_theta (+ rope_scaling) for full layers, rope_local_base_freq for sliding.
  per_type = hf.get("rope_parameters") or {}
  if not set(per_type) <= {FULL, SLIDING}:
    raise ValueError(f"{source}: rope_parameters must map {FULL!r} / {SLIDING!r} to rope "
                     f"dicts for model_type='gemma3_text', got keys {sorted(per_type)}.")
  full = dict(per_type.get(FULL) or {}, **(hf.get("rope_scaling") or {}))
  theta, scaling = _rope(full, key("rope_theta", 1e6), source, f"rope_parameters.{FULL}")
  local_theta, local_scaling = _rope(per_type.get(SLIDING) or {},
                                     key("rope_local_base_freq", 1e4), source,
                                     f"rope_parameters.{SLIDING}")
  bias = bool(hf.get("attention_bias", False))
  return dict(_GEMMA3, hidden_size=need("hidden_size"), num_layers=n,
              num_heads=need("num_attention_heads"),
              num_kv_heads=need("num_key_value_heads"), head_dim=key("head_dim", 256),
              intermediate_size=need("intermediate_size"),
              max_position_embeddings=key("max_position_embeddings", 131072),
              norm_eps=key("rms_norm_eps", 1e-6),
              activation=key("hidden_activation", "gelu_pytorch_tanh"),
              rope_theta=theta, rope_scaling=scaling, local_rope_theta=local_theta,
              local_rope_scaling=local_scaling, qkv_bias=bias, out_bias=bias,
              tie_word_embeddings=bool(key("tie_word_embeddings", True)),
              query_pre_attn_scalar=key("query_pre_attn_scalar", 256),
              final_softcap=hf.get("final_logit_softcapping"),
              sliding_window=window if SLIDING in layer_types else None,
              layer_types=layer_types)
