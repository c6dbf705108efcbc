"""PPO math against plain NumPy loop references, and ppo_update on a toy softmax policy."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from wst_jax import ppo

B, T = 4, 6
LENGTHS = (6, 3, 0, 1)  # ragged, right-padded, with an empty row


def make_mask(lengths=LENGTHS, t=T):
  return (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


def rand(seed, *shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def close(actual, expected, tol=1e-5):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=tol, atol=tol)


# ---------------------------------------------------------------- NumPy loop references


def np_kl_rewards(reward, logp, ref, mask, coef):
  out, kl = np.zeros_like(logp), np.zeros_like(logp)
  for b in range(mask.shape[0]):
    last = None
    for t in range(mask.shape[1]):
      if mask[b, t]:
        kl[b, t] = logp[b, t] - ref[b, t]
        out[b, t] = -coef * kl[b, t]
        last = t
    if last is not None:
      out[b, last] += reward[b]
  return out, kl


def np_gae(rewards, values, mask, gamma, lam):
  adv, ret = np.zeros_like(rewards), np.zeros_like(rewards)
  for b in range(mask.shape[0]):
    n = int(mask[b].sum())
    running = 0.0
    for t in reversed(range(n)):
      next_value = values[b, t + 1] if t + 1 < n else 0.0
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      running = delta + gamma * lam * running
      adv[b, t] = running
      ret[b, t] = running + values[b, t]
  return adv, ret


def np_masked_mean(x, mask):
  vals = [x[i] for i in np.ndindex(x.shape) if mask[i]]
  return sum(vals) / len(vals) if vals else 0.0


def np_policy_loss(logp, old, adv, mask, eps):
  losses, clipped, kls = np.zeros_like(logp), np.zeros_like(logp), np.zeros_like(logp)
  for i in np.ndindex(logp.shape):
    ratio = math.exp(logp[i] - old[i])
    a = -adv[i] * ratio
    c = -adv[i] * min(max(ratio, 1 - eps), 1 + eps)
    losses[i], clipped[i] = max(a, c), float(c > a)
    kls[i] = ratio - 1 - (logp[i] - old[i])
  return (np_masked_mean(losses, mask), np_masked_mean(clipped, mask), np_masked_mean(kls, mask))


def np_value_loss(v, old, ret, mask, eps):
  losses, clipped = np.zeros_like(v), np.zeros_like(v)
  for i in np.ndindex(v.shape):
    vc = old[i] + min(max(v[i] - old[i], -eps), eps)
    e1, e2 = (v[i] - ret[i]) ** 2, (vc - ret[i]) ** 2
    losses[i], clipped[i] = 0.5 * max(e1, e2), float(e2 > e1)
  return np_masked_mean(losses, mask), np_masked_mean(clipped, mask)


# ---------------------------------------------------------------- elementwise math


def test_masked_mean_ignores_padding_and_empty_rows():
  x, mask = rand(0, B, T), make_mask()
  close(ppo.masked_mean(x, mask), np_masked_mean(x, mask))
  rows = ppo.masked_mean(x, mask, axis=1)
  close(rows, [np_masked_mean(x[b], mask[b]) for b in range(B)])
  assert rows[2] == 0.0  # the empty row: 0, not NaN
  close(ppo.masked_mean(x, mask.astype(bool)), np_masked_mean(x, mask))


def test_masked_whiten():
  x, mask = rand(1, B, T) * 3 + 2, make_mask()
  vals = x[mask > 0]
  mean, var = vals.mean(), vals.var()
  expected = np.where(mask > 0, (x - mean) / np.sqrt(var + 1e-8), 0.0)
  out = ppo.masked_whiten(x, mask)
  close(out, expected)
  close(np.asarray(out)[mask > 0].mean(), 0.0)
  close(np.asarray(out)[mask > 0].std(), 1.0)
  close(ppo.masked_whiten(x, mask, shift_mean=False), np.where(mask > 0, expected + mean, 0.0))


def test_kl_penalized_rewards():
  reward = np.array([1.0, -2.0, 5.0, 0.5], np.float32)
  logp, ref, mask = rand(2, B, T), rand(3, B, T), make_mask()
  tok, kl = ppo.kl_penalized_rewards(jnp.asarray(reward), logp, ref, mask, 0.1)
  exp_tok, exp_kl = np_kl_rewards(reward, logp, ref, mask, 0.1)
  close(tok, exp_tok)
  close(kl, exp_kl)
  # The reward sits on each row's last real token; the empty row gets nothing at all.
  close(tok[0, 5] + 0.1 * kl[0, 5], 1.0)
  close(tok[1, 2] + 0.1 * kl[1, 2], -2.0)
  close(tok[3, 0] + 0.1 * kl[3, 0], 0.5)
  assert np.all(np.asarray(tok[2]) == 0.0)


def test_gae_matches_numpy_loop():
  rewards, values, mask = rand(4, B, T), rand(5, B, T), make_mask()
  for gamma, lam in [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)]:
    adv, ret = ppo.gae(rewards * mask, values, mask, gamma, lam)
    exp_adv, exp_ret = np_gae(rewards * mask, values, mask, gamma, lam)
    close(adv, exp_adv)
    close(ret, exp_ret)
    assert np.all(np.asarray(adv)[mask == 0] == 0.0)


def test_gae_monte_carlo_case():
  # gamma = lam = 1, values 0: advantage = reward-to-go within the row, nothing leaks past its end.
  rewards = np.ones((2, 4), np.float32)
  mask = make_mask((3, 1), 4)
  adv, ret = ppo.gae(rewards, np.zeros_like(rewards), mask, 1.0, 1.0)
  close(adv, [[3, 2, 1, 0], [1, 0, 0, 0]])
  close(ret, adv)


def test_policy_loss_matches_numpy():
  logp, old, adv, mask = rand(6, B, T), rand(7, B, T), rand(8, B, T), make_mask()
  loss, m = ppo.policy_loss(logp, old, adv, mask, 0.2)
  exp_loss, exp_clip, exp_kl = np_policy_loss(logp, old, adv, mask, 0.2)
  close(loss, exp_loss)
  close(m["clipfrac"], exp_clip)
  close(m["approx_kl"], exp_kl)
  assert 0.0 < float(m["clipfrac"]) < 1.0  # random log-ratios: some tokens clipped, some not


def test_policy_loss_clipping_by_hand():
  # Ratio e^0.5 = 1.6487 > 1 + 0.2. With A = +1 the clipped term -1.2 wins (and has no
  # gradient); with A = -1 the unclipped term +1.6487 wins.
  logp, old, mask = jnp.array([[0.5]]), jnp.array([[0.0]]), jnp.ones((1, 1))
  loss, m = ppo.policy_loss(logp, old, jnp.array([[1.0]]), mask, 0.2)
  close(loss, -1.2)
  close(m["clipfrac"], 1.0)
  close(m["approx_kl"], math.exp(0.5) - 1 - 0.5)
  grad = jax.grad(lambda lp: ppo.policy_loss(lp, old, jnp.array([[1.0]]), mask, 0.2)[0])(logp)
  close(grad, 0.0)
  loss, m = ppo.policy_loss(logp, old, jnp.array([[-1.0]]), mask, 0.2)
  close(loss, math.exp(0.5))
  close(m["clipfrac"], 0.0)
  grad = jax.grad(lambda lp: ppo.policy_loss(lp, old, jnp.array([[-1.0]]), mask, 0.2)[0])(logp)
  close(grad, math.exp(0.5))


def test_policy_loss_empty_mask_is_zero_with_finite_grad():
  logp, old, adv = rand(9, 2, 3), rand(10, 2, 3), rand(11, 2, 3)
  mask = np.zeros((2, 3), np.float32)
  loss, grad = jax.value_and_grad(
      lambda lp: ppo.policy_loss(lp, old, adv, mask, 0.2)[0])(jnp.asarray(logp))
  assert float(loss) == 0.0
  assert np.all(np.asarray(grad) == 0.0)


def test_value_loss_matches_numpy():
  v, old, ret, mask = rand(12, B, T), rand(13, B, T), rand(14, B, T), make_mask()
  loss, m = ppo.value_loss(v, old, ret, mask, 0.2)
  exp_loss, exp_clip = np_value_loss(v, old, ret, mask, 0.2)
  close(loss, exp_loss)
  close(m["vf_clipfrac"], exp_clip)
  assert 0.0 < float(m["vf_clipfrac"]) < 1.0
  # By hand, old = 0 and clip 0.2 so clip(v) = 0.2. v = 1, R = 0.5: max(0.25, 0.09) / 2, the
  # unclipped term rules.
  loss, m = ppo.value_loss(jnp.array([[1.0]]), jnp.array([[0.0]]), jnp.array([[0.5]]),
                           jnp.ones((1, 1)), 0.2)
  close(loss, 0.125)
  close(m["vf_clipfrac"], 0.0)
  # v = 0.3, R = 2: max(2.89, 3.24) / 2, the clipped term rules.
  loss, m = ppo.value_loss(jnp.array([[0.3]]), jnp.array([[0.0]]), jnp.array([[2.0]]),
                           jnp.ones((1, 1)), 0.2)
  close(loss, 1.62)
  close(m["vf_clipfrac"], 1.0)


def test_entropy_from_logits():
  v = 7
  close(ppo.entropy_from_logits(jnp.zeros((2, 3, v))), np.full((2, 3), math.log(v)))
  logits = rand(15, 2, 3, v) * 4
  expected = np.zeros((2, 3))
  for i in np.ndindex(2, 3):
    z = sum(math.exp(l) for l in logits[i])
    expected[i] = -sum(math.exp(l) / z * (l - math.log(z)) for l in logits[i])
  close(ppo.entropy_from_logits(logits), expected)
  # Huge logits do not overflow; -inf (filtered) tokens count 0 and keep gradients finite.
  close(ppo.entropy_from_logits(jnp.array([[[1e4, 1e4, 0.0]]])), [[math.log(2)]])
  masked = jnp.array([[[0.0, 0.0, -jnp.inf]]])
  close(ppo.entropy_from_logits(masked), [[math.log(2)]])
  grad = jax.grad(lambda l: ppo.entropy_from_logits(l).sum())(masked)
  assert np.all(np.isfinite(np.asarray(grad)))
  assert ppo.entropy_from_logits(jnp.zeros((1, 1, 3), jnp.bfloat16)).dtype == jnp.float32


def test_group_advantages():
  reward = np.array([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0, 0.0, 2.0, 5.0, -1.0], np.float32)
  g = 4
  expected = np.zeros_like(reward)
  for start in range(0, len(reward), g):
    grp = reward[start:start + g]
    mean = sum(grp) / g
    std = math.sqrt(sum((r - mean) ** 2 for r in grp) / g)
    for j in range(g):
      expected[start + j] = (grp[j] - mean) / (std + 1e-6)
  out = ppo.group_advantages(jnp.asarray(reward), g)
  close(out, expected)
  close(out[:4], [1, -1, -1, 1], tol=1e-4)  # mean 0.5, std 0.5
  assert np.all(np.asarray(out[4:8]) == 0.0)  # identical rewards: no signal
  with pytest.raises(ValueError, match="group_size"):
    ppo.group_advantages(jnp.asarray(reward), 5)


def test_adaptive_kl_coef():
  kw = dict(target=6.0, horizon=10000, batch_size=256)
  up = ppo.adaptive_kl_coef(0.1, 6.6, **kw)
  down = ppo.adaptive_kl_coef(0.1, 5.4, **kw)
  assert float(up) > 0.1 > float(down)
  close(up, 0.1 * (1 + 0.1 * 256 / 10000))
  close(down, 0.1 * (1 - 0.1 * 256 / 10000))
  close(ppo.adaptive_kl_coef(0.1, 6.0, **kw), 0.1)
  # The proportional error is clipped to +-0.2.
  close(ppo.adaptive_kl_coef(0.1, 600.0, **kw), 0.1 * (1 + 0.2 * 256 / 10000))
  close(ppo.adaptive_kl_coef(0.1, 0.0, **kw), 0.1 * (1 - 0.2 * 256 / 10000))


# ---------------------------------------------------------------- ppo_update on a toy policy

D, V, ACTION = 5, 4, 2  # features, actions, the action that gets the advantage
BU, TU = 8, 5  # rollout rows, tokens
METRIC_KEYS = {"loss", "policy_loss", "value_loss", "entropy", "clipfrac", "approx_kl",
               "vf_clipfrac", "grad_norm"}


def toy_policy_fn(params, mb):
  """Linear softmax policy over V actions and a linear value head, from features mb['obs']."""
  logits = jnp.einsum("btd,dv->btv", mb["obs"], params["w"])
  logp = jax.nn.log_softmax(logits, axis=-1)
  logprobs = jnp.take_along_axis(logp, mb["actions"][..., None], axis=-1)[..., 0]
  values = mb["obs"] @ params["v"]
  return logprobs, values, ppo.entropy_from_logits(logits)


def toy_setup(advantage_sign=1.0, seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": jnp.asarray(rng.normal(size=(D, V)) * 0.1, jnp.float32),
            "v": jnp.zeros((D,), jnp.float32)}
  mask = make_mask((5, 3, 0, 1, 5, 2, 4, 5), TU)
  mb = {"obs": jnp.asarray(rng.normal(size=(BU, TU, D)), jnp.float32),
        "actions": jnp.full((BU, TU), ACTION, jnp.int32)}
  old_logprobs, old_values, _ = toy_policy_fn(params, mb)
  rollout = {**mb, "mask": jnp.asarray(mask), "old_logprobs": old_logprobs,
             "advantages": advantage_sign * jnp.asarray(mask),
             "old_values": old_values, "returns": jnp.asarray(mask)}
  return params, rollout


UPDATE_KW = dict(num_epochs=2, num_minibatches=2, clip_eps=0.2, vf_clip=0.2, vf_coef=0.5,
                 ent_coef=0.01)


@pytest.mark.parametrize("sign, use_value, jit", [(1.0, True, True), (-1.0, False, False)])
def test_ppo_update_moves_logprob_with_advantage(sign, use_value, jit):
  params, rollout = toy_setup(sign)
  # The trainer's shape of tx: global-norm clipping chained in front of the optimizer.
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-2))

  def update(params, opt_state, rollout, rng):  # policy_fn, tx static via the closure
    return ppo.ppo_update(params, opt_state, rollout, rng, policy_fn=toy_policy_fn, tx=tx,
                          use_value=use_value, **UPDATE_KW)

  update = jax.jit(update) if jit else update
  new_params, _, metrics = update(params, tx.init(params), rollout, jax.random.key(0))
  before = ppo.masked_mean(rollout["old_logprobs"], rollout["mask"])
  after = ppo.masked_mean(toy_policy_fn(new_params, rollout)[0], rollout["mask"])
  assert sign * (float(after) - float(before)) > 0.01
  assert set(metrics) == METRIC_KEYS
  assert all(m.shape == () and np.isfinite(float(m)) for m in metrics.values())
  assert float(metrics["grad_norm"]) > 0.0
  assert float(metrics["approx_kl"]) > 0.0  # later minibatches saw a moved policy
  if use_value:
    assert float(metrics["value_loss"]) > 0.0
    assert not np.allclose(new_params["v"], params["v"])
  else:
    assert float(metrics["value_loss"]) == 0.0
    np.testing.assert_array_equal(new_params["v"], params["v"])  # no value gradient at all


def test_ppo_update_metrics_at_the_rollout_policy():
  # lr 0: every update sees the rollout policy (ratio 1), so each metric has a closed form.
  params, rollout = toy_setup()
  rollout["advantages"] = jnp.asarray(rand(20, BU, TU)) * rollout["mask"]
  rollout["returns"] = jnp.asarray(rand(21, BU, TU))
  tx = optax.sgd(0.0)
  kw = {**UPDATE_KW, "num_epochs": 3, "num_minibatches": 1}
  new_params, _, metrics = ppo.ppo_update(
      params, tx.init(params), rollout, jax.random.key(1), policy_fn=toy_policy_fn, tx=tx,
      use_value=True, **kw)
  np.testing.assert_array_equal(new_params["w"], params["w"])
  mask = np.asarray(rollout["mask"])
  _, _, entropy = toy_policy_fn(params, rollout)
  pg = -np_masked_mean(np.asarray(rollout["advantages"]), mask)
  ent = np_masked_mean(np.asarray(entropy), mask)
  vl, _ = np_value_loss(*(np.asarray(rollout[k]) for k in ("old_values", "old_values", "returns")),
                        mask, 0.2)
  close(metrics["policy_loss"], pg)
  close(metrics["entropy"], ent)
  close(metrics["value_loss"], vl)
  close(metrics["loss"], pg + 0.5 * vl - 0.01 * ent)
  close(metrics["clipfrac"], 0.0)
  close(metrics["approx_kl"], 0.0)
  close(metrics["vf_clipfrac"], 0.0)

  def total_loss(p):
    logprobs, values, entropy = toy_policy_fn(p, rollout)
    pl = ppo.policy_loss(logprobs, rollout["old_logprobs"], rollout["advantages"], mask, 0.2)[0]
    vl = ppo.value_loss(values, rollout["old_values"], rollout["returns"], mask, 0.2)[0]
    return pl + 0.5 * vl - 0.01 * ppo.masked_mean(entropy, mask)

  close(metrics["grad_norm"], optax.tree.norm(jax.jit(jax.grad(total_loss))(params)))


def test_ppo_update_each_epoch_visits_every_row_once():
  # One-row minibatches at lr 0: the mean policy loss is the mean over rows of the per-row loss
  # only if each epoch's shuffle is a permutation (no row dropped or repeated).
  params, rollout = toy_setup()
  rollout["advantages"] = jnp.asarray(rand(22, BU, TU)) * rollout["mask"]
  tx = optax.sgd(0.0)
  kw = {**UPDATE_KW, "num_epochs": 3, "num_minibatches": BU}
  _, _, metrics = ppo.ppo_update(params, tx.init(params), rollout, jax.random.key(2),
                                 policy_fn=toy_policy_fn, tx=tx, use_value=False, **kw)
  adv, mask = np.asarray(rollout["advantages"]), np.asarray(rollout["mask"])
  close(metrics["policy_loss"], np.mean([-np_masked_mean(adv[b], mask[b]) for b in range(BU)]))


def test_ppo_update_nnx_state_params():
  # params as an nnx.State, the way the trainer passes the teacher's weights.
  model = nnx.Linear(D, V, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)

  def policy_fn(params, mb):
    logits = nnx.merge(graphdef, params)(mb["obs"])
    logp = jax.nn.log_softmax(logits, axis=-1)
    logprobs = jnp.take_along_axis(logp, mb["actions"][..., None], axis=-1)[..., 0]
    return logprobs, None, ppo.entropy_from_logits(logits)

  _, rollout = toy_setup()
  rollout["old_logprobs"] = policy_fn(params, rollout)[0]
  tx = optax.adam(3e-2)
  update = jax.jit(lambda p, o, r, k: ppo.ppo_update(p, o, r, k, policy_fn=policy_fn, tx=tx,
                                                     use_value=False, **UPDATE_KW))
  new_params, _, metrics = update(params, tx.init(params), rollout, jax.random.key(4))
  assert isinstance(new_params, nnx.State)
  before = ppo.masked_mean(rollout["old_logprobs"], rollout["mask"])
  after = ppo.masked_mean(policy_fn(new_params, rollout)[0], rollout["mask"])
  assert float(after) > float(before) + 0.01
  assert np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("num_minibatches", [3, 0])
def test_ppo_update_rejects_bad_num_minibatches(num_minibatches):
  params, rollout = toy_setup()
  tx = optax.sgd(0.1)
  kw = {**UPDATE_KW, "num_minibatches": num_minibatches}
  with pytest.raises(ValueError, match="num_minibatches"):
    ppo.ppo_update(params, tx.init(params), rollout, jax.random.key(0),
                   policy_fn=toy_policy_fn, tx=tx, use_value=True, **kw)
