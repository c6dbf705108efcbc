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
from wst_jax.data.batches import segment_ids
from wst_jax.models import positions_from_mask
from wst_jax.prompting import (concat_left_padded, constant_segment, host_retokenizer,
                               strip_stop)
from wst_jax.sampling import Generation, generate


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
  student_prefix: tuple[int, ...]  # student ids of config.prompt.student_prefix
  # None when teacher and student share a vocabulary (the hand-off stays in-graph), else
  # prompting.host_retokenizer: teacher ids -> text -> student ids on the host.
  retokenize: Callable | None = None

  @classmethod
  def from_config(cls, config, teacher_tokenizer, student_tokenizer, mesh=None) -> "Rollout":
    shared = teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()
    retokenize = None if shared else host_retokenizer(
        teacher_tokenizer, student_tokenizer, config.data.retokenized_instruction_len, mesh)
    return cls(**config.rollout.to_dict(), teacher_eos=(teacher_tokenizer.eos_token_id,),
               student_eos=(student_tokenizer.eos_token_id,),
               teacher_pad=teacher_tokenizer.pad_token_id,
               student_pad=student_tokenizer.pad_token_id,
               student_prefix=tuple(segment_ids(student_tokenizer, config.prompt.student_prefix)),
               retokenize=retokenize)


class Roles(NamedTuple):
  """Graph definitions (static) of the three models; their params travel separately."""
  teacher: nnx.GraphDef    # ScalarHeadLM: policy + value
  reference: nnx.GraphDef  # Decoder: frozen initial teacher LM, for the KL penalty
  student: nnx.GraphDef    # Decoder: frozen, answers greedily


def write_instructions(teacher_lm, batch, rng, rollout) -> Generation:
  """The teacher samples an instruction after its meta-prompt. -> Generation [B, N_instr]."""
  return generate(teacher_lm, batch["teacher_prompt"], batch["teacher_prompt_mask"], rng,
                  max_new_tokens=rollout.instruction_len, eos_ids=rollout.teacher_eos,
                  pad_id=rollout.teacher_pad, greedy=False, temperature=rollout.temperature,
                  top_k=rollout.top_k, top_p=rollout.top_p)


def hand_over(ids, mask, rollout):
  """The teacher's instruction (teacher ids int32[B, N] without its stop token, mask) in the
  student's ids: the same arrays when they share a vocabulary, else re-tokenized as text on the
  host (`rollout.retokenize`) -> int32[B, I], mask bool[B, I]."""
  if rollout.retokenize is None:
    return ids, mask
  return rollout.retokenize(ids, mask)


def student_prompts(batch, instruction_ids, instruction_mask, rollout):
  """[prefix][instruction][question suffix], left-padded: -> ids int32[B, Ls], mask bool[B, Ls].

  instruction_ids/_mask: the instruction in student ids (`hand_over`).
  """
  b = instruction_ids.shape[0]
  return concat_left_padded(constant_segment(rollout.student_prefix, b),
                            (instruction_ids, instruction_mask),
                            (batch["student_suffix"], batch["student_suffix_mask"]))


def answer_questions(student, batch, instruction_ids, instruction_mask, rollout) -> Generation:
  """The student answers greedily, prompted with `student_prompts` (instruction in student
  ids)."""
  prompt, mask = student_prompts(batch, instruction_ids, instruction_mask, rollout)
  return generate(student, prompt, mask, jax.random.key(0), max_new_tokens=rollout.answer_len,
                  eos_ids=rollout.student_eos, pad_id=rollout.student_pad, greedy=True)


def instruction_logprobs(logits, actions, temperature: float):
  """Log-probs and entropy of the instruction tokens under softmax(logits / temperature).

  logits f32[B, N, V]: the teacher's logits at the positions that predict the instruction
  tokens actions int32[B, N] (`instruction_span`); -> (f32[B,N], f32[B,N]).
  """
  logits = logits / temperature
  logp = jax.nn.log_softmax(logits, axis=-1)
  return (jnp.take_along_axis(logp, actions[..., None], -1)[..., 0],
          ppo.entropy_from_logits(logits))


def instruction_span(prompt_len: int) -> slice:
  """The positions of [prompt, instruction] whose logits predict the instruction tokens:
  position P-1+i predicts instruction token i. Only these go through the LM head."""
  return slice(prompt_len - 1, -1)


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
  """The phases of `make_train_step` (see `Phases`)."""
  ppo_cfg = config.ppo
  group = ppo_cfg.advantage == "group"
  k = ppo_cfg.group_size if group else 1
  temperature = rollout.temperature
  repeat = lambda batch: jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), batch)

  def teacher_forward(params, sequence, seq_mask):
    prompt_len = sequence.shape[1] - rollout.instruction_len
    teacher = nnx.merge(roles.teacher, params)
    logits, values = teacher(sequence, positions_from_mask(seq_mask), seq_mask,
                             instruction_span(prompt_len))
    logp, entropy = instruction_logprobs(logits, sequence[:, prompt_len:], temperature)
    return logp, values, entropy

  def sequences(batch, instruction):
    """[teacher prompt, instruction] per row: ids int32[Bk, Pt + N], mask."""
    batch = repeat(batch)
    return (jnp.concatenate([batch["teacher_prompt"], instruction.tokens], axis=1),
            jnp.concatenate([batch["teacher_prompt_mask"], instruction.mask], axis=1))

  def write(params, batch, rng):
    teacher = nnx.merge(roles.teacher, params)
    return write_instructions(teacher.lm, repeat(batch), rng, rollout)

  def hand(instruction):
    return hand_over(*strip_stop(instruction.tokens, instruction.mask, rollout.teacher_eos),
                     rollout)

  def answer(frozen, batch, ids, mask):
    student = nnx.merge(roles.student, frozen["student"])
    return answer_questions(student, repeat(batch), ids, mask, rollout)

  def reward(frozen, batch, answer):
    return reward_fn(frozen, repeat(batch), answer)

  def policy(params, batch, instruction):
    return teacher_forward(params, *sequences(batch, instruction))

  def reference(frozen, batch, instruction):
    sequence, seq_mask = sequences(batch, instruction)
    model = nnx.merge(roles.reference, frozen["reference"])
    prompt_len = batch["teacher_prompt"].shape[1]
    _, hidden, _ = model(sequence, positions_from_mask(seq_mask), seq_mask)
    logits = model.logits(hidden[:, instruction_span(prompt_len)])
    return instruction_logprobs(logits, instruction.tokens, temperature)[0]

  def policy_fn(params, mb):
    logp, values, entropy = teacher_forward(params, mb["sequence"], mb["seq_mask"])
    return logp, (None if group else values), entropy

  def update(params, opt_state, experience, rng):
    return ppo.ppo_update(
        params, opt_state, experience, rng, policy_fn=policy_fn, tx=tx,
        num_epochs=ppo_cfg.num_epochs, num_minibatches=ppo_cfg.num_minibatches,
        clip_eps=ppo_cfg.clip_eps, vf_clip=ppo_cfg.vf_clip, vf_coef=ppo_cfg.vf_coef,
        ent_coef=ppo_cfg.ent_coef, use_value=not group)

  return Phases(write, hand, answer, reward, policy, reference, update)


def make_train_step(config, rollout: Rollout, roles: Roles, tx: optax.GradientTransformation,
                    reward_fn: Callable) -> Callable:
  """-> `train_step(state, frozen, batch) -> (state, metrics, samples)`, pure and jittable.

  frozen: {"reference": params, "student": params, optional "reward_model": params}.
  batch (leading axis B, one row per question): teacher_prompt/_mask [B,Pt], the student's
  prompt segments, task fields for the reward (gold, rm_prompt...), and baseline_reward f32[B]
  when config.reward.baseline is "student".
  """
  ppo_cfg = config.ppo
  group = ppo_cfg.advantage == "group"
  k = ppo_cfg.group_size if group else 1
  phases = make_phases(config, rollout, roles, tx, reward_fn)

  def train_step(state: TrainState, frozen, batch):
    rng, sample_rng, ppo_rng = jax.random.split(state.rng, 3)

    # 1. Rollout: k instructions per question, the answers, their reward. No gradients here.
    instruction = phases.write(state.params, batch, sample_rng)
    ids, mask = phases.hand_over(instruction)
    answer = phases.answer(frozen, batch, ids, mask)
    reward = phases.reward(frozen, batch, answer)
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

    # 4. PPO epochs over minibatches.
    repeated = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), batch)
    experience = dict(sequence=jnp.concatenate([repeated["teacher_prompt"], instruction.tokens], 1),
                      seq_mask=jnp.concatenate([repeated["teacher_prompt_mask"], instruction.mask], 1),
                      mask=action_mask, old_logprobs=old_logp, advantages=advantages,
                      old_values=old_values, returns=returns)
    params, opt_state, update_metrics = phases.update(state.params, state.opt_state, experience,
                                                      ppo_rng)

    seq_kl = jnp.sum(kl * action_mask, axis=1)
    kl_coef = state.kl_coef
    if ppo_cfg.kl_target is not None:
      kl_coef = ppo.adaptive_kl_coef(kl_coef, jnp.mean(seq_kl), target=ppo_cfg.kl_target,
                                     horizon=ppo_cfg.kl_horizon, batch_size=reward.shape[0])
    metrics = dict(update_metrics, reward=jnp.mean(reward), score=jnp.mean(score),
                   kl=jnp.mean(seq_kl), kl_coef=state.kl_coef,
                   instruction_len=jnp.mean(jnp.sum(instruction.mask, 1).astype(jnp.float32)),
                   answer_len=jnp.mean(jnp.sum(answer.mask, 1).astype(jnp.float32)),
                   answer_done=jnp.mean(answer.done.astype(jnp.float32)))
    samples = dict(instruction=instruction.tokens, instruction_mask=strip_stop(
        instruction.tokens, instruction.mask, rollout.teacher_eos)[1], reward=reward)
    new_state = TrainState(state.step + 1, params, opt_state, kl_coef, rng)
    return new_state, metrics, samples

  return train_step
