"""One process of a multi-process (or the single-process reference) WST run on the tiny world.

    WST_COORDINATOR=127.0.0.1:PORT WST_NUM_PROCESSES=2 WST_PROCESS_ID=i \
    XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \
    python tests/multiprocess_worker.py --world W --workdir D --mesh '{"data": 4}' --steps 3 \
        --out result_i.json

Calls `distributed.initialize()` then `train.train()` on the tiny world (task "gsm8k" from the
world's JSONL files), and writes what it saw (process index and count, device counts, the last
step's metrics) to --out; --dump then restores checkpoints on this run's processes and saves the
params. Used by tests/test_multiprocess.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

from wst_jax import distributed  # noqa: E402  (no JAX backend is touched before initialize)


def probe_score(task, text, gold):
  """A deterministic reward that depends on both the answer text and the gold answer, in
  {0, .25, .5, .75, 1}. The tiny random student never answers right, so the real verifier would
  pay 0 everywhere and a run would not notice answers paired with the wrong gold rows."""
  del task
  return (zlib.crc32(f"{text}|{gold}".encode()) % 5) / 4


def dump_checkpoints(config, dumps: list[str]) -> None:
  """For each "WORKDIR=OUT.npz": every process restores WORKDIR's latest checkpoint with eval's
  loader (on this run's mesh and processes), and process 0 writes its teacher params, gathered,
  to OUT.npz (keys: param paths, plus __step__). WORKDIR "init" writes the initial teacher."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils
  from wst_jax.eval import trained_teacher_params
  from wst_jax.experiment import Setup
  setup = Setup(config)
  for item in dumps:
    workdir, out = item.split("=", 1)
    if workdir == "init":
      params, step = setup.teacher_params, 0
    else:
      params, step, _ = trained_teacher_params(setup, Path(workdir))
    if params is None:
      raise FileNotFoundError(f"no checkpoint in {workdir}")
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    values = [v for _, v in flat]
    # Weights loaded or restored onto a mesh that spans both processes are global arrays (the
    # fresh value head of the initial teacher is local).
    values = [v if v.is_fully_addressable else multihost_utils.process_allgather(v, tiled=True)
              for v in values]
    if jax.process_index() == 0:
      arrays = {jax.tree_util.keystr(k): np.asarray(v) for (k, _), v in zip(flat, values)}
      np.savez(out, __step__=np.int64(step), **arrays)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--world", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--mesh", default='{"data": 4}')
  parser.add_argument("--steps", type=int, default=3, help="0: no training, only --dump")
  parser.add_argument("--baseline", default="none")
  parser.add_argument("--probe-reward", action="store_true",
                      help="pay probe_score instead of the task's verifier")
  parser.add_argument("--dump", nargs="*", default=[], metavar="WORKDIR=OUT.npz",
                      help="after training, restore WORKDIR's latest checkpoint here and write "
                           "its teacher params to OUT.npz (WORKDIR 'init': the initial teacher)")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()

  distributed.initialize()
  import jax
  import tiny_world
  import wst_jax.verifiers
  if args.probe_reward:
    wst_jax.verifiers.score = probe_score
  from wst_jax import train

  world = Path(args.world)
  paths = {role: world / role for role in ("teacher", "student")}
  config = tiny_world.config(paths, Path(args.workdir))
  config.task.name = "gsm8k"
  config.task.train_path = str(world / "train.jsonl")
  config.task.eval_path = str(world / "eval.jsonl")
  config.mesh = json.loads(args.mesh)
  if args.steps:
    config.train.num_steps = args.steps
  config.reward.baseline = args.baseline

  last = train.train(config, Path(args.workdir)) if args.steps else {}  # 0: only --dump
  result = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                local_devices=jax.local_device_count(), devices=jax.device_count(),
                metrics=last)
  if args.dump:
    dump_checkpoints(config, args.dump)
  Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
  main()
