"""Rewards for the student's answers: how well it answered is what the teacher is paid.

A reward function has the signature `reward_fn(frozen, batch, answer) -> f32[B]`:
  * `verifier_reward`: the answer text is checked on the host (`jax.pure_callback`) against the
    gold answer carried in the batch as UTF-8 bytes (`batches.encode_text`; math tasks: number /
    sympy equivalence);
  * `reward_model_reward`: a Flax reward model scores (question, answer) in-graph (HH-RLHF).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wst_jax import sharding, verifiers
from wst_jax.data.batches import decode_text
from wst_jax.models import positions_from_mask
from wst_jax.prompting import concat_left_padded
from wst_jax.sampling import Generation


def answer_texts(tokenizer, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
  """Host side: the student's answers as text (stop tokens dropped)."""
  return [tokenizer.decode(row[m].tolist(), skip_special_tokens=True)
          for row, m in zip(np.asarray(tokens), np.asarray(mask, bool))]


def verifier_scores(task: str, answers: list[str], golds: list[str]) -> np.ndarray:
  """Host side: `verifiers.score` of each answer text against its gold answer -> f32[N]."""
  return np.asarray([verifiers.score(task, a, g) for a, g in zip(answers, golds)], np.float32)


def verifier_reward(task: str, tokenizer, mesh=None) -> Callable:
  """Correctness (1.0 / 0.0) of each answer, checked on the host by `verifiers.score`.

  With the run's `mesh`, each process checks the rows of its own devices (see
  `sharding.host_callback_per_shard`); without one, a single host checks the whole batch.
  """

  def host(tokens, mask, gold):
    return verifier_scores(task, answer_texts(tokenizer, tokens, mask),
                           [decode_text(g) for g in gold])

  def reward_fn(frozen, batch, answer: Generation):
    del frozen
    out = jax.ShapeDtypeStruct((answer.tokens.shape[0],), jnp.float32)
    return sharding.host_callback_per_shard(host, out, answer.tokens, answer.mask, batch["gold"],
                                            mesh=mesh)

  return reward_fn


def reward_model_reward(reward_model_def: nnx.GraphDef) -> Callable:
  """The reward model's score of [prompt, answer] at its last real token (in-graph).

  `frozen["reward_model"]` holds its params; `batch["rm_prompt"]`/`["rm_prompt_mask"]` the
  left-padded dialogue the answer continues (the instruction is not shown to the judge).
  """

  def reward_fn(frozen, batch, answer: Generation):
    model = nnx.merge(reward_model_def, frozen["reward_model"])
    ids, mask = concat_left_padded((batch["rm_prompt"], batch["rm_prompt_mask"]),
                                   (answer.tokens, answer.mask))
    _, scores = model(ids, positions_from_mask(mask), mask)
    return scores[:, -1]  # left-padded: the last slot is every row's last real token

  return reward_fn
