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

from wst_jax import checkpoints, sharding, verifiers
from wst_jax.data.batches import decode_text, left_pad, segment_ids, truncate_questions
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


class TextRewardModel:
  """A reward model that reads the student's answers as text, in its own tokenizer: a judge
  whose tokenizer is not the student's (the step's `reward_model_reward` reads student ids), or
  the reward of a student behind an API. Each row is scored as the reward model was trained
  (`reward_model.pair_parts`): [the dialogue's last question_len tokens][the answer's first
  answer_len - 1 tokens][eos], left-padded to a multiple of `bucket` tokens (one compilation per
  width), the score read at the last token."""

  def __init__(self, folder, question_len: int, answer_len: int, bucket: int = 64):
    self.model = checkpoints.load_reward_model(folder)
    self.tokenizer = checkpoints.load_tokenizer(folder)
    self.question_len, self.answer_len, self.bucket = question_len, answer_len, bucket
    graphdef, state = nnx.split(self.model)
    self._state = state
    self._scores = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(
        ids, positions_from_mask(mask), mask)[1][:, -1])

  def rows(self, dialogues: list[str], answers: list[str]) -> list[list[int]]:
    """[dialogue][answer][eos] ids per row, cut as the reward model's training rows were."""
    cut, _ = truncate_questions([{"question": d} for d in dialogues], self.tokenizer,
                                self.question_len)
    eos = self.tokenizer.eos_token_id
    return [segment_ids(self.tokenizer, c["question"])
            + (segment_ids(self.tokenizer, a) + [eos])[:self.answer_len]
            for c, a in zip(cut, answers)]

  def score(self, dialogues: list[str], answers: list[str], batch_size: int = 16) -> np.ndarray:
    """The reward model's score of each (dialogue, answer) text pair -> f32[N]."""
    rows = self.rows(dialogues, answers)
    out = np.zeros(len(rows), np.float32)
    for start in range(0, len(rows), batch_size):
      chunk = rows[start:start + batch_size]
      width = self.bucket * -(-max(map(len, chunk)) // self.bucket)
      padded = chunk + [chunk[0]] * (batch_size - len(chunk))   # static shapes
      ids, mask = left_pad(padded, width, self.tokenizer.pad_token_id or 0, "reward rows")
      out[start:start + len(chunk)] = np.asarray(self._scores(self._state, ids, mask))[:len(chunk)]
    return out


def text_reward(config, reward_model_folder=None) -> Callable:
  """Host side, for answers given as text (a student behind an API): -> score(questions,
  answers, gold) -> f32[N]. The task's verifier against gold uint8[N, G] (`batches.encode_text`),
  or the reward model at `reward_model_folder` reading [question][answer] in its own tokenizer
  (`TextRewardModel`; the questions arrive already cut to data.question_len)."""
  if config.reward.kind == "verifier":
    return lambda questions, answers, gold: verifier_scores(
        config.task.verifier, answers, [decode_text(g) for g in gold])
  judge = TextRewardModel(reward_model_folder, 0, config.rollout.answer_len + 1)
  return lambda questions, answers, gold: judge.score(questions, answers)
