"""Decoder configuration, read from (and written to) a Hugging Face `config.json`.

One dataclass covers both families we implement:
  * "gpt2":  learned positions, LayerNorm, GELU MLP, biases everywhere, tied embeddings.
  * "llama": RoPE, RMSNorm, grouped-query attention, SwiGLU MLP (Llama 2/3, Qwen2/2.5,
             SmolLM, Mistral); q/k/v/o biases as the config says.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# HF `model_type` -> our family.
FAMILIES = {"gpt2": "gpt2", "llama": "llama", "qwen2": "llama", "mistral": "llama"}


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
  activation: str = "silu"         # "silu" (SwiGLU) | "gelu_new" | "gelu"
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

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self):
    return jnp.dtype(self.param_dtype)

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
    else:
      d, h = need("hidden_size"), need("num_attention_heads")
      # transformers 5 writes `rope_parameters`; older files use rope_theta + rope_scaling.
      rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
      theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
      rope_type = rope.get("rope_type", rope.get("type", "default"))
      if rope_type not in ("default", "linear", "llama3"):
        raise ValueError(f"{source}: rope type {rope_type!r} is not supported "
                         "(supported: default, linear, llama3).")
      bias = bool(hf.get("attention_bias", False))
      qwen = model_type == "qwen2"   # Qwen2 has q/k/v biases but none on o_proj.
      kw = dict(hidden_size=d, num_layers=need("num_hidden_layers"), num_heads=h,
                num_kv_heads=hf.get("num_key_value_heads") or h,
                head_dim=hf.get("head_dim") or d // h,
                intermediate_size=need("intermediate_size"),
                max_position_embeddings=hf.get("max_position_embeddings", 2048),
                norm_eps=hf.get("rms_norm_eps", 1e-6),
                activation=hf.get("hidden_act", "silu"), rope_theta=float(theta),
                rope_scaling=None if rope_type == "default" else tuple(sorted(rope.items())),
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
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "mistral": "MistralForCausalLM"}[self.model_type]
    rope = dict(self.rope_scaling or {"rope_type": "default"}, rope_theta=self.rope_theta)
    return dict(common, architectures=[arch], hidden_size=self.hidden_size,
                num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
                num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim,
                intermediate_size=self.intermediate_size,
                max_position_embeddings=self.max_position_embeddings,
                rms_norm_eps=self.norm_eps, hidden_act=self.activation,
                rope_parameters=rope, attention_bias=self.out_bias, mlp_bias=self.mlp_bias)
