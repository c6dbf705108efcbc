"""Our own Flax NNX decoder-only LM for the GPT-2 and Llama families (the latter with Gemma 3's
options: (1 + w) RMSNorm, scaled embeddings, post-norms, q/k norms, sliding-window layers, softcaps;
see `DecoderConfig`).

Every parameter is an `nnx.Param` with `axes` metadata (logical axis names: "vocab", "embed",
"heads", "kv_heads", "head_dim", "mlp", "layers"...), so `wst_jax.sharding` can place it on a mesh.
Parameters are stored as [in, out] kernels; `wst_jax.checkpoints` maps HF names and layouts.

The KV cache is an explicit pytree passed in and out (never module state), so decoding stays a
pure function that runs inside `jax.jit` / `lax.while_loop` and inside the RL step.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from wst_jax.models.config import DecoderConfig

_NEG = -1e30  # finite mask value: fully masked (padding) rows give garbage, never NaN


class LayerCache(NamedTuple):
  """Keys and values of one layer: [B, Hkv, S, Dh] each, S = cache length.

  Heads before slots: the attention dots then read the cache in place, with no per-step
  transpose of the whole cache (which dominated CPU decode time with [B, S, Hkv, Dh])."""
  k: jax.Array
  v: jax.Array


def init_cache(cfg: DecoderConfig, batch: int, length: int,
               num_layers: int | None = None) -> list[LayerCache]:
  """An empty cache for num_layers layers (None: all of them)."""
  shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
  zeros = lambda: jnp.zeros(shape, cfg.compute_dtype)
  return [LayerCache(zeros(), zeros()) for _ in range(cfg.num_layers if num_layers is None
                                                       else num_layers)]


def _param(rngs, shape, axes, dtype, std=0.02, zeros=False):
  value = jnp.zeros(shape, dtype) if zeros else std * jax.random.normal(rngs.params(), shape, dtype)
  return nnx.Param(value, axes=axes)


def _dot_dtype(dtype, rows: int, kernel_dtype):
  """The dtype a matmul's inputs are cast to: the compute dtype `dtype`, except for a single row
  (a batch-1 decode step) on XLA's CPU backend, where an f32 kernel is not cast down: a bf16 dot
  at one row runs ~2x slower than the f32 one, before the cast of the whole kernel (measured:
  benchmarks/RESULTS.md, "Mixed precision")."""
  if rows == 1 and jax.default_backend() == "cpu":
    return jnp.promote_types(dtype, kernel_dtype)
  return dtype


def matmul_2d(x, kernel, dtype, bias=None, out_dtype=None, transposed=False):
  """x [..., in] @ kernel [in, out] (+ bias) -> [..., out] in `out_dtype` (default `dtype`);
  with `transposed`, kernel is [out, in] (the LM head, stored like the embedding).

  Mixed precision as accelerators do it, for every matmul of the decoder: inputs in the compute
  `dtype`, products accumulated in f32 (`preferred_element_type`), the bias added in f32, then one
  cast. (A bf16 dot with a bf16 result runs slower than f32 on XLA CPU; with f32 accumulation it
  runs 2-3x faster than f32 at 16-64 rows.) One 2-D matmul over the flattened leading axes: XLA's
  CPU backend runs the backward pass of a 3-D contraction about twice as slow (the kernel
  gradient contracts over both batch and time), a 2-D one at matmul speed."""
  x2 = x.reshape(-1, x.shape[-1])
  cast = _dot_dtype(dtype, x2.shape[0], kernel.dtype)
  x2, kernel = x2.astype(cast), kernel.astype(cast)
  if not transposed:
    y = jnp.matmul(x2, kernel, preferred_element_type=jnp.float32)
  elif x2.shape[0] == 1 or jnp.dtype(cast) == jnp.float32:
    y = jnp.matmul(x2, kernel.T, preferred_element_type=jnp.float32)
  else:
    # kernel [out, in] . x [rows, in] -> [out, rows], then transposed: XLA CPU's bf16 dot runs
    # this form ~6x faster than x . kernel^T (Qwen2.5's head at 64 rows: 42 vs 248 ms).
    y = jax.lax.dot_general(kernel, x2, (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32).T
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return y.astype(out_dtype or dtype).reshape(*x.shape[:-1], y.shape[-1])


class Dense(nnx.Module):
  """y = x @ kernel (+ bias); kernel [in..., out...] flattened as [in, out]."""

  def __init__(self, d_in, d_out, axes, cfg: DecoderConfig, rngs, bias=False):
    self.kernel = _param(rngs, (d_in, d_out), axes, cfg.weight_dtype)
    self.bias = _param(rngs, (d_out,), axes[1:], cfg.weight_dtype, zeros=True) if bias else None
    self.dtype = cfg.compute_dtype

  def __call__(self, x):
    return matmul_2d(x, self.kernel[...], self.dtype, None if self.bias is None else self.bias[...])


class Norm(nnx.Module):
  """LayerNorm (gpt2) or RMSNorm (llama) over the last axis, of size `dim` (default hidden_size)
  with logical name `axis`; statistics in f32. RMSNorm multiplies by (cfg.norm_offset + scale),
  in f32 (Gemma stores scale - 1 and scales before casting back, as HF does)."""

  def __init__(self, cfg: DecoderConfig, rngs, dim: int | None = None, axis: str = "embed"):
    dim = dim or cfg.hidden_size
    self.rms = cfg.family == "llama"
    self.eps = cfg.norm_eps
    self.offset = cfg.norm_offset
    self.scale = nnx.Param(jnp.full((dim,), 1.0 - self.offset, cfg.weight_dtype), axes=(axis,))
    self.bias = None if self.rms else _param(rngs, (dim,), (axis,), cfg.weight_dtype, zeros=True)

  def __call__(self, x):
    dtype, x = x.dtype, x.astype(jnp.float32)
    if self.rms:
      x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + self.eps)
      scale = self.scale[...].astype(jnp.float32)
      if self.offset:
        scale = self.offset + scale
      return (x * scale).astype(dtype)
    x = x - jnp.mean(x, -1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + self.eps)
    return (x * self.scale[...] + self.bias[...]).astype(dtype)


def rope_frequencies(cfg: DecoderConfig, sliding: bool = False) -> jax.Array:
  """Inverse frequencies f32[Dh/2] of a full (or sliding) layer, with its theta and scaling
  (default/linear/llama3): `cfg.rope(sliding)`."""
  theta, scaling = cfg.rope(sliding)
  inv = 1.0 / theta ** (jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim)
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind == "linear":
    inv = inv / scaling["factor"]
  elif kind == "llama3":
    factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    smooth = (old / wavelen - lo) / (hi - lo)
    mid = (1 - smooth) * inv / factor + smooth * inv
    inv = jnp.where(wavelen > old / lo, inv / factor, jnp.where(wavelen < old / hi, inv, mid))
  return inv


def apply_rope(x, positions, inv_freq):
  """x [B, T, H, Dh] rotated by positions [B, T] (HF's rotate-half convention)."""
  angles = positions[..., None].astype(jnp.float32) * inv_freq          # [B, T, Dh/2]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def softcap(x, cap: float | None):
  """cap * tanh(x / cap): bounds x to (-cap, cap) smoothly (Gemma 2's softcapping); None: x."""
  return x if cap is None else jnp.tanh(x / cap) * cap


class Attention(nnx.Module):
  """Causal grouped-query self-attention; with `sliding`, each token sees only the last
  `cfg.sliding_window` cache slots (itself included)."""

  def __init__(self, cfg: DecoderConfig, rngs, sliding: bool = False):
    d, h, kv, dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.cfg = cfg
    self.sliding = sliding
    self.q = Dense(d, h * dh, ("embed", "heads"), cfg, rngs, bias=cfg.qkv_bias)
    self.k = Dense(d, kv * dh, ("embed", "kv_heads"), cfg, rngs, bias=cfg.qkv_bias)
    self.v = Dense(d, kv * dh, ("embed", "kv_heads"), cfg, rngs, bias=cfg.qkv_bias)
    self.o = Dense(h * dh, d, ("heads", "embed"), cfg, rngs, bias=cfg.out_bias)
    # One norm per head vector, shared by all heads.
    self.q_norm = Norm(cfg, rngs, dh, "head_dim") if cfg.qk_norm else None
    self.k_norm = Norm(cfg, rngs, dh, "head_dim") if cfg.qk_norm else None

  def __call__(self, x, positions, kv_mask, cache: LayerCache, cache_index):
    """x [B,T,D]; kv_mask bool[B,S] marks real tokens in the cache (incl. these T).

    cache_index: an int (every row writes its T tokens at cache slots [cache_index,
    cache_index+T)), or int32[B] with T = 1 (row b writes its token at slot cache_index[b]: rows
    at different points of their answers, as in `sampling.generate_queued`)."""
    cfg = self.cfg
    b, t, _ = x.shape
    q = self.q(x).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = self.k(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = self.v(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    if cfg.family == "llama":
      inv = rope_frequencies(cfg, self.sliding)
      q, k = apply_rope(q, positions, inv), apply_rope(k, positions, inv)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)            # [B, Hkv, T, Dh]
    k, v = k.astype(cache.k.dtype), v.astype(cache.v.dtype)
    if jnp.ndim(cache_index) == 1:
      rows = jnp.arange(b)
      k_all = cache.k.at[rows, :, cache_index].set(k[:, :, 0])
      v_all = cache.v.at[rows, :, cache_index].set(v[:, :, 0])
      q_slot = cache_index[:, None]                                                  # [B, 1]
    else:
      k_all = jax.lax.dynamic_update_slice_in_dim(cache.k, k, cache_index, 2)
      v_all = jax.lax.dynamic_update_slice_in_dim(cache.v, v, cache_index, 2)
      q_slot = (cache_index + jnp.arange(t))[None]                                   # [1, T]
    s = k_all.shape[2]
    # Grouped-query attention: G query heads share each kv head. Products accumulate in f32.
    g = cfg.num_heads // cfg.num_kv_heads
    qg = q.reshape(b, t, cfg.num_kv_heads, g, cfg.head_dim)
    f32 = jnp.float32
    # An f32 decode step: multiply-and-reduce over the cache. XLA's CPU backend runs the same
    # contraction as batched dots about 2x slower in f32 (measured at batch 16), but 3-4x faster
    # in bf16 with f32 accumulation (batch 64: 1.2 vs 4.5 ms per layer), which the einsum is.
    reduce = t == 1 and cfg.compute_dtype == f32
    if reduce:
      scores = jnp.sum(qg[:, 0, :, :, None] * k_all[:, :, None], -1)[:, :, :, None]
    elif t == 1:  # without the singleton query axis (XLA CPU has no bf16 dot for that form)
      scores = jnp.einsum("bkgd,bksd->bkgs", qg[:, 0], k_all,
                          preferred_element_type=f32)[:, :, :, None]
    else:
      scores = jnp.einsum("btkgd,bksd->bkgts", qg, k_all, preferred_element_type=f32)
    scalar = cfg.head_dim if cfg.query_pre_attn_scalar is None else cfg.query_pre_attn_scalar
    scores = softcap(scores / math.sqrt(scalar), cfg.attn_softcap)
    kv_slot = jnp.arange(s)
    visible = kv_slot <= q_slot[..., None]                                      # [B|1, T, S]
    if self.sliding:
      # HF's sliding_window_overlay: kv > q - window, i.e. the last `window` slots, q included.
      # Slots, not positions: a left-padded row's real tokens fill consecutive slots, so the
      # two distances agree (as in HF, whose masks also index cache slots). Sliding layers keep
      # the full-length cache and mask it: simplest, one cache layout for every layer.
      visible = visible & (kv_slot > q_slot[..., None] - cfg.sliding_window)
    visible = visible & kv_mask[:, None, :]                                         # [B, T, S]
    scores = jnp.where(visible[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1)
    if reduce:
      out = jnp.sum(probs[:, :, :, 0, :, None] * v_all[:, :, None], -2)[:, None]
    elif t == 1:
      out = jnp.einsum("bkgs,bksd->bkgd", probs[:, :, :, 0].astype(v_all.dtype), v_all,
                       preferred_element_type=f32)[:, None]
    elif isinstance(cache_index, int) and cache_index == 0:  # a prompt from its start
      out = jnp.einsum("bkgts,bksd->btkgd", probs.astype(v_all.dtype), v_all,
                       preferred_element_type=f32)
    else:
      # A continuation after cached tokens (`sampling.prefill`): over an updated cache, XLA's CPU
      # backend has no bf16 dot with f32 results that writes [b, t, k, g, d]; it has one that
      # writes [b, k, g, t, d], transposed after.
      out = jnp.einsum("bkgts,bksd->bkgtd", probs.astype(v_all.dtype), v_all,
                       preferred_element_type=f32).transpose(0, 3, 1, 2, 4)
    out = out.astype(cfg.compute_dtype).reshape(b, t, -1)
    return self.o(out), LayerCache(k_all, v_all)


_TANH_GELU = lambda x: jax.nn.gelu(x, approximate=True)
ACTIVATIONS = {"silu": jax.nn.silu, "gelu_new": _TANH_GELU, "gelu_pytorch_tanh": _TANH_GELU,
               "gelu": lambda x: jax.nn.gelu(x, approximate=False)}


class MLP(nnx.Module):
  """gpt2: down(act(up(x))); llama: gated, down(act(gate(x)) * up(x)) (SwiGLU, GeGLU)."""

  def __init__(self, cfg: DecoderConfig, rngs):
    d, f, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
    self.gated = cfg.family == "llama"
    if cfg.activation not in ACTIVATIONS:
      raise ValueError(f"activation={cfg.activation!r} (hidden_act / hidden_activation in "
                       f"config.json) is not supported; supported: {sorted(ACTIVATIONS)}.")
    self.act = ACTIVATIONS[cfg.activation]
    self.up = Dense(d, f, ("embed", "mlp"), cfg, rngs, bias=bias)
    self.gate = Dense(d, f, ("embed", "mlp"), cfg, rngs, bias=bias) if self.gated else None
    self.down = Dense(f, d, ("mlp", "embed"), cfg, rngs, bias=bias)

  def __call__(self, x):
    h = self.act(self.gate(x)) * self.up(x) if self.gated else self.act(self.up(x))
    return self.down(h)


class Block(nnx.Module):
  """Pre-norm residual block; with `cfg.post_norms` the attention and MLP outputs are normed
  too before they join the residual stream (Gemma's sandwich norm)."""

  def __init__(self, cfg: DecoderConfig, rngs, sliding: bool = False):
    self.attn_norm = Norm(cfg, rngs)
    self.attn = Attention(cfg, rngs, sliding)
    self.attn_post_norm = Norm(cfg, rngs) if cfg.post_norms else None
    self.mlp_norm = Norm(cfg, rngs)
    self.mlp = MLP(cfg, rngs)
    self.mlp_post_norm = Norm(cfg, rngs) if cfg.post_norms else None

  def __call__(self, x, positions, kv_mask, cache, cache_index):
    h, cache = self.attn(self.attn_norm(x), positions, kv_mask, cache, cache_index)
    if self.attn_post_norm is not None:
      h = self.attn_post_norm(h)
    x = x + h
    h = self.mlp(self.mlp_norm(x))
    if self.mlp_post_norm is not None:
      h = self.mlp_post_norm(h)
    return x + h, cache


class Decoder(nnx.Module):
  """Decoder-only LM. `__call__` returns logits f32[B,T,V], final hidden [B,T,D], new cache."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d = cfg.hidden_size
    self.embed = _param(rngs, (cfg.vocab_size, d), ("vocab", "embed"), cfg.weight_dtype)
    self.pos_embed = (_param(rngs, (cfg.max_position_embeddings, d), (None, "embed"),
                             cfg.weight_dtype, std=0.01) if cfg.family == "gpt2" else None)
    self.layers = nnx.List([Block(cfg, rngs, cfg.is_sliding(i)) for i in range(cfg.num_layers)])
    self.final_norm = Norm(cfg, rngs)
    # [V, D] like the embedding (and HF): see `logits`. Drawn as [D, V] and transposed, so a
    # seeded init (the embedded default models, the tests' tiny worlds) is what it was when the
    # head was stored [D, V].
    self.lm_head = (None if cfg.tie_word_embeddings else nnx.Param(
        _param(rngs, (d, cfg.vocab_size), (), cfg.weight_dtype)[...].T, axes=("vocab", "embed")))

  def __call__(self, tokens, positions, kv_mask, cache=None, cache_index=0):
    """tokens, positions int32[B,T]; kv_mask bool[B,S] (S = T without a cache).

    Without a cache this is a plain causal forward pass over T tokens (training, scoring)."""
    x, new_cache = self.blocks(self.embed_tokens(tokens, positions), positions, kv_mask,
                               cache=cache, cache_index=cache_index)
    hidden = self.final_norm(x)
    return self.logits(hidden), hidden, new_cache

  def embed_tokens(self, tokens, positions):
    """tokens, positions int32[B,T] -> the first layer's input [B,T,D] in the compute dtype."""
    cfg = self.cfg
    x = self.embed[...][tokens].astype(cfg.compute_dtype)
    if cfg.scale_embeddings:
      # HF rounds sqrt(hidden_size) to the weights' dtype first (bf16: sqrt(3072) -> 55.5).
      x = x * jnp.asarray(math.sqrt(cfg.hidden_size), cfg.weight_dtype).astype(x.dtype)
    if self.pos_embed is not None:
      x = x + self.pos_embed[...][positions].astype(cfg.compute_dtype)
    return x

  def blocks(self, x, positions, kv_mask, layers: slice = slice(None), cache=None, cache_index=0):
    """The residual stream x [B,T,D] through self.layers[layers] (not the final norm) -> (x, the
    new cache of those layers). cache: one LayerCache per layer of the range, or None (a plain
    forward pass: kv_mask bool[B,T]). A range lets a reward model cache the stream below the
    layers it trains (`reward_model` recipe "top")."""
    layers = self.layers[layers]
    if cache is None:
      cache = init_cache(self.cfg, x.shape[0], x.shape[1], len(layers))
    new_cache = []
    for layer, layer_cache in zip(layers, cache, strict=True):
      x, layer_cache = layer(x, positions, kv_mask, layer_cache, cache_index)
      new_cache.append(layer_cache)
    return x, new_cache

  def logits(self, hidden):
    """The LM head: final hidden states [..., D] -> f32 logits [..., V] (softcapped in f32 when
    cfg.final_softcap is set).

    The head is [V, D] (the embedding when tied): each logit reads one contiguous row. XLA's CPU
    backend runs a decode batch's [B, D] x [D, V] product ~1.4x faster this way than over a
    [D, V] kernel (measured on Qwen2.5-0.5B's head, batch 16)."""
    cfg = self.cfg
    head = self.embed if self.lm_head is None else self.lm_head
    return softcap(matmul_2d(hidden, head[...], cfg.compute_dtype, out_dtype=jnp.float32,
                             transposed=True), cfg.final_softcap)


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """Left-padded mask bool[B,T] -> positions int32[B,T] counting real tokens from 0."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
