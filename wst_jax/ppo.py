"""PPO math for the teacher: pure, jittable jnp functions (in the style of purejaxrl's ppo.py).

Shapes: B rows (episodes), T generated tokens per row, V vocabulary. Every `mask` is a
right-padded validity mask (1 / True on real tokens, then 0 / False), bool or float; masked
positions never contribute to a loss or a metric, and rows with no valid token are fine (no NaN).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def masked_mean(x, mask, axis=None):
  """Mean of x over positions where mask is set; 0 where nothing is set (no NaN).

  x: float[...], mask: bool|float[...] (broadcastable to x). Returns x reduced over `axis`.
  """
  mask = jnp.asarray(mask, jnp.float32)
  masked = x * mask
  count = jnp.sum(jnp.broadcast_to(mask, masked.shape), axis=axis)
  return jnp.sum(masked, axis=axis) / jnp.where(count == 0, 1.0, count)


def masked_whiten(x, mask, shift_mean=True, eps=1e-8):
  """Normalises x to zero mean, unit (population) variance over the masked positions.

  x: f32[...], mask: bool|f32[...]. Returns f32[...], 0 on masked-out positions.
  shift_mean=False keeps the original mean (only rescales), as for whitening rewards.
  """
  mean = masked_mean(x, mask)
  var = masked_mean(jnp.square(x - mean), mask)
  whitened = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    whitened = whitened + mean
  return whitened * jnp.asarray(mask, whitened.dtype)


def kl_penalized_rewards(reward, logprobs, ref_logprobs, mask, kl_coef):
  """InstructGPT per-token rewards: -kl_coef * KL on every token, task reward on the last one.

  reward: f32[B] task reward per row; logprobs, ref_logprobs: f32[B,T] log p(token) under the
  policy and the frozen reference; mask: bool|f32[B,T]; kl_coef: scalar.
  Returns (token_rewards f32[B,T], kl f32[B,T]), both 0 on masked positions. A row with no valid
  token gets no task reward.
  """
  mask = jnp.asarray(mask, jnp.float32)
  kl = (logprobs - ref_logprobs) * mask  # the single-sample (k1) estimate of KL(pi || ref)
  t = jnp.arange(mask.shape[1])
  last = jnp.max(jnp.where(mask > 0, t, -1), axis=1)  # -1 for an empty row
  at_last = (t[None, :] == last[:, None]).astype(jnp.float32)
  token_rewards = -kl_coef * kl + reward[:, None] * at_last
  return token_rewards, kl


def gae(token_rewards, values, mask, gamma, lam):
  """Generalised advantage estimation, a reverse `lax.scan` over the T tokens.

  token_rewards, values: f32[B,T]; mask: bool|f32[B,T] right-padded; gamma, lam: scalars.
  The episode ends after each row's last valid token (bootstrap value 0 there).
  Returns (advantages f32[B,T], returns f32[B,T] = advantages + values), 0 on masked positions.
  """
  mask = jnp.asarray(mask, jnp.float32)

  def step(carry, xs):
    next_value, next_adv = carry  # both already 0 past the row's end
    r, v, m = xs
    delta = r + gamma * next_value - v
    adv = (delta + gamma * lam * next_adv) * m
    return (v * m, adv), adv

  zeros = jnp.zeros(mask.shape[:1], jnp.float32)
  xs = (token_rewards.T, values.T, mask.T)  # scan over the time axis
  _, advantages = jax.lax.scan(step, (zeros, zeros), xs, reverse=True)
  advantages = advantages.T
  return advantages, (advantages + values) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps):
  """PPO clipped surrogate, a masked mean over all tokens.

  logprobs: f32[B,T] under the current policy; old_logprobs, advantages: f32[B,T] from the
  rollout; mask: bool|f32[B,T]; clip_eps: scalar.
  Returns (loss f32[], {clipfrac: share of tokens where the clipped term is the active one,
  approx_kl: k3 estimate of KL(old || new), non-negative and low variance}).
  """
  log_ratio = logprobs - old_logprobs
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
  metrics = {
      "clipfrac": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
      "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
  }
  return loss, metrics


def value_loss(values, old_values, returns, mask, clip_eps):
  """Clipped value loss 0.5 * max((v - R)^2, (clip(v) - R)^2), a masked mean over tokens.

  values: f32[B,T] current; old_values, returns: f32[B,T] from the rollout; mask:
  bool|f32[B,T]; clip_eps: how far v may move from old_values before the clipped term rules.
  Returns (loss f32[], {vf_clipfrac: share of tokens where the clipped term is the larger}).
  """
  clipped_values = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
  unclipped_err = jnp.square(values - returns)
  clipped_err = jnp.square(clipped_values - returns)
  loss = 0.5 * masked_mean(jnp.maximum(unclipped_err, clipped_err), mask)
  # Within the clip range the two terms are equal in exact arithmetic, but old + (v - old) can
  # round to a different float than v: count only tokens that the clip actually moved.
  clipped = (jnp.abs(values - old_values) > clip_eps) & (clipped_err > unclipped_err)
  return loss, {"vf_clipfrac": masked_mean(clipped.astype(jnp.float32), mask)}


def entropy_from_logits(logits):
  """Entropy of softmax(logits) per position: float[B,T,V] -> f32[B,T], computed in f32.

  Goes through log_softmax (no overflow for large logits); -inf logits (filtered tokens) count 0
  and keep gradients finite.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  p = jnp.exp(logp)
  # p * log p is 0 * -inf = NaN where p == 0; its limit is 0.
  return -jnp.sum(p * jnp.where(p > 0, logp, 0.0), axis=-1)


def group_advantages(reward, group_size: int, eps=1e-6):
  """GRPO advantages: rewards normalised within contiguous groups of `group_size` rows.

  reward: f32[B], laid out [q0 s0, q0 s1, ..., q1 s0, ...]; B must divide by group_size.
  Returns f32[B] = (r - group mean) / (group population std + eps); 0 for a group whose rewards
  are all equal (no learning signal), including group_size == 1.
  """
  if reward.shape[0] % group_size:
    raise ValueError(f"batch size {reward.shape[0]} does not divide by group_size={group_size}")
  groups = reward.reshape(-1, group_size)
  mean = groups.mean(axis=1, keepdims=True)
  std = groups.std(axis=1, keepdims=True)
  return ((groups - mean) / (std + eps)).reshape(reward.shape)


def adaptive_kl_coef(kl_coef, observed_kl, *, target, horizon, batch_size):
  """Ziegler et al. (2019) proportional KL controller: one update of the KL coefficient.

  kl_coef, observed_kl: scalars (observed_kl: mean per-row KL of the latest batch); target: the
  desired KL; horizon: how many rows it takes to close the gap; batch_size: rows in the batch.
  Returns the new coefficient: raised when observed_kl > target, lowered when below; the relative
  error is clipped to +-0.2 so one bad batch cannot swing it.
  """
  error = jnp.clip(observed_kl / target - 1.0, -0.2, 0.2)
  return kl_coef * (1.0 + error * batch_size / horizon)


def ppo_update(params, opt_state, rollout, rng, *, policy_fn: Callable,
               tx: optax.GradientTransformation, num_epochs: int, num_minibatches: int,
               clip_eps, vf_clip, vf_coef, ent_coef, use_value: bool, group_size: int = 1):
  """PPO epochs over shuffled minibatches of a rollout; jittable (policy_fn, tx static).

  The rows come in groups of `group_size` consecutive rows (the instructions for one question)
  and a minibatch holds whole groups, in order: policy_fn may compute what a group shares once.

  Args:
    params: any pytree of trainable arrays (e.g. an nnx.State); opt_state: tx's state for it.
    rollout: dict of arrays with leading dim B: at least `mask` bool|f32[B,T], `old_logprobs`,
      `advantages` f32[B,T], and when use_value also `old_values`, `returns` f32[B,T]; any
      other entries (token ids, ...) are sliced along with them for policy_fn.
    rng: PRNG key for the per-epoch permutations.
    policy_fn: (params, minibatch dict with leading dim b) -> (logprobs f32[b,T],
      values f32[b,T] or None, entropy f32[b,T]) under the current params.
    tx: optax transformation (gradient clipping, if any, belongs in it).
    clip_eps / vf_clip: policy ratio / value clip ranges; vf_coef, ent_coef: loss weights.
  Returns (params, opt_state, metrics): metrics maps loss, policy_loss, value_loss, entropy,
    clipfrac, approx_kl, vf_clipfrac, grad_norm to f32[] means over all
    num_epochs * num_minibatches updates.
  """
  batch_size = rollout["mask"].shape[0]
  groups = batch_size // group_size
  if num_minibatches < 1 or batch_size % group_size or groups % num_minibatches:
    raise ValueError(f"{batch_size} rows in groups of {group_size} do not divide into "
                     f"num_minibatches={num_minibatches} minibatches of whole groups")
  minibatch_size = batch_size // num_minibatches

  def loss_fn(params, mb):
    logprobs, values, entropy = policy_fn(params, mb)
    mask = mb["mask"]
    pg_loss, metrics = policy_loss(logprobs, mb["old_logprobs"], mb["advantages"], mask,
                                   clip_eps)
    ent = masked_mean(entropy, mask)
    loss = pg_loss - ent_coef * ent
    if use_value:
      v_loss, v_metrics = value_loss(values, mb["old_values"], mb["returns"], mask, vf_clip)
      loss = loss + vf_coef * v_loss
    else:
      v_loss, v_metrics = jnp.zeros((), jnp.float32), {"vf_clipfrac": jnp.zeros((), jnp.float32)}
    return loss, {"loss": loss, "policy_loss": pg_loss, "value_loss": v_loss, "entropy": ent,
                  **metrics, **v_metrics}

  def update_minibatch(carry, mb):
    params, opt_state = carry
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), {**metrics, "grad_norm": optax.tree.norm(grads)}

  def update_epoch(carry, key):
    # A fresh shuffle of the groups each epoch, their rows kept together and in order.
    perm = (jax.random.permutation(key, groups)[:, None] * group_size
            + jnp.arange(group_size)).reshape(-1)
    # [B, ...] -> [num_minibatches, b, ...]
    minibatches = jax.tree.map(
        lambda x: x[perm].reshape(num_minibatches, minibatch_size, *x.shape[1:]), rollout)
    return jax.lax.scan(update_minibatch, carry, minibatches)

  (params, opt_state), metrics = jax.lax.scan(
      update_epoch, (params, opt_state), jax.random.split(rng, num_epochs))
  return params, opt_state, jax.tree.map(jnp.mean, metrics)
