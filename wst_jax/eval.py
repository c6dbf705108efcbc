r"""Evaluation: the paper's table. The student answers held-out questions with

  (a) no instruction, (b) a fixed human instruction, (c) the untrained teacher's instruction,
  (d) the trained teacher's instruction (latest checkpoint in the workdir), and optionally
  (e) a larger teacher (config.eval.teacher_path: a model reference, as the teacher's);

reports accuracy (or reward-model score) with a 95% bootstrap interval and the relative
improvement over (a), as Markdown, JSON and CSV.

    python -m wst_jax.eval --config configs/gsm8k_cpu.py [--workdir runs/...]
"""
from __future__ import annotations

import collections
import csv
import hashlib
import json
import logging
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from wst_jax import checkpoints, sharding
from wst_jax.data import batches
from wst_jax.data.batches import segment_ids
from wst_jax.data.registry import load_eval_examples
from wst_jax.experiment import Setup, checkpoint_manager, init_state, restore_or_init
from wst_jax.models import ScalarHeadLM
from wst_jax.optim import optimizer
from wst_jax.prompting import strip_stop
from wst_jax.step import answer_questions, write_instructions


def make_eval_step(setup, source: str, teacher_def=None):
  """-> jitted fn(teacher_params, frozen, batch, rng) -> (reward f32[B], instruction ids, mask
  [B, I] in teacher ids, answer ids, mask [B, A] in student ids).

  source: "none" (empty instruction), "fixed" (config.prompt.human_instruction) or "teacher"
  (the teacher `teacher_def`, by default the trained one's graph, samples it as in training).
  """
  rollout, roles = setup.rollout, setup.roles
  teacher_def = teacher_def or roles.teacher
  # In teacher ids, like a teacher's instruction (answer_questions re-tokenizes if needed).
  fixed = jnp.asarray(segment_ids(setup.teacher_tokenizer,
                                  setup.config.prompt.human_instruction), jnp.int32)

  def step(teacher_params, frozen, batch, rng):
    b = batch["teacher_prompt"].shape[0]
    if source == "teacher":
      teacher = nnx.merge(teacher_def, teacher_params)
      gen = write_instructions(teacher.lm, batch, rng, rollout)
      ids, mask = strip_stop(gen.tokens, gen.mask, rollout.teacher_eos)
    elif source == "fixed":
      ids, mask = jnp.broadcast_to(fixed, (b, fixed.shape[0])), jnp.ones((b, fixed.shape[0]), bool)
    else:
      ids, mask = jnp.zeros((b, 0), jnp.int32), jnp.zeros((b, 0), bool)
    student = nnx.merge(roles.student, frozen["student"])
    answer = answer_questions(student, batch, ids, mask, rollout)
    return setup.reward_fn(frozen, batch, answer), ids, mask, answer.tokens, answer.mask

  # Replicated results: every process (of a multi-host run) reads the whole batch's rewards.
  return jax.jit(step, out_shardings=sharding.replicated(setup.mesh))


class SourceResult(NamedTuple):
  rewards: np.ndarray       # f32[N]
  instructions: list[str]   # the instruction the student saw, per row ("" for none)
  answers: list[str]        # the student's answer, per row


def _texts(tokenizer, ids: np.ndarray, masks: np.ndarray) -> list[str]:
  return [tokenizer.decode(r[m].tolist()) for r, m in zip(ids, masks)]


def run_source(setup, arrays, source: str, teacher=(None, None), desc: str = "",
               seed: int = 0) -> SourceResult:
  """The student's reward, instruction and answer for every row of `arrays`.

  teacher: (graphdef or None for the trained teacher's, params) when source == "teacher".
  """
  teacher_def, teacher_params = teacher
  config = setup.config
  n = len(arrays["teacher_prompt"])
  bs = config.eval.batch_size
  step = make_eval_step(setup, source, teacher_def)
  procs, proc = jax.process_count(), jax.process_index()
  if bs % procs:
    raise ValueError(f"config.eval.batch_size={bs} must divide over {procs} processes.")
  mine = slice(proc * bs // procs, (proc + 1) * bs // procs)  # the rows this process feeds
  rewards, instructions, answers = [], [], []
  rng = jax.random.PRNGKey(seed)
  for start in tqdm(range(0, n, bs), desc=desc or source, leave=False,
                    disable=jax.process_index() != 0):
    # Static shapes: the last batch is filled up with row 0 and the extra results dropped.
    rows = np.arange(start, start + bs)
    rows = np.where(rows < n, rows, 0)
    batch = sharding.put_batch({k: v[rows[mine]] for k, v in arrays.items()}, setup.mesh)
    rng, key = jax.random.split(rng)
    r, i, im, a, am = jax.device_get(step(teacher_params, setup.frozen, batch, key))
    keep = min(bs, n - start)
    rewards.append(r[:keep])
    instructions += _texts(setup.teacher_tokenizer, i[:keep], im[:keep])
    answers += _texts(setup.tokenizer, a[:keep], am[:keep])
  return SourceResult(np.concatenate(rewards), instructions, answers)


def bootstrap_interval(x: np.ndarray, samples: int, seed: int = 0) -> tuple[float, float]:
  """95% percentile bootstrap interval of the mean."""
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, len(x), (samples, len(x)))].mean(axis=1)
  return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def student_alone_rewards(setup, arrays, workdir: Path) -> np.ndarray:
  """Reward of the student with no instruction, per question: computed once, cached on disk."""
  key = hashlib.sha256()
  for name in sorted(arrays):
    key.update(name.encode()), key.update(np.ascontiguousarray(arrays[name]).tobytes())
  key.update(str(setup.paths["student"].resolve()).encode())
  path = Path(workdir) / f"baseline_rewards_{key.hexdigest()[:16]}.npy"
  cached = path.exists()
  if jax.process_count() > 1:
    # All processes must agree (workdirs may be per-host disks): one that computes alone would
    # wait forever for the others in the step's collectives.
    from jax.experimental import multihost_utils
    cached = bool(np.all(multihost_utils.process_allgather(np.asarray(cached))))
  if cached:
    return np.load(path)
  rewards = run_source(setup, arrays, "none", desc="student alone (baseline)").rewards
  tmp = path.with_name(f"{path.stem}.{jax.process_index()}.tmp.npy")
  np.save(tmp, rewards)
  tmp.replace(path)  # atomic; every process writes the same values, shared disk or not
  return rewards


def trained_teacher_params(setup, workdir: Path):
  """-> (teacher params, step) of the newest readable checkpoint in workdir (see
  `restore_or_init`), or (None, 0) if there is none."""
  mngr = checkpoint_manager(Path(workdir), setup.config)
  if mngr.latest_step() is None:
    return None, 0
  state, shardings = init_state(setup, optimizer(setup.config.optim))
  state = restore_or_init(mngr, state, shardings)
  return state.params, int(state.step)


def larger_teacher(setup, path: Path):
  """A different (e.g. larger) teacher LM from its folder (setup.paths["eval_teacher"]): same
  tokenizer, no value head needed."""
  lm = checkpoints.load_decoder(path, mesh=setup.mesh, **setup.config.teacher.dtypes)
  teacher = ScalarHeadLM(lm.cfg, rngs=nnx.Rngs(0), lm=lm)
  return nnx.split(teacher, nnx.Param)


def top_instructions(instructions: list[str], rewards: np.ndarray, k: int = 5) -> list[dict]:
  """The teacher's most frequent instructions with their count and mean reward."""
  by_text = collections.defaultdict(list)
  for t, r in zip(instructions, rewards):
    by_text[t].append(float(r))
  common = sorted(by_text.items(), key=lambda kv: -len(kv[1]))[:k]
  return [{"instruction": t, "count": len(v), "reward": float(np.mean(v))} for t, v in common]


def markdown_table(rows: list[dict], metric: str) -> str:
  lines = [f"| instruction source | n | {metric} | 95% CI | vs. student alone |",
           "|---|---:|---:|---|---:|"]
  for r in rows:
    rel = "—" if r["relative_improvement_pct"] is None else f"{r['relative_improvement_pct']:+.1f}%"
    lines.append(f"| {r['source']} | {r['n']} | {r['mean']:.3f} | "
                 f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {rel} |")
  return "\n".join(lines)


def table_rows(setup, arrays, sources, config) -> tuple[list[dict], dict]:
  """One table: a row per instruction source (mean reward, 95% CI, improvement over the first
  row) and each teacher row's most frequent instructions."""
  rows, instructions = [], {}
  for name, source, teacher in sources:
    result = run_source(setup, arrays, source, teacher, desc=name, seed=config.seed)
    lo, hi = bootstrap_interval(result.rewards, config.eval.bootstrap_samples, config.seed)
    rows.append(dict(source=name, n=len(result.rewards), mean=float(result.rewards.mean()),
                     ci_low=lo, ci_high=hi))
    if source == "teacher":
      instructions[name] = top_instructions(result.instructions, result.rewards)
  # A relative change is only meaningful against a positive baseline (a reward-model score can
  # be <= 0); the table shows "—" then.
  base = rows[0]["mean"]
  for r in rows:
    r["relative_improvement_pct"] = (None if r is rows[0] or base <= 0
                                     else 100.0 * (r["mean"] - base) / base)
  return rows, instructions


def eval_sets(setup) -> list[tuple[str, dict]]:
  """(title, step inputs) of the run's task eval split and of each config.eval.extra_tasks
  entry (config overrides, e.g. {"task": {...}, "data": {...}}: another task's eval split
  scored by the same reward)."""
  config = setup.config
  sets = [(f"{config.task.name} (held out)", setup.encode(setup.task.eval))]
  for overrides in config.eval.extra_tasks:
    extra = config.copy_and_resolve_references()
    with extra.unlocked():
      extra.update_from_flattened_dict(
          {f"{k}.{f}": v for k, fields in dict(overrides).items() for f, v in dict(fields).items()})
    examples = load_eval_examples(extra.task, config.seed)
    sets.append((f"{extra.task.name} ({Path(extra.task.eval_path).name})",
                 batches.encode_examples(examples, setup.teacher_tokenizer, setup.tokenizer,
                                         extra)))
  return sets


def evaluate(config, workdir, setup=None) -> dict:
  """Runs every row of the table on each eval set; prints and writes the tables.

  -> {"metric", "tables": [{"title", "rows", "instructions"}], "markdown"}; written to
  workdir/eval/{table.md, results.json, table.csv}.
  """
  setup = setup or Setup(config)
  workdir = Path(workdir)
  sources = [("(a) student alone", "none", (None, None)),
             ("(b) human instruction", "fixed", (None, None)),
             ("(c) untrained teacher", "teacher", (None, setup.teacher_params))]
  trained, step = trained_teacher_params(setup, workdir)
  if trained is not None:
    sources.append((f"(d) WST teacher (step {step})", "teacher", (None, trained)))
  else:
    logging.warning("no checkpoint in %s: row (d) is left out", workdir)
  if config.eval.teacher_path:
    sources.append((f"(e) teacher {Path(config.eval.teacher_path).name}", "teacher",
                    larger_teacher(setup, setup.paths["eval_teacher"])))
  metric = "accuracy" if config.reward.kind == "verifier" else "reward-model score"
  tables = []
  for title, arrays in eval_sets(setup):
    rows, instructions = table_rows(setup, arrays, sources, config)
    tables.append({"title": title, "rows": rows, "instructions": instructions})
  markdown = "\n\n".join(f"### {t['title']}\n\n{markdown_table(t['rows'], metric)}"
                          for t in tables)
  result = {"metric": metric, "tables": tables, "markdown": markdown}
  if jax.process_index() == 0:
    print("\n" + markdown + "\n")
    for table in tables:
      for name, tops in table["instructions"].items():
        print(f"{table['title']}, {name}: most frequent instructions")
        for t in tops:
          print(f"  {t['count']:4d}x  reward {t['reward']:.3f}  {t['instruction']!r}")
    if config.eval.write_table:
      out = workdir / "eval"
      out.mkdir(parents=True, exist_ok=True)
      (out / "table.md").write_text(markdown + "\n")
      (out / "results.json").write_text(json.dumps(result, indent=2))
      with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["eval_set", *tables[0]["rows"][0]])
        writer.writeheader()
        writer.writerows({"eval_set": t["title"], **r} for t in tables for r in t["rows"])
  return result


def main(argv=None):
  """python -m wst_jax.eval; argv: the whole command line (default sys.argv). A user error
  prints its message alone (`errors.run_command`)."""
  import sys

  from absl import app, flags
  from ml_collections import config_flags

  from wst_jax import errors

  config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run folder with the trained teacher's checkpoints.")

  def run(_):
    from wst_jax import distributed
    distributed.initialize()
    config = flags.FLAGS.config
    evaluate(config, flags.FLAGS.workdir or config.workdir)

  errors.run_command(lambda args: app.run(run, args), sys.argv if argv is None else argv)


if __name__ == "__main__":
  main()
