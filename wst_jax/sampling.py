"""Batched generation with a KV cache: one pure, shape-static function for jit and the RL step.

Prompts are left-padded, so every row's next token goes to the same cache slot; positions count
real tokens only. The loop is a `lax.while_loop` that stops early once every row is done.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from wst_jax.models import Decoder, LayerCache, positions_from_mask


class Generation(NamedTuple):
  tokens: jax.Array    # int32[B, N]  generated ids, pad_id after a row is done
  logprobs: jax.Array  # f32[B, N]   log p(token) under softmax(logits / temperature)
  mask: jax.Array      # bool[B, N]  True for real generated tokens (the stop token included)
  done: jax.Array      # bool[B]     the row produced a stop token within N tokens


def process_logits(logits, *, temperature: float, top_k: int, top_p: float):
  """f32[B,V] -> the logits we sample from: scaled by temperature, then top-k / top-p filtered."""
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least the argmax).
    cutoff_idx = jnp.sum(cum - jax.nn.softmax(sorted_logits, axis=-1) < top_p, axis=-1) - 1
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx[:, None], axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def generate(model: Decoder, prompt, prompt_mask, rng, *, max_new_tokens: int,
             eos_ids: tuple[int, ...], pad_id: int, greedy: bool = True,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Generation:
  """Decodes up to `max_new_tokens` after each left-padded prompt.

  Args:
    prompt: int32[B, P] left-padded ids; prompt_mask: bool[B, P] True on real tokens.
    rng: PRNG key (unused when greedy).
    eos_ids: ids that end a row (the stop token is kept, with mask True).
  """
  b, p = prompt.shape
  total = p + max_new_tokens
  kv_mask = jnp.zeros((b, total), bool).at[:, :p].set(prompt_mask)
  positions = positions_from_mask(prompt_mask)
  # The prompt sees only itself: prefill into a cache of its own length (no attention over the
  # empty slots, about half the prefill's attention work), then pad the cache for the new tokens.
  # Only the last position's logits are needed: the LM head over the whole prompt (its largest
  # matmul) is left to XLA's dead-code elimination.
  _, hidden, cache = model(prompt, positions, prompt_mask)
  pad = ((0, 0), (0, 0), (0, max_new_tokens), (0, 0))
  cache = [LayerCache(jnp.pad(c.k, pad), jnp.pad(c.v, pad)) for c in cache]
  last_logits = model.logits(hidden[:, -1])
  eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)

  def pick(logits, key):
    """-> next token int32[B] and its log-prob under softmax(logits / temperature)."""
    scaled = jax.nn.log_softmax(logits / temperature, axis=-1)
    if greedy:
      token = jnp.argmax(logits, axis=-1)
    else:
      token = jax.random.categorical(
          key, process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p))
    return token.astype(jnp.int32), jnp.take_along_axis(scaled, token[:, None], -1)[:, 0]

  class Carry(NamedTuple):
    i: jax.Array
    last_logits: jax.Array
    cache: list
    kv_mask: jax.Array
    position: jax.Array
    done: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array
    rng: jax.Array

  def body(c: Carry) -> Carry:
    rng, key = jax.random.split(c.rng)
    token, logprob = pick(c.last_logits, key)
    live = ~c.done
    token = jnp.where(live, token, pad_id)
    tokens = c.tokens.at[:, c.i].set(token)
    logprobs = c.logprobs.at[:, c.i].set(jnp.where(live, logprob, 0.0))
    mask = c.mask.at[:, c.i].set(live)
    done = c.done | jnp.isin(token, eos)
    kv_mask = c.kv_mask.at[:, p + c.i].set(live)
    logits, _, cache = model(token[:, None], c.position[:, None], kv_mask, c.cache, p + c.i)
    return Carry(c.i + 1, logits[:, -1], cache, kv_mask, c.position + 1, done, tokens,
                 logprobs, mask, rng)

  def cond(c: Carry):
    return (c.i < max_new_tokens) & ~jnp.all(c.done)

  init = Carry(jnp.int32(0), last_logits, cache, kv_mask, positions[:, -1] + 1,
               jnp.zeros((b,), bool), jnp.full((b, max_new_tokens), pad_id, jnp.int32),
               jnp.zeros((b, max_new_tokens), jnp.float32),
               jnp.zeros((b, max_new_tokens), bool), rng)
  out = jax.lax.while_loop(cond, body, init)
  return Generation(out.tokens, out.logprobs, out.mask, out.done)
