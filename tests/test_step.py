"""The jitted WST step on the tiny world: KL at init, prompt assembly, compile-once, and the same
numbers on 1 device and on 8 simulated devices with data / model parallel meshes.

The in-process runs use this process's single CPU device. The 8-device runs need
XLA_FLAGS=--xla_force_host_platform_device_count=8 before JAX starts, so they run in a
subprocess: this file is its own worker (`python tests/test_step.py WORLD OUT MESHES_JSON`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if __name__ == "__main__":  # worker: make the repo and tests/ importable
  sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tiny_world
from wst_jax import sharding, step as step_lib, verifiers
from wst_jax.data import batches
from wst_jax.experiment import Setup, init_state
from wst_jax.models import positions_from_mask
from wst_jax.optim import optimizer
from wst_jax.sampling import generate

STEPS = 5            # steps run in process (compile-once); the first 2 are compared across meshes
COMPARED = 2
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # jax.monitoring, per compile
TOL = 1e-5
MESHES = {"data8": {"data": 8, "fsdp": 1, "model": 1},
          "data2_model4": {"data": 2, "fsdp": 1, "model": 4}}


def step_config(world: Path, mesh: dict):
  config = tiny_world.config({"teacher": world / "teacher", "student": world / "student"},
                             world / "unused_workdir")
  config.task.name = "gsm8k"
  config.task.train_path = str(world / "train.jsonl")
  config.task.eval_path = str(world / "eval.jsonl")
  config.mesh = mesh
  return config


def leaf_paths(tree) -> dict:
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


class Stepper:
  """The step exactly as `train.train` builds and feeds it (same jit, donation, shardings,
  batch order), driven by hand so a test can look between steps."""

  def __init__(self, config):
    self.config = config
    self.setup = Setup(config)
    self.frozen = self.setup.training_frozen()
    self.tx = optimizer(config)
    self.state, shardings = init_state(self.setup, self.tx)
    self.arrays = self.setup.encode(self.setup.task.train)
    rep = sharding.replicated(self.setup.mesh)
    self.step_fn = jax.jit(step_lib.make_train_step(config, self.setup.rollout, self.setup.roles,
                                                    self.tx, self.setup.reward_fn),
                           donate_argnums=0, out_shardings=(shardings, rep, rep))

  def host_batch(self, step: int) -> dict:
    n = len(self.arrays["teacher_prompt"])
    rows = batches.batch_indices(step, self.config.train.batch_size, n, self.config.seed)
    return batches.take(self.arrays, rows)

  def run(self, host_batch: dict):
    """One step; -> (metrics as floats, samples on the host)."""
    batch = sharding.put_batch(host_batch, self.setup.mesh)
    self.state, metrics, samples = self.step_fn(self.state, self.frozen, batch)
    return ({k: float(v) for k, v in jax.device_get(metrics).items()}, jax.device_get(samples))

  def params(self) -> dict:
    """Host copy of the teacher params (the state's buffers are donated to the next step)."""
    return {k: np.asarray(v) for k, v in leaf_paths(jax.device_get(self.state.params)).items()}


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  folder = tmp_path_factory.mktemp("world")
  tiny_world.make(folder)
  config = tiny_world.config({"teacher": "", "student": ""}, folder)
  tiny_world.use_gsm8k_files(config, folder, tiny_world.questions(48), tiny_world.questions(16, 1))
  return folder


@pytest.fixture(scope="module")
def eight_devices(world, tmp_path_factory):
  """Starts the 8-device worker at once (it runs while this process compiles its own step);
  -> a function that waits for it and returns its results."""
  out = tmp_path_factory.mktemp("eight")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  log = open(out / "worker.log", "w")
  proc = subprocess.Popen([sys.executable, __file__, str(world), str(out), json.dumps(MESHES)],
                          env=env, stdout=log, stderr=subprocess.STDOUT)

  def wait():
    proc.wait(timeout=540)
    assert proc.returncode == 0, ("8-device worker failed:\n"
                                  + (out / "worker.log").read_text()[-6000:])
    results = json.loads((out / "results.json").read_text())
    for name in results:
      with np.load(out / f"{name}.npz") as f:
        results[name]["params"] = dict(f)
    return results

  yield wait
  if proc.poll() is None:
    proc.kill()
    proc.wait()
  log.close()


@pytest.fixture(scope="module")
def stepped(world, eight_devices):
  """STEPS steps on this process's one device, with the probe reward; records metrics, samples,
  host batches, params after every step, and the XLA compilations during each step."""
  if jax.device_count() != 1:
    pytest.skip("the in-process reference run needs exactly one device")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(verifiers, "score", tiny_world.probe_score)
    s = Stepper(step_config(world, {"data": 1, "fsdp": 1, "model": 1}))
    compiles = []
    listener = lambda event, duration, **kw: (
        compiles[-1].append(kw.get("fun_name")) if event == BACKEND_COMPILE else None)
    jax.monitoring.register_event_duration_secs_listener(listener)
    s.metrics, s.samples, s.batches, s.params_after = [], [], [], [s.params()]
    try:
      for i in range(STEPS):
        s.batches.append(s.host_batch(i))
        compiles.append([])
        metrics, samples = s.run(s.batches[-1])
        s.metrics.append(metrics), s.samples.append(samples), s.params_after.append(s.params())
    finally:
      jax.monitoring.unregister_event_duration_listener(listener)
    s.compiles = compiles
    yield s


# --------------------------------------------------------------------------------------- tests


def test_kl_is_zero_against_the_reference_at_init_and_uses_pre_update_params(stepped):
  s = stepped
  # Step 1's KL is measured with the params the step started from, i.e. the reference.
  assert abs(s.metrics[0]["kl"]) < 1e-6, s.metrics[0]
  assert s.metrics[0]["instruction_len"] > 0
  # Recompute step 2's KL on its own instructions: with the params before step 2 (step 1 trained:
  # its rate is learning_rate / warmup_steps) it matches the metric; with the params after step 2
  # it does not (so the metric is pre-update, and nonzero).
  setup, config = s.setup, s.config
  batch, samples = s.batches[1], s.samples[1]
  eos = np.asarray(setup.rollout.teacher_eos)
  action_mask = samples["instruction_mask"] | np.isin(samples["instruction"], eos)
  reference = s.frozen["reference"]

  @jax.jit
  def seq_kl(params):
    sequence = jnp.concatenate([batch["teacher_prompt"], samples["instruction"]], 1)
    seq_mask = jnp.concatenate([batch["teacher_prompt_mask"], action_mask], 1)
    positions, p = positions_from_mask(seq_mask), batch["teacher_prompt"].shape[1]
    logits, _ = nnx.merge(setup.roles.teacher, params)(sequence, positions, seq_mask)
    ref_logits, _, _ = nnx.merge(setup.roles.reference, reference)(sequence, positions, seq_mask)
    # Full-sequence logits here, sliced by hand: the step's LM head over the span alone agrees.
    logp, _ = step_lib.instruction_logprobs(logits[:, p - 1:-1], samples["instruction"],
                                            config.rollout.temperature)
    ref_logp, _ = step_lib.instruction_logprobs(ref_logits[:, p - 1:-1], samples["instruction"],
                                                config.rollout.temperature)
    return jnp.mean(jnp.sum((logp - ref_logp) * action_mask, 1))

  treedef = jax.tree.structure(setup.teacher_params)
  as_params = lambda flat: jax.tree.unflatten(treedef, list(flat.values()))
  before = float(seq_kl(as_params(s.params_after[1])))
  after = float(seq_kl(as_params(s.params_after[2])))
  assert abs(before - s.metrics[1]["kl"]) < 1e-5, (before, s.metrics[1]["kl"])
  assert abs(s.metrics[1]["kl"]) > 1e-4, "the params did not move in step 1"
  # Step 2 moves the KL on its own batch less than step 1 moved the params (measured 7e-5):
  # three times the tolerance the pre-update value is held to above.
  assert abs(after - s.metrics[1]["kl"]) > 3e-5, (after, s.metrics[1]["kl"])


def test_shared_prompts_give_the_flat_steps_instructions_answers_and_scores(world):
  """The step computes a question's prompt once for its k instructions (teacher sampling, old
  policy, reference; the student's prefix) and shrinks the student's decode as answers end.
  Against the same work done flat, one prompt per row as before those changes: the same
  instructions and answers, and log-probs and values within float tolerance."""
  config = step_config(world, {"data": 1, "fsdp": 1, "model": 1})
  config.ppo.update(advantage="group", group_size=4)
  setup = Setup(config)
  rollout, roles, k = setup.rollout, setup.roles, 4
  phases = step_lib.make_phases(config, rollout, roles, optimizer(config), setup.reward_fn)
  frozen = setup.training_frozen()
  arrays = setup.encode(setup.task.train)
  batch = {key: v[:6] for key, v in arrays.items()}
  flat = jax.tree.map(lambda x: np.repeat(x, k, axis=0), batch)
  rng = jax.random.key(5)
  teacher = nnx.merge(roles.teacher, setup.teacher_params)
  student = nnx.merge(roles.student, frozen["student"])

  instruction = jax.jit(phases.write)(setup.teacher_params, batch, rng)
  want = jax.jit(lambda m, b: step_lib.write_instructions(m, b, rng, rollout))(teacher.lm, flat)
  np.testing.assert_array_equal(np.asarray(instruction.tokens), np.asarray(want.tokens))
  ids, mask = jax.jit(phases.hand_over)(instruction)
  answer = jax.jit(phases.answer)(frozen, batch, ids, mask)

  @jax.jit
  def flat_answer(model, b, ids, mask):
    prompt, prompt_mask = step_lib.student_prompts(b, ids, mask, rollout)
    return generate(model, prompt, prompt_mask, rng, max_new_tokens=rollout.answer_len,
                    eos_ids=rollout.student_eos, pad_id=rollout.student_pad)

  want_answer = flat_answer(student, flat, ids, mask)
  for field in ("tokens", "mask", "done"):
    np.testing.assert_array_equal(np.asarray(getattr(answer, field)),
                                  np.asarray(getattr(want_answer, field)))

  @jax.jit
  def flat_scores(model, b, instruction):
    sequence = jnp.concatenate([b["teacher_prompt"], instruction.tokens], 1)
    seq_mask = jnp.concatenate([b["teacher_prompt_mask"], instruction.mask], 1)
    p = b["teacher_prompt"].shape[1]
    logits, values = model(sequence, positions_from_mask(seq_mask), seq_mask, slice(p - 1, -1))
    return step_lib.instruction_logprobs(logits, instruction.tokens, rollout.temperature)[0], values

  logp, values, _ = jax.jit(phases.policy)(setup.teacher_params, batch, instruction)
  want_logp, want_values = flat_scores(teacher, flat, instruction)
  real = np.asarray(instruction.mask)
  np.testing.assert_allclose(np.asarray(logp)[real], np.asarray(want_logp)[real], atol=TOL)
  np.testing.assert_allclose(np.asarray(values)[real], np.asarray(want_values)[real], atol=TOL)
  ref_logp = jax.jit(phases.reference)(frozen, batch, instruction)
  np.testing.assert_allclose(np.asarray(ref_logp)[real], np.asarray(want_logp)[real], atol=TOL)


def test_student_prompt_assembled_in_jit_equals_host_tokenization_segment_by_segment(stepped):
  setup, config = stepped.setup, stepped.config
  tok, rollout = setup.tokenizer, setup.rollout
  ids = lambda text: batches.segment_ids(tok, text)
  n_instr = rollout.instruction_len
  instructions = [*tiny_world.PHRASES, "", " Think hard. Be brief."]
  assert len(ids(instructions[-1])) == n_instr  # a full-length instruction with no stop token
  examples = tiny_world.questions(len(instructions), seed=3)
  arrays = setup.encode(examples)
  # The teacher's output as the step sees it: right-padded, stop token (eos) included in mask.
  gen = np.full((len(instructions), n_instr), rollout.teacher_pad, np.int32)
  gen_mask = np.zeros_like(gen, bool)
  for i, text in enumerate(instructions):
    row = (ids(text) + [tok.eos_token_id])[:n_instr]
    gen[i, :len(row)], gen_mask[i, :len(row)] = row, True
  @jax.jit
  def student_prompt(batch, tokens, mask):
    tokens, mask = step_lib.strip_stop(tokens, mask, rollout.teacher_eos)
    return step_lib.student_prompts(batch, *step_lib.hand_over(tokens, mask, rollout), rollout)

  prompt, mask = jax.device_get(student_prompt(
      {k: arrays[k] for k in ("student_prefix", "student_prefix_mask", "student_suffix",
                              "student_suffix_mask")}, gen, gen_mask))
  host = [ids(config.prompt.student_prefix) + ids(text)
          + ids(config.prompt.student_suffix.format(question=e["question"]))
          for text, e in zip(instructions, examples)]
  want, want_mask = batches.left_pad(host, prompt.shape[1], tok.pad_token_id, "test")
  np.testing.assert_array_equal(mask, want_mask)
  np.testing.assert_array_equal(np.where(mask, prompt, -1), np.where(want_mask, want, -1))
  for row, m, text, e in zip(prompt, mask, instructions, examples):
    assert tok.decode(row[m].tolist()) == (config.prompt.student_prefix + text
                                           + config.prompt.student_suffix.format(**e))


def test_step_compiles_once_over_five_steps(stepped):
  s = stepped
  assert "jit(train_step)" in s.compiles[0], s.compiles
  assert s.compiles[1:] == [[]] * (STEPS - 1), s.compiles  # nothing at all compiles later
  assert s.step_fn._cache_size() == 1
  # The two counters do see a recompile (so this test can fail). Shown on a toy jit: a forced
  # recompile of the step itself (another batch shape) costs a full compile, ~20 s here.
  seen = []
  listener = lambda event, duration, **kw: seen.append(kw.get("fun_name")) \
      if event == BACKEND_COMPILE else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    toy = jax.jit(lambda x: x * 2)
    toy(np.ones(2)), toy(np.ones(2)), toy(np.ones(3))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert seen == ["jit(<lambda>)"] * 2 and toy._cache_size() == 2, seen


def test_one_device_equals_eight_devices(stepped, eight_devices):
  results = eight_devices()
  report = {}
  for name, mesh in MESHES.items():
    r = results[name]
    assert r["device_count"] == 8 and r["mesh"] == mesh
    diffs = [abs(r["metrics"][i][k] - stepped.metrics[i][k])
             for i in range(COMPARED) for k in stepped.metrics[i] if k != "step_time_s"]
    params_one = stepped.params_after[COMPARED]
    param_diff = max(float(np.max(np.abs(r["params"][k] - v))) for k, v in params_one.items())
    report[name] = (max(diffs), param_diff)
    for i in range(COMPARED):
      for k, v in stepped.metrics[i].items():
        assert r["metrics"][i][k] == pytest.approx(v, abs=TOL), (name, i + 1, k)
    assert param_diff < TOL, (name, param_diff)
  print("max abs difference (metrics, params) vs 1 device:", report)
  # The params really are split over "model" where the dims divide: the teacher's MLP
  # up-projection [hidden, 2 * hidden] has its "mlp" axis over the 4 model shards.
  r = results["data2_model4"]["kernel"]
  assert r["spec"][1] == "model" and r["spec"][0] is None, r
  assert r["shard_shape"] == [r["shape"][0], r["shape"][1] // 4], r
  assert r["mu_spec"] == r["spec"], r  # Adam's moments are sharded like the params


# -------------------------------------------------------------------------------------- worker


def _spec(spec, ndim: int) -> list:
  """PartitionSpec -> JSON: one entry per dim (None, an axis name or a list of names)."""
  spec = list(spec) + [None] * (ndim - len(spec))
  return [a if a is None or isinstance(a, str) else list(a) for a in spec]


def worker(world: Path, out: Path, meshes: dict) -> None:
  verifiers.score = tiny_world.probe_score
  results = {}
  for name, mesh in meshes.items():
    s = Stepper(step_config(world, mesh))
    metrics = [s.run(s.host_batch(i))[0] for i in range(COMPARED)]
    np.savez(out / f"{name}.npz", **s.params())
    kernel_key = next(k for k in leaf_paths(s.state.params) if "'mlp']['up']['kernel'" in k)
    kernel = leaf_paths(s.state.params)[kernel_key]
    mu = next(v for k, v in leaf_paths(s.state.opt_state).items()
              if "mu" in k and "'mlp']['up']['kernel'" in k)
    results[name] = {
        "device_count": jax.device_count(), "mesh": dict(s.setup.mesh.shape), "metrics": metrics,
        "kernel": {"path": kernel_key, "shape": list(kernel.shape),
                   "spec": _spec(kernel.sharding.spec, kernel.ndim),
                   "mu_spec": _spec(mu.sharding.spec, mu.ndim),
                   "shard_shape": list(kernel.addressable_shards[0].data.shape)}}
    print(name, json.dumps(results[name]), flush=True)
  (out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
  worker(Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]))
