r"""WST training: config -> mesh -> models -> data -> jitted step -> checkpoints -> evaluation.

    python -m wst_jax.train --config configs/gsm8k_cpu.py [--config.train.num_steps=20 ...]

Runs the same on 1 CPU, simulated CPU devices, a GPU or every worker of a TPU pod (each process
feeds its own rows; only process 0 logs). Resumes from the newest readable checkpoint in the
workdir. What the run is built from (model folders, mesh, models, train state) is
`wst_jax.experiment`, shared with the evaluation.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from wst_jax import distributed, sharding
from wst_jax.data import batches
from wst_jax.eval import evaluate, student_alone_rewards
from wst_jax.experiment import Setup, checkpoint_manager, init_state, restore_or_init
from wst_jax.optim import optimizer
from wst_jax.step import make_train_step
from wst_jax.student_api import make_split_step


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
  # ---- config -> model folders -> mesh -> memory check -> models, reward, task
  setup = Setup(config, workdir=workdir)
  # ---- data
  train_arrays = setup.encode(setup.task.train)
  frozen = setup.training_frozen()
  if config.reward.baseline == "student":
    train_arrays["baseline_reward"] = student_alone_rewards(setup, train_arrays, workdir)
  # ---- optimizer, sharded state, resume from the newest readable checkpoint
  tx = optimizer(config)
  state, shardings = init_state(setup, tx)
  mngr = checkpoint_manager(workdir, config)
  state = restore_or_init(mngr, state, shardings)
  # ---- the step: one jitted function, or split on the host around a student behind an API
  rep = sharding.replicated(setup.mesh)
  if setup.student_api is None:
    step_fn = jax.jit(make_train_step(config, setup.rollout, setup.roles, tx, setup.reward_fn),
                      donate_argnums=0, out_shardings=(shardings, rep, rep))
  else:
    step_fn = make_split_step(setup, tx, shardings)
  # ---- loop: step, log, checkpoint
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
      widths = batches.bucket_widths(
          train_arrays, batches.batch_indices(step, config.train.batch_size, n, config.seed),
          config.data.prompt_bucket)
      batch = sharding.put_batch(batches.trim(batches.take(train_arrays, rows), widths),
                                 setup.mesh)
      t0 = time.perf_counter()
      new_state, metrics, samples = step_fn(state, frozen, batch)
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
  """python -m wst_jax.train; argv: the whole command line (default sys.argv). A user error
  prints its message alone (`errors.run_command`)."""
  import sys

  from absl import app, flags
  from ml_collections import config_flags

  from wst_jax import errors

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
      evaluate(config, workdir)

  errors.run_command(lambda args: app.run(run, args), sys.argv if argv is None else argv)


if __name__ == "__main__":
  main()
