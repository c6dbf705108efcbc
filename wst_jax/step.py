"""The WST step: the teacher writes instructions, the student answers, the reward pays the
teacher, PPO updates it. One pure function, jitted once, sharded by its inputs.

    teacher prompt --sample--> instruction --assemble--> student prompt --greedy--> answer
                                   |                                                   |
                                   +--------- PPO (KL to reference, GAE) <-- reward ---+
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from wst_jax import ppo
from wst_jax.data.batches import question_first, segment_ids
from wst_jax.prompting import (concat_left_padded, constant_segment, host_retokenizer,
                               strip_stop)
from wst_jax.sampling import Generation, generate, prefill


class TrainState(NamedTuple):
  step: jax.Array       # int32[]
  params: nnx.State     # the teacher: LM + value head (trainable)
  opt_state: optax.OptState
  kl_coef: jax.Array    # f32[]  adaptive or fixed KL coefficient
  rng: jax.Array        # PRNG key


@dataclasses.dataclass(frozen=True)
class Rollout:
  """What the rollout needs: config.rollout plus ids that come from the tokenizer."""
  instruction_len: int          # max instruction tokens the teacher writes
  answer_len: int               # max answer tokens the student writes
  temperature: float            # teacher sampling
  top_k: int
  top_p: float
  teacher_eos: tuple[int, ...]  # ids that end an instruction
  student_eos: tuple[int, ...]  # ids that end an answer
  teacher_pad: int
  student_pad: int
  # Student ids of config.prompt.instruction_sep, between a non-empty instruction and the
  # question: before the instruction when the question precedes it (in student_prefix).
  instruction_sep: tuple[int, ...]
  sep_before_instruction: bool
  # None when teacher and student share a vocabulary (the hand-off stays in-graph), else
  # prompting.host_retokenizer: teacher ids -> text -> student ids on the host.
  retokenize: Callable | None = None

  @classmethod
  def from_config(cls, config, teacher_tokenizer, student_tokenizer, mesh=None) -> "Rollout":
    """student_tokenizer None: a student behind an API (`student_api`), asked in text; the
    student's ids are then never used."""
    if student_tokenizer is None:
      return cls(**config.rollout.to_dict(), teacher_eos=(teacher_tokenizer.eos_token_id,),
                 student_eos=(), teacher_pad=teacher_tokenizer.pad_token_id, student_pad=0,
                 instruction_sep=(), sep_before_instruction=False)
    shared = teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()
    retokenize = None if shared else host_retokenizer(
        teacher_tokenizer, student_tokenizer, config.data.retokenized_instruction_len, mesh)
    return cls(**config.rollout.to_dict(), teacher_eos=(teacher_tokenizer.eos_token_id,),
               student_eos=(student_tokenizer.eos_token_id,),
               teacher_pad=teacher_tokenizer.pad_token_id,
               student_pad=student_tokenizer.pad_token_id,
               instruction_sep=tuple(segment_ids(student_tokenizer,
                                                 config.prompt.instruction_sep)),
               sep_before_instruction=question_first(config.prompt),
               retokenize=retokenize)


class Roles(NamedTuple):
  """Graph definitions (static) of the three models; their params travel separately."""
  teacher: nnx.GraphDef    # ScalarHeadLM: policy + value
  reference: nnx.GraphDef  # Decoder: frozen initial teacher LM, for the KL penalty
  student: nnx.GraphDef    # Decoder: frozen, answers greedily


def instructions_per_question(config) -> int:
  """k: how many instructions the teacher writes per question (ppo.group_size with group
  advantages, else 1); a question's k rows are consecutive in every array of the step."""
  return config.ppo.group_size if config.ppo.advantage == "group" else 1


def write_instructions(teacher_lm, batch, rng, rollout, repeats: int = 1) -> Generation:
  """The teacher samples `repeats` instructions after each question's meta-prompt, the prompt
  run once per question. -> Generation [B x repeats, N_instr], a question's rows consecutive."""
  return generate(teacher_lm, batch["teacher_prompt"], batch["teacher_prompt_mask"], rng,
                  max_new_tokens=rollout.instruction_len, eos_ids=rollout.teacher_eos,
                  pad_id=rollout.teacher_pad, greedy=False, temperature=rollout.temperature,
                  top_k=rollout.top_k, top_p=rollout.top_p, repeats=repeats)


def hand_over(ids, mask, rollout):
  """The teacher's instruction (teacher ids int32[B, N] without its stop token, mask) in the
  student's ids: the same arrays when they share a vocabulary, else re-tokenized as text on the
  host (`rollout.retokenize`) -> int32[B, I], mask bool[B, I]."""
  if rollout.retokenize is None:
    return ids, mask
  return rollout.retokenize(ids, mask)


def after_prefix(batch, instruction_ids, instruction_mask, rollout, repeats: int = 1):
  """The student prompt after its prefix, left-padded: [instruction][suffix], with
  rollout.instruction_sep between a non-empty instruction and the question (on the side of the
  prefix or of the suffix, whichever holds it). -> ids int32[R, I'], mask bool[R, I'].

  batch: student_suffix/_mask [G, Lq] (`encode_examples`), each question's row used by
  `repeats` consecutive rows; instruction_ids/_mask [R = G x repeats, I]: the instruction in
  student ids (`hand_over`).
  """
  r = instruction_ids.shape[0]
  sep_ids, sep_mask = constant_segment(rollout.instruction_sep, r)
  sep = (sep_ids, sep_mask & jnp.any(instruction_mask, axis=1, keepdims=True))
  instruction = (instruction_ids, instruction_mask)
  middle = (sep, instruction) if rollout.sep_before_instruction else (instruction, sep)
  suffix = tuple(jnp.repeat(batch[f], repeats, axis=0)
                 for f in ("student_suffix", "student_suffix_mask"))
  return concat_left_padded(*middle, suffix)


def student_prompts(batch, instruction_ids, instruction_mask, rollout):
  """[prefix][instruction][suffix] as one left-padded prompt per row (`after_prefix`): -> ids
  int32[B, Ls], mask bool[B, Ls]. batch: student_prefix/_mask [B, Lp] and student_suffix/_mask
  [B, Lq]; instruction_ids/_mask [B, I] in student ids."""
  return concat_left_padded((batch["student_prefix"], batch["student_prefix_mask"]),
                            after_prefix(batch, instruction_ids, instruction_mask, rollout))


def answer_questions(student, batch, instruction_ids, instruction_mask, rollout,
                     repeats: int = 1, shrink: bool = False) -> Generation:
  """The student answers greedily, prompted with [prefix][instruction][suffix]: each question's
  prefix run once for its `repeats` rows (its instructions, [G x repeats, I] in student ids),
  then each row's `after_prefix`. shrink: see `sampling.generate`."""
  rest, rest_mask = after_prefix(batch, instruction_ids, instruction_mask, rollout, repeats)
  return generate(student, batch["student_prefix"], batch["student_prefix_mask"],
                  jax.random.key(0), max_new_tokens=rollout.answer_len,
                  eos_ids=rollout.student_eos, pad_id=rollout.student_pad, greedy=True,
                  repeats=repeats, rest=rest, rest_mask=rest_mask, shrink=shrink)


def instruction_hidden(lm, prompt, prompt_mask, instruction, instruction_mask, repeats: int):
  """The teacher LM's final hidden states at the positions that predict each instruction token
  (the prompt's last, then each instruction token's but the last), the prompt run once for its
  `repeats` instructions (`sampling.prefill`).

  prompt/_mask [G, Pt] left-padded; instruction/_mask [G x repeats, N] right-padded.
  -> [G x repeats, N, D]."""
  return prefill(lm, prompt, prompt_mask, repeats=repeats, rest=instruction,
                 rest_mask=instruction_mask).hidden[:, :-1]


def instruction_logprobs(logits, actions, temperature: float):
  """Log-probs and entropy of the instruction tokens under softmax(logits / temperature).

  logits f32[B, N, V]: the teacher's logits at the positions that predict the instruction
  tokens actions int32[B, N] (`instruction_hidden`); -> (f32[B,N], f32[B,N]).
  """
  logits = logits / temperature
  logp = jax.nn.log_softmax(logits, axis=-1)
  return (jnp.take_along_axis(logp, actions[..., None], -1)[..., 0],
          ppo.entropy_from_logits(logits))


class Phases(NamedTuple):
  """The step's phases, each a pure jittable function (`make_phases`); the step runs them in
  this order, and benchmarks/train_step.py times each alone. `batch` is the step's batch: one
  row per question [B, ...]; every output has the B x k rows of the k instructions per question,
  laid out [q0 i0, q0 i1, ..., q1 i0, ...]."""
  write: Callable      # (params, batch, rng) -> Generation [Bk, N]: the teacher's instructions
  hand_over: Callable  # (instruction Generation) -> ids int32[Bk, I], mask: in student ids
  answer: Callable     # (frozen, batch, ids, mask) -> Generation [Bk, A]: greedy answers
  reward: Callable     # (frozen, batch, answer) -> f32[Bk]
  policy: Callable     # (params, batch, instruction) -> (logp, values, entropy) f32[Bk, N]
  reference: Callable  # (frozen, batch, instruction) -> logp f32[Bk, N] of the reference
  update: Callable     # (params, opt_state, experience, rng) -> (params, opt_state, metrics)


def make_phases(config, rollout: Rollout, roles: Roles, tx: optax.GradientTransformation,
                reward_fn: Callable) -> Phases:
  """The phases of `make_train_step` (see `Phases`). A question's prompt is computed once for
  its k instructions wherever they share it: the teacher's meta-prompt in sampling, in the old
  policy, the reference and the PPO update (whose minibatches are whole groups); the student's
  prefix (the question, when it precedes the instruction) in answering."""
  ppo_cfg = config.ppo
  group = ppo_cfg.advantage == "group"
  k = instructions_per_question(config)
  temperature = rollout.temperature

  def teacher_forward(params, prompt, prompt_mask, instruction, instruction_mask):
    """-> log-probs, values and entropy f32[Gk, N] of the instruction tokens."""
    teacher = nnx.merge(roles.teacher, params)
    hidden = instruction_hidden(teacher.lm, prompt, prompt_mask, instruction, instruction_mask,
                                k)
    logits, values = teacher.heads(hidden)
    logp, entropy = instruction_logprobs(logits, instruction, temperature)
    return logp, values, entropy

  def write(params, batch, rng):
    teacher = nnx.merge(roles.teacher, params)
    return write_instructions(teacher.lm, batch, rng, rollout, repeats=k)

  def hand(instruction):
    return hand_over(*strip_stop(instruction.tokens, instruction.mask, rollout.teacher_eos),
                     rollout)

  def answer(frozen, batch, ids, mask):
    student = nnx.merge(roles.student, frozen["student"])
    return answer_questions(student, batch, ids, mask, rollout, repeats=k, shrink=True)

  def reward(frozen, batch, answer):
    return reward_fn(frozen, jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), batch), answer)

  def policy(params, batch, instruction):
    return teacher_forward(params, batch["teacher_prompt"], batch["teacher_prompt_mask"],
                           instruction.tokens, instruction.mask)

  def reference(frozen, batch, instruction):
    model = nnx.merge(roles.reference, frozen["reference"])
    hidden = instruction_hidden(model, batch["teacher_prompt"], batch["teacher_prompt_mask"],
                                instruction.tokens, instruction.mask, k)
    return instruction_logprobs(model.logits(hidden), instruction.tokens, temperature)[0]

  def policy_fn(params, mb):
    # A minibatch holds whole groups, in order: every k-th row is its question's prompt.
    logp, values, entropy = teacher_forward(params, mb["prompt"][::k], mb["prompt_mask"][::k],
                                            mb["instruction"], mb["instruction_mask"])
    return logp, (None if group else values), entropy

  def update(params, opt_state, experience, rng):
    return ppo.ppo_update(
        params, opt_state, experience, rng, policy_fn=policy_fn, tx=tx,
        num_epochs=ppo_cfg.num_epochs, num_minibatches=ppo_cfg.num_minibatches,
        clip_eps=ppo_cfg.clip_eps, vf_clip=ppo_cfg.vf_clip, vf_coef=ppo_cfg.vf_coef,
        ent_coef=ppo_cfg.ent_coef, use_value=not group, group_size=k)

  return Phases(write, hand, answer, reward, policy, reference, update)


def step_keys(rng):
  """The step's keys from TrainState.rng -> (next state's rng, teacher sampling, PPO update)."""
  return jax.random.split(rng, 3)


def answer_metrics(answer: Generation) -> dict:
  """The answers' metrics (f32[] each) that `make_learn` logs, from the JAX student's answers."""
  return dict(answer_len=jnp.mean(jnp.sum(answer.mask, 1).astype(jnp.float32)),
              # decode row-steps per answer token: 1 when no decode step is wasted
              answer_row_steps=answer.row_steps / jnp.maximum(jnp.sum(answer.mask), 1),
              answer_done=jnp.mean(answer.done.astype(jnp.float32)))


def make_learn(config, rollout: Rollout, phases: Phases) -> Callable:
  """-> `learn(state, frozen, batch, instruction, reward, answers) -> (state, metrics, samples)`:
  everything of the step after the reward, pure and jittable: old policy and reference, the KL
  penalty, advantages, the PPO epochs, the next state. Shared by the jitted step
  (`make_train_step`) and the step split on the host for an API student
  (`student_api.make_split_step`).

  instruction: the teacher's Generation [Bk, N] (`Phases.write` with the sampling key of
  `step_keys(state.rng)`); reward f32[Bk]; answers: metrics of the answers (f32[] each), logged
  as they are.
  """
  ppo_cfg = config.ppo
  group = ppo_cfg.advantage == "group"
  k = instructions_per_question(config)

  def learn(state: TrainState, frozen, batch, instruction: Generation, reward, answers: dict):
    rng, _, ppo_rng = step_keys(state.rng)
    score = reward
    if config.reward.baseline == "student":
      score = reward - jnp.repeat(batch["baseline_reward"], k, axis=0)

    # 2. Old policy, values and the reference, on [teacher prompt, instruction].
    action_mask = instruction.mask.astype(jnp.float32)
    old_logp, old_values, _ = phases.policy(state.params, batch, instruction)
    ref_logp = phases.reference(frozen, batch, instruction)

    # 3. Advantages: KL folded into per-token rewards (InstructGPT), then GAE or group-relative.
    token_rewards, kl = ppo.kl_penalized_rewards(score, old_logp, ref_logp, action_mask,
                                                 state.kl_coef)
    if group:
      penalized = score - state.kl_coef * jnp.sum(kl * action_mask, axis=1)
      advantages = ppo.group_advantages(penalized, k)[:, None] * action_mask
      returns = jnp.zeros_like(advantages)
    else:
      advantages, returns = ppo.gae(token_rewards, old_values, action_mask,
                                    ppo_cfg.gamma, ppo_cfg.lam)
    if ppo_cfg.whiten_advantages:
      advantages = ppo.masked_whiten(advantages, action_mask)

    # 4. PPO epochs over minibatches of whole groups. (The prompt rides along per row, so that
    # the update slices every entry alike; each minibatch runs it once per group.)
    experience = dict(prompt=jnp.repeat(batch["teacher_prompt"], k, axis=0),
                      prompt_mask=jnp.repeat(batch["teacher_prompt_mask"], k, axis=0),
                      instruction=instruction.tokens, instruction_mask=instruction.mask,
                      mask=action_mask, old_logprobs=old_logp, advantages=advantages,
                      old_values=old_values, returns=returns)
    params, opt_state, update_metrics = phases.update(state.params, state.opt_state, experience,
                                                      ppo_rng)

    seq_kl = jnp.sum(kl * action_mask, axis=1)
    kl_coef = state.kl_coef
    if ppo_cfg.kl_target is not None:
      kl_coef = ppo.adaptive_kl_coef(kl_coef, jnp.mean(seq_kl), target=ppo_cfg.kl_target,
                                     horizon=ppo_cfg.kl_horizon, batch_size=reward.shape[0])
    metrics = dict(update_metrics, **answers, reward=jnp.mean(reward), score=jnp.mean(score),
                   kl=jnp.mean(seq_kl), kl_coef=state.kl_coef,
                   instruction_len=jnp.mean(jnp.sum(instruction.mask, 1).astype(jnp.float32)))
    samples = dict(instruction=instruction.tokens, instruction_mask=strip_stop(
        instruction.tokens, instruction.mask, rollout.teacher_eos)[1], reward=reward)
    new_state = TrainState(state.step + 1, params, opt_state, kl_coef, rng)
    return new_state, metrics, samples

  return learn


def make_train_step(config, rollout: Rollout, roles: Roles, tx: optax.GradientTransformation,
                    reward_fn: Callable) -> Callable:
  """-> `train_step(state, frozen, batch) -> (state, metrics, samples)`, pure and jittable: the
  rollout (`Phases` write, hand_over, answer, reward), then `make_learn`.

  frozen: {"reference": params, "student": params, optional "reward_model": params}.
  batch (leading axis B, one row per question): teacher_prompt/_mask [B,Pt], the student's
  prompt segments, task fields for the reward (gold, rm_prompt...), and baseline_reward f32[B]
  when config.reward.baseline is "student".
  """
  phases = make_phases(config, rollout, roles, tx, reward_fn)
  learn = make_learn(config, rollout, phases)

  def train_step(state: TrainState, frozen, batch):
    # 1. Rollout: k instructions per question, the answers, their reward. No gradients here.
    instruction = phases.write(state.params, batch, step_keys(state.rng)[1])
    ids, mask = phases.hand_over(instruction)
    answer = phases.answer(frozen, batch, ids, mask)
    reward = phases.reward(frozen, batch, answer)
    return learn(state, frozen, batch, instruction, reward, answer_metrics(answer))

  return train_step
