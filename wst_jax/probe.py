r"""Is there a signal for a teacher to find? The student answers held-out questions alone and with
hand-written instructions, with the instruction in each placement, before any training.

    python -m wst_jax.probe --config configs/real_gsm8k_cpu.py:dev --out results/real_gsm8k

Rows (each on the config's eval split, which for a `:dev` config is held out of the *train*
questions): the student alone with an empty system turn; alone with its chat template's default
system prompt (no system turn at all); each of config.probe.instructions as the system turn
(prompt.chat="system") and at the start of the user turn, a blank line before the question
(prompt.chat="user"; config.probe.user_turn_instructions, when set, are the ones tried there);
then the untrained teacher's sampled instructions, placed as the config places them, with each of
config.probe.meta_prompts as its prompt (what training starts from; its samples go to
OUT/<row>.md).
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
from wst_jax.eval import (bootstrap_interval, content_key, paired_comparison, run_source,
                          slug)
from wst_jax.experiment import Setup

PLACEMENTS = {"system": "system turn", "user": "user turn, before the question"}


def probe_rows(config) -> list[tuple[str, dict, str, str | None]]:
  """-> (row name, config.prompt fields, source, instruction) per row."""
  bare = dict(student_prefix="", student_suffix="{question}")   # the hand-written rows' prompt
  rows = [("alone, empty system turn", dict(bare, chat="system"), "none", None),
          ("alone, default system prompt", dict(bare, chat="user"), "none", None)]
  tried = {"system": config.probe.instructions,
           "user": config.probe.get("user_turn_instructions", config.probe.instructions)}
  for chat, where in PLACEMENTS.items():
    # In the user turn a blank line parts the instruction from the question that follows it.
    sep = "\n\n" if chat == "user" else ""
    rows += [(f"{where}: {text}", dict(bare, chat=chat), "fixed", text + sep)
             for text in tried[chat]]
  where = PLACEMENTS.get(config.prompt.chat, "placed as configured")
  rows += [(f"untrained teacher, meta-prompt {i + 1} ({where})", dict(teacher_template=meta),
            "teacher", None) for i, meta in enumerate(config.probe.get("meta_prompts", ()))]
  return rows


def record_key(setup, arrays, name: str, source: str) -> str:
  """The key of a row's record: what the student is asked (prompts, settings) and, for a teacher
  row, the teacher's prompts too, so a change of meta-prompt leaves the other rows' records."""
  prompt, rollout = setup.config.prompt.to_dict(), setup.config.rollout.to_dict()
  if source != "teacher":
    arrays = {k: v for k, v in arrays.items() if not k.startswith("teacher_")}
    prompt.pop("teacher_template")
    rollout = {"answer_len": rollout["answer_len"]}
  return content_key(setup, arrays, name, json.dumps([rollout, prompt], sort_keys=True))


def teacher_samples(name: str, config, result, limit: int = 20) -> str:
  """A teacher row's first `limit` instructions with the student's reward, as Markdown."""
  lines = [f"# {name}", "", "Meta-prompt (the teacher's user turn):", "",
           "> " + config.prompt.teacher_template.replace("\n", "\n> "), "",
           "| # | instruction | reward |", "|---:|---|---:|"]
  for i, (text, r) in enumerate(zip(result.instructions[:limit], result.rewards)):
    lines.append(f"| {i} | {text.strip()!r} | {r:g} |".replace("\n", " "))
  return "\n".join(lines) + "\n"


def markdown(rows: list[dict], metric: str, budget: int) -> str:
  """The probe's table; "vs. alone" is each row paired with the first on the same questions:
  the difference with its paired bootstrap 95% interval and McNemar's p (0/1 rewards)."""
  lines = [f"| row | n | {metric} | 95% CI | vs. alone (empty system turn), paired | mean answer "
           f"tokens | answers at the {budget}-token budget |", "|---|---:|---:|---|---|---:|---:|"]
  for r in rows:
    p = r["vs_alone"]
    vs = f"{p['diff']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]" + (
        f", p = {p['mcnemar_p']:.2g}" if "mcnemar_p" in p else "")
    lines.append(f"| {r['row']} | {r['n']} | {r['mean']:.3f} | [{r['ci_low']:.3f}, "
                 f"{r['ci_high']:.3f}] | {vs} | {r['answer_tokens']:.1f} | {r['hit_budget']} |")
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
  # held: (prompt, setup, step inputs) of the current rows; one setup's models at a time.
  held, table, alone = None, [], None
  for name, prompt, source, text in probe_rows(config):
    placed = config.copy_and_resolve_references()
    with placed.unlocked():
      placed.prompt.update(prompt)
    wanted = json.dumps(placed.prompt.to_dict(), sort_keys=True)
    if held is None or held[0] != wanted:   # rows of one prompt come together
      held = setup = None   # let the previous setup's models go before loading the next
      setup = Setup(placed)
      held = wanted, setup, setup.encode(setup.task.eval)
    _, setup, arrays = held
    key = record_key(setup, arrays, name, source)
    result = run_source(setup, arrays, source, (None, setup.teacher_params), desc=name,
                        seed=config.seed, record=records / f"{slug(name)[:60]}-{key}.jsonl",
                        instruction=text)
    lo, hi = bootstrap_interval(result.rewards, config.eval.bootstrap_samples, config.seed)
    alone = result.rewards if alone is None else alone
    if source == "teacher":
      (out / f"{slug(name)}.md").write_text(teacher_samples(name, placed, result))
    table.append(dict(row=name, placement=placed.prompt.chat, instruction=text,
                      n=len(result.rewards),
                      mean=float(result.rewards.mean()), ci_low=lo, ci_high=hi,
                      answer_tokens=float(result.answer_tokens.mean()),
                      hit_budget=int(np.sum(result.answer_tokens >= budget)),
                      vs_alone=paired_comparison(result.rewards, alone,
                                                 config.eval.bootstrap_samples, config.seed)))
    (out / "signal.md").write_text(markdown(table, metric, budget) + "\n")
    (out / "signal.json").write_text(json.dumps(
        dict(metric=metric, answer_len=budget, eval_size=len(result.rewards),
             student=config.student.path, rows=table), indent=2) + "\n")
    print(markdown(table[-1:], metric, budget).splitlines()[-1], flush=True)
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
