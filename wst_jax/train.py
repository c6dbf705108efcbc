r"""WST training: config -> mesh -> models -> data -> jitted step -> checkpoints -> evaluation.

    python -m wst_jax.train --config configs/gsm8k_cpu.py [--config.train.num_steps=20 ...]

Runs the same on 1 CPU, simulated CPU devices, a GPU or every worker of a TPU pod (each process
feeds its own rows; only process 0 logs). Resumes from the latest checkpoint in the workdir.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from wst_jax import checkpoints, distributed, plan, rewards, sharding
from wst_jax.config_checks import validate
from wst_jax.data import batches
from wst_jax.models import ScalarHeadLM
from wst_jax.step import Roles, Rollout, TrainState, make_train_step
from wst_jax.data.registry import load_task


def resolve_model_paths(config) -> dict[str, Path]:
  """Teacher/student folders; "pretrained:<role>" means our cached embedded default."""
  paths = {"teacher": config.teacher.path, "student": config.student.path}
  if any(str(p).startswith("pretrained:") for p in paths.values()):
    from wst_jax.pretrain import ensure_pretrained
    built = ensure_pretrained(config.pretrain)
    paths = {k: built[str(p).split(":", 1)[1]] if str(p).startswith("pretrained:") else p
             for k, p in paths.items()}
  return {k: Path(p) for k, p in paths.items()}


def optimizer(optim) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, optim.learning_rate, optim.warmup_steps, max(optim.decay_steps, optim.warmup_steps + 1),
      end_value=optim.learning_rate * optim.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(optim.max_grad_norm),
                     optax.adamw(schedule, b1=optim.b1, b2=optim.b2,
                                 weight_decay=optim.weight_decay))


class Setup:
  """Everything a run (train or eval) builds from a config before the first step."""

  def __init__(self, config):
    validate(config)
    self.config = config
    self.mesh = sharding.make_mesh(config.mesh.to_dict())
    self.paths = resolve_model_paths(config)
    if config.reward.kind == "reward_model":
      self.paths["reward_model"] = Path(self._reward_model_path())
    # A config that cannot fit is refused here, before any weights are read.
    memory_plan = plan.check_run(config, self.mesh, self.paths)
    if memory_plan is not None and jax.process_index() == 0:
      logging.info("%s", plan.format_plan(memory_plan))
    self.teacher_tokenizer = checkpoints.load_tokenizer(self.paths["teacher"])
    self.tokenizer = checkpoints.load_tokenizer(self.paths["student"])  # answers, rewards
    self.rollout = Rollout.from_config(config, self.teacher_tokenizer, self.tokenizer, self.mesh)
    # Each weight is read straight into its sharding: no device holds a whole sharded weight.
    teacher_lm = checkpoints.load_decoder(self.paths["teacher"], mesh=self.mesh,
                                          **config.teacher.dtypes)
    student = checkpoints.load_decoder(self.paths["student"], mesh=self.mesh,
                                       **config.student.dtypes)
    teacher = ScalarHeadLM(teacher_lm.cfg, rngs=nnx.Rngs(config.seed), lm=teacher_lm)
    teacher_def, teacher_params = nnx.split(teacher, nnx.Param)
    reference_def, reference_params = nnx.split(teacher_lm, nnx.Param)
    student_def, student_params = nnx.split(student, nnx.Param)
    self.roles = Roles(teacher_def, reference_def, student_def)
    # The reference is a copy: the teacher's buffers are donated to (and updated by) the step.
    self.frozen = {"reference": jax.tree.map(jnp.copy, reference_params),
                   "student": student_params}
    self.reward_fn = self._reward_fn()
    self.teacher_params = teacher_params
    self.task = load_task(config.task, config.seed)

  def _reward_fn(self):
    reward = self.config.reward
    if reward.kind == "verifier":
      return rewards.verifier_reward(self.config.task.verifier, self.tokenizer, self.mesh)
    model = checkpoints.load_reward_model(self.paths["reward_model"], mesh=self.mesh)
    rm_def, rm_params = nnx.split(model, nnx.Param)
    self.frozen["reward_model"] = rm_params
    return rewards.reward_model_reward(rm_def)

  def _reward_model_path(self):
    path = self.config.reward.model_path
    if str(path).startswith("pretrained:"):
      from wst_jax.reward_model import ensure_reward_model
      return ensure_reward_model(self.config)
    return path

  def encode(self, examples):
    return batches.encode_examples(examples, self.teacher_tokenizer, self.tokenizer, self.config)


def init_state(setup: Setup, tx) -> tuple[TrainState, object]:
  """Sharded initial state (params like their logical axes, optimizer state like the params)."""
  mesh, config = setup.mesh, setup.config
  param_sh = sharding.state_shardings(setup.teacher_params, mesh)
  params = jax.device_put(setup.teacher_params, param_sh)
  abstract_opt = jax.eval_shape(tx.init, params)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_sh,
                                 transform_non_params=lambda _: sharding.replicated(mesh),
                                 is_leaf=lambda x: isinstance(x, nnx.Variable))
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
  rep = sharding.replicated(mesh)
  state = TrainState(jax.device_put(jnp.int32(0), rep), params, opt_state,
                     jax.device_put(jnp.float32(config.ppo.kl_coef), rep),
                     jax.device_put(jax.random.PRNGKey(config.seed), rep))
  shardings = TrainState(rep, param_sh, opt_sh, rep, rep)
  return state, shardings


def checkpoint_manager(workdir: Path, config) -> ocp.CheckpointManager:
  # Orbax writes each step to a temporary folder and renames it when complete: a crash never
  # leaves a half-written checkpoint that restore would pick up.
  return ocp.CheckpointManager(
      (workdir / "checkpoints").absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints,
                                           enable_async_checkpointing=True))


def restore_or_init(mngr, state, shardings):
  step = mngr.latest_step()
  if step is None:
    return state
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          state, shardings)
  logging.info("resuming from checkpoint step %d", step)
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


def rows_up_to(lines: list[str], step: int) -> list[str]:
  """The metrics.jsonl lines (with their newlines) of steps <= `step`. Later rows were logged by a
  run that stopped before its next checkpoint; the resumed run logs those steps again. A torn
  last line (no newline: a crash mid-write) is dropped too."""
  return [line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= step]


class MetricWriter:
  """metrics.jsonl + TensorBoard, process 0 only; on resume from checkpoint `start_step`, what
  was logged after it is dropped (one row per step, whatever crashed in between)."""

  def __init__(self, workdir: Path, start_step: int):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      from tensorboardX import SummaryWriter
      path = workdir / "metrics.jsonl"
      if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        kept = rows_up_to(lines, start_step)
        if kept != lines:  # write aside, then rename: a crash here leaves the old or new file
          tmp = path.with_name(path.name + ".tmp")
          tmp.write_text("".join(kept))
          tmp.replace(path)
      self.jsonl = open(path, "a")
      # TensorBoard hides the events of steps >= purge_step that earlier runs wrote.
      self.tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=start_step + 1)

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self.jsonl.flush()
    for k, v in metrics.items():
      if isinstance(v, (int, float)):
        self.tb.add_scalar(k, v, step)

  def close(self):
    if self.enabled:
      self.jsonl.close()
      self.tb.close()


def train(config, workdir, on_step=None) -> dict:
  """Trains the teacher; returns the last step's metrics. Resumable and bit-for-bit repeatable.

  on_step(step, metrics), if given, is called after every step (e.g. a live plot in a notebook).
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  setup = Setup(config)
  train_arrays = setup.encode(setup.task.train)
  if config.reward.baseline == "student":
    from wst_jax.eval import student_alone_rewards
    train_arrays["baseline_reward"] = student_alone_rewards(setup, train_arrays, workdir)
  tx = optimizer(config.optim)
  state, shardings = init_state(setup, tx)
  mngr = checkpoint_manager(workdir, config)
  state = restore_or_init(mngr, state, shardings)
  rep = sharding.replicated(setup.mesh)
  step_fn = jax.jit(make_train_step(config, setup.rollout, setup.roles, tx, setup.reward_fn),
                    donate_argnums=0, out_shardings=(shardings, rep, rep))
  start, total = int(state.step), config.train.num_steps
  writer = MetricWriter(workdir, start)
  n = len(train_arrays["teacher_prompt"])
  last = {}
  bar = tqdm(range(start, total), initial=start, total=total, desc="WST train",
             disable=jax.process_index() != 0)
  try:
    for step in bar:
      rows = batches.batch_indices(step, config.train.batch_size, n, config.seed,
                                   jax.process_index(), jax.process_count())
      batch = sharding.put_batch(batches.take(train_arrays, rows), setup.mesh)
      t0 = time.perf_counter()
      new_state, metrics, samples = step_fn(state, setup.frozen, batch)
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      metrics["step_time_s"] = time.perf_counter() - t0
      bad = [k for k, v in metrics.items() if not math.isfinite(v)]
      if bad:
        raise FloatingPointError(
            f"step {step + 1}: non-finite {bad}; stopped. The last good checkpoint is kept in "
            f"{workdir / 'checkpoints'} (step {mngr.latest_step()}). Try a lower "
            "config.optim.learning_rate or config.optim.max_grad_norm.")
      state = new_state
      if step == start and jax.process_index() == 0:
        metrics["instructions"] = decode_samples(setup.teacher_tokenizer, samples)
      writer.write(step + 1, metrics)
      if on_step is not None:
        on_step(step + 1, metrics)
      bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics['kl']:.3f}",
                      loss=f"{metrics['loss']:.3f}")
      done = step + 1 == total
      if (step + 1) % config.train.checkpoint_every == 0 or done:
        mngr.save(step + 1, args=ocp.args.StandardSave(state))
      last = metrics
  finally:
    mngr.wait_until_finished()
    writer.close()
  return last


def decode_samples(tokenizer, samples, limit: int = 4) -> list[str]:
  ids, mask = np.asarray(samples["instruction"]), np.asarray(samples["instruction_mask"])
  return [tokenizer.decode(r[m].tolist()) for r, m in zip(ids[:limit], mask[:limit])]


def main(argv=None):
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go (default: config.workdir).")
  flags.DEFINE_bool("eval", True, "Run the evaluation table after training.")

  def run(_):
    logging.getLogger().setLevel(logging.INFO)
    distributed.initialize()
    config = flags.FLAGS.config
    workdir = Path(flags.FLAGS.workdir or config.workdir)
    train(config, workdir)
    if flags.FLAGS.eval:
      from wst_jax.eval import evaluate
      evaluate(config, workdir)

  app.run(run, argv)


if __name__ == "__main__":
  main()
