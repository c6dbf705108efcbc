r"""Is there a signal for a teacher to find? The student answers held-out questions alone and with
hand-written instructions, with the instruction in each placement, before any training.

    python -m wst_jax.probe --config configs/real_gsm8k_cpu.py:dev --out results/real_gsm8k

Rows (each on the config's eval split, which for a `:dev` config is held out of the *train*
questions): the student alone with an empty system turn; alone with its chat template's default
system prompt (no system turn at all); and each of config.probe.instructions as the system turn
(prompt.chat="system") and at the start of the user turn, a blank line before the question
(prompt.chat="user").
For each: accuracy (or reward-model score) with its 95% bootstrap interval, the mean answer length
and how many answers hit the budget (rollout.answer_len). Every row's answers go to
OUT/probe/<row>-<key>.jsonl as they are scored (a rerun resumes), the table to OUT/signal.md and
OUT/signal.json, rewritten after each row.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wst_jax import errors
from wst_jax.eval import bootstrap_interval, content_key, run_source, slug
from wst_jax.experiment import Setup

PLACEMENTS = {"system": "system turn", "user": "user turn, before the question"}


def probe_rows(config) -> list[tuple[str, str, str, str | None]]:
  """-> (row name, prompt.chat, source, instruction) per row."""
  rows = [("alone, empty system turn", "system", "none", None),
          ("alone, default system prompt", "user", "none", None)]
  for chat, where in PLACEMENTS.items():
    # In the user turn a blank line parts the instruction from the question that follows it.
    sep = "\n\n" if chat == "user" else ""
    rows += [(f"{where}: {text}", chat, "fixed", text + sep) for text in config.probe.instructions]
  return rows


def markdown(rows: list[dict], metric: str, budget: int) -> str:
  lines = [f"| row | n | {metric} | 95% CI | vs. alone (empty system turn) | mean answer tokens "
           f"| answers at the {budget}-token budget |", "|---|---:|---:|---|---:|---:|---:|"]
  base = rows[0]["mean"]
  for r in rows:
    lines.append(f"| {r['row']} | {r['n']} | {r['mean']:.3f} | [{r['ci_low']:.3f}, "
                 f"{r['ci_high']:.3f}] | {r['mean'] - base:+.3f} | {r['answer_tokens']:.1f} | "
                 f"{r['hit_budget']} |")
  return "\n".join(lines)


def probe(config, out: Path) -> list[dict]:
  """Runs every row (resuming recorded ones); -> the table rows, also written under `out`."""
  if "probe" not in config:
    raise errors.ConfigError("config.probe.instructions is missing: the probe needs the hand-written "
                     "instructions to try (see configs/real_gsm8k_cpu.py).")
  out = Path(out)
  records = out / "probe"
  records.mkdir(parents=True, exist_ok=True)
  metric = "accuracy" if config.reward.kind == "verifier" else "reward-model score"
  budget = config.rollout.answer_len
  setups, table = {}, []
  for name, chat, source, text in probe_rows(config):
    if chat not in setups:
      placed = config.copy_and_resolve_references()
      with placed.unlocked():
        placed.prompt.chat = chat
      setup = Setup(placed)
      setups[chat] = setup, setup.encode(setup.task.eval)
    setup, arrays = setups[chat]
    key = content_key(setup, arrays, name, json.dumps(
        [setup.config.rollout.to_dict(), setup.config.prompt.to_dict()], sort_keys=True))
    result = run_source(setup, arrays, source, desc=name, seed=config.seed,
                        record=records / f"{slug(name)[:60]}-{key}.jsonl", instruction=text)
    lo, hi = bootstrap_interval(result.rewards, config.eval.bootstrap_samples, config.seed)
    table.append(dict(row=name, placement=chat, instruction=text, n=len(result.rewards),
                      mean=float(result.rewards.mean()), ci_low=lo, ci_high=hi,
                      answer_tokens=float(result.answer_tokens.mean()),
                      hit_budget=int(np.sum(result.answer_tokens >= budget))))
    (out / "signal.md").write_text(markdown(table, metric, budget) + "\n")
    (out / "signal.json").write_text(json.dumps(
        dict(metric=metric, answer_len=budget, eval_size=len(result.rewards),
             student=config.student.path, rows=table), indent=2) + "\n")
    print(markdown(table, metric, budget).splitlines()[-1], flush=True)
  return table


def main(argv=None):
  import sys

  from absl import app, flags
  from ml_collections import config_flags

  from wst_jax import distributed

  config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
  flags.DEFINE_string("out", None, "Folder for signal.md, signal.json and the answers.")

  def run(_):
    distributed.initialize()
    probe(flags.FLAGS.config, Path(flags.FLAGS.out or flags.FLAGS.config.workdir))

  errors.run_command(lambda args: app.run(run, args), sys.argv if argv is None else argv)


if __name__ == "__main__":
  main()
