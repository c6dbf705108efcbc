"""Token-level prompt assembly inside jit: teacher instruction + question -> student prompt.

Teacher and student share a tokenizer here, so the student prompt is a concatenation of id
segments: [student prefix] [instruction] [question suffix]. Segments carry validity masks (prompts
are left-padded, generations right-padded); the result is compacted back to a left-padded row.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def concat_left_padded(*segments: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Concatenates (ids int32[B, Li], mask bool[B, Li]) segments, keeping only valid ids, and
  left-pads the result: -> ids int32[B, sum Li], mask bool[B, sum Li].

  Invalid slots hold whatever id they had; they are masked everywhere downstream.
  """
  ids = jnp.concatenate([s[0] for s in segments], axis=1)
  mask = jnp.concatenate([s[1] for s in segments], axis=1)
  # A stable sort on validity moves padding to the front and keeps the order of real tokens.
  order = jnp.argsort(mask.astype(jnp.int32), axis=1, stable=True)
  return jnp.take_along_axis(ids, order, 1), jnp.take_along_axis(mask, order, 1)


def constant_segment(ids: tuple[int, ...], batch: int) -> tuple[jax.Array, jax.Array]:
  """A segment that is the same for every row (e.g. the student prefix "Instruction:")."""
  row = jnp.asarray(ids, jnp.int32).reshape(1, -1)
  return jnp.broadcast_to(row, (batch, row.shape[1])), jnp.ones((batch, row.shape[1]), bool)


def strip_stop(tokens, mask, stop_ids: tuple[int, ...]):
  """The instruction proper: generated tokens without the stop token that ended them."""
  return tokens, mask & ~jnp.isin(tokens, jnp.asarray(stop_ids or (-1,), jnp.int32))


def host_retokenizer(teacher_tokenizer, student_tokenizer, max_len: int, mesh=None):
  """The hand-off when teacher and student have different vocabularies.

  Returns `retokenize(ids, mask) -> (ids int32[B, max_len], mask bool[B, max_len])`, usable in
  jit: a `jax.pure_callback` decodes the teacher's instruction to text and encodes it with the
  student's tokenizer (right-padded; longer instructions are cut at max_len tokens). The cost is
  one device->host->device round trip per step and the host tokenizers' time (measured in
  benchmarks/handoff.py); with a shared vocabulary the hand-off stays in-graph instead. With the
  run's `mesh`, each process re-tokenizes the rows of its own devices
  (`sharding.host_callback_per_shard`).
  """
  from wst_jax.sharding import host_callback_per_shard

  pad = student_tokenizer.pad_token_id or 0

  def host(ids, mask):
    out_ids = np.full((ids.shape[0], max_len), pad, np.int32)
    out_mask = np.zeros((ids.shape[0], max_len), bool)
    for i, text in enumerate(instruction_texts(teacher_tokenizer, ids, mask)):
      new = student_tokenizer.encode(text, add_special_tokens=False)[:max_len]
      out_ids[i, :len(new)], out_mask[i, :len(new)] = new, True
    return out_ids, out_mask

  def retokenize(ids, mask):
    shapes = (jax.ShapeDtypeStruct((ids.shape[0], max_len), jnp.int32),
              jax.ShapeDtypeStruct((ids.shape[0], max_len), jnp.bool_))
    return host_callback_per_shard(host, shapes, ids, mask, mesh=mesh)

  return retokenize


def instruction_texts(teacher_tokenizer, ids, mask) -> list[str]:
  """The teacher's instructions ids int[B, N] (mask bool[B, N], stop token stripped) as the text
  a student of another vocabulary, or behind an API, is given: special tokens left out, so that
  a sampled "<|im_start|>" never becomes a turn boundary in the student's prompt."""
  return [teacher_tokenizer.decode(row[m].tolist(), skip_special_tokens=True)
          for row, m in zip(np.asarray(ids), np.asarray(mask, bool))]
