r"""Is there a signal for a teacher to find? The student answers held-out questions alone and with
hand-written instructions, with the instruction in each placement, before any training.

    python -m wst_jax.probe --config configs/real_gsm8k_v2_cpu.py:dev --out results/real_gsm8k_v2

Rows (`probe_rows`, each on the config's eval split, which for a `:dev` config is held out of the
*train* questions): the student alone; the hand-written instructions of config.probe.instructions
in the config's own placement; then the untrained teacher's sampled instructions, placed as the
config places them, under each of config.probe.meta_prompts and config.probe.temperatures (what
training starts from; its first 50 samples go to OUT/<row>.md, for counting how many are
instructions at all); last the hand-written instructions in the other placements.
For each: accuracy (or reward-model score) with its 95% bootstrap interval, paired with the first
row (the student alone), as it is and at equal answer length, the mean answer length, how many
answers hit the budget (rollout.answer_len) and half of it, and how alike the answers are
(`answer_shape`: refusals, the most common answer's share). Then the headroom (`headroom`): what
a per-question oracle over the instructions gains and loses against the student alone; and the
go-or-stop check (`split_choice`): the best source chosen on the first half of the questions, its
paired difference on the second half. Every row's answers go to OUT/probe/<row>-<key>.jsonl as
they are scored (a rerun resumes), the tables to OUT/signal.md and OUT/signal.json, rewritten
after each row.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from wst_jax import errors
from wst_jax.data.batches import PLACEMENTS
from wst_jax.eval import content_key, make_judge, run_source, slug
from wst_jax.experiment import Setup
from wst_jax.stats import answer_shape, bootstrap_interval, length_controlled, paired_comparison

WHERE = {"system": "system turn", "user_before": "user turn, before the question",
         "user_after": "user turn, after the question"}


class ProbeRow(NamedTuple):
  name: str
  prompt: dict              # config.prompt fields of the row
  source: str               # "none" | "fixed" | "teacher" (`eval.run_source`)
  instruction: str | None   # the text of a "fixed" row
  temperature: float | None = None  # a teacher row's sampling temperature (None: the config's)


def probe_rows(config) -> list[ProbeRow]:
  """The rows: the student alone in the config's placement (the row every other is paired
  with), each of config.probe.instructions[placement] in that placement (`batches.PLACEMENTS`),
  first those of the config's own placement, then the untrained teacher under each of
  config.probe.meta_prompts at each of config.probe.temperatures (default: rollout.temperature),
  placed as the config places them, and last the other placements' instructions: the rows that
  training's settings are chosen from come first, so a probe stopped early has them."""
  chat = config.prompt.chat
  rows = [ProbeRow(f"alone ({WHERE[chat]}, no instruction)", PLACEMENTS[chat], "none", None)]
  fixed = lambda where: [ProbeRow(f"{WHERE[where]}: {text}", PLACEMENTS[where], "fixed", text)
                         for text in config.probe.instructions[where]]
  if chat in config.probe.instructions:
    rows += fixed(chat)
  temperatures = config.probe.get("temperatures", [config.rollout.temperature])
  for i, meta in enumerate(config.probe.get("meta_prompts", ())):
    rows += [ProbeRow(f"untrained teacher, meta-prompt {i + 1}, T={t:g} ({WHERE[chat]})",
                      dict(teacher_template=meta), "teacher", None, t) for t in temperatures]
  for where in config.probe.instructions:
    if where != chat:
      rows += fixed(where)
  return rows


def record_key(setup, arrays, name: str, source: str) -> str:
  """The key of a row's record: what the student is asked (prompts, settings) and, for a teacher
  row, the teacher's prompts too, so a change of meta-prompt leaves the other rows' records.
  prompt.human_instruction is left out: no probe row reads it (a "fixed" row has its own text),
  and it is set from the probe's result, which must not start the probe afresh."""
  prompt, rollout = setup.config.prompt.to_dict(), setup.config.rollout.to_dict()
  prompt.pop("human_instruction")
  if source != "teacher":
    arrays = {k: v for k, v in arrays.items() if not k.startswith("teacher_")}
    prompt.pop("teacher_template")
    rollout = {"answer_len": rollout["answer_len"]}
  return content_key(setup, arrays, name, json.dumps([rollout, prompt], sort_keys=True))


def teacher_samples(name: str, config, result, limit: int = 50) -> str:
  """A teacher row's first `limit` instructions with the student's reward, as Markdown."""
  lines = [f"# {name}", "", "Meta-prompt (the teacher's user turn):", "",
           "> " + config.prompt.teacher_template.replace("\n", "\n> "), "",
           "| # | instruction | reward |", "|---:|---|---:|"]
  for i, (text, r) in enumerate(zip(result.instructions[:limit], result.rewards)):
    lines.append(f"| {i} | {text.strip()!r} | {r:g} |".replace("\n", " "))
  return "\n".join(lines) + "\n"


def markdown(rows: list[dict], metric: str, budget: int) -> str:
  """The probe's table; "vs. alone" is each row paired with the first on the same questions:
  the difference with its paired bootstrap 95% interval and McNemar's p (0/1 rewards), then the
  same difference between answers of equal length (`stats.length_controlled`)."""
  judged = "judge_mean" in rows[0]
  lines = [f"| row | n | {metric} | 95% CI | vs. {rows[0]['row']}, paired | "
           "the same at equal answer length | "
           + ("judge score [95% CI] | judge vs. alone | " if judged else "")
           + f"mean answer tokens | answers at the {budget}-token budget | at {budget // 2} | "
           "refusals | the most common answer |",
           "|---|---:|---:|---|---|---|" + ("---|---|" if judged else "")
           + "---:|---:|---:|---:|---:|"]
  for r in rows:
    judge = ""
    if judged:
      judge = (f"{r['judge_mean']:.3f} [{r['judge_ci_low']:.3f}, {r['judge_ci_high']:.3f}] | "
               f"{_versus(r['judge_vs_alone'])} | ")
    lines.append(f"| {r['row']} | {r['n']} | {r['mean']:.3f} | [{r['ci_low']:.3f}, "
                 f"{r['ci_high']:.3f}] | {_versus(r['vs_alone'])} | "
                 f"{_at_equal_length(r['vs_alone_at_equal_length'])} | {judge}"
                 f"{r['answer_tokens']:.1f} | {r['hit_budget']} | {r['hit_half_budget']} | "
                 f"{r['refusals']:.0%} | {r['most_common']:.0%} |")
  return "\n".join(lines)


def _at_equal_length(p: dict) -> str:
  """A `length_controlled` comparison in a table cell."""
  return (f"{p['diff_at_equal_length']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}], "
          f"{p['slope']:+.4f}/token")


def _versus(p: dict) -> str:
  """A paired comparison in a table cell: the difference [95% CI], McNemar's p for 0/1."""
  return f"{p['diff']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]" + (
      f", p = {p['mcnemar_p']:.2g}" if "mcnemar_p" in p else "")


def headroom(rewards: dict[str, np.ndarray], alone: str, names: list[str]) -> dict:
  """A per-question oracle over the rows `names` (0/1 rewards) against the row `alone`: the
  questions some row gets right that alone gets wrong (what a teacher that picks the right
  instruction per question can gain), those alone gets right and some row wrong, and those
  alone gets right and every row wrong (what no choice of these instructions can lose)."""
  base = rewards[alone]
  rows = np.stack([rewards[n] for n in names])
  some_right, all_right = rows.max(0) == 1, rows.min(0) == 1
  return dict(rows=len(names), questions=len(base), alone=float(base.mean()),
              some_right_alone_wrong=int(np.sum(some_right & (base == 0))),
              alone_right_some_wrong=int(np.sum(~all_right & (base == 1))),
              alone_right_all_wrong=int(np.sum((rows.max(0) == 0) & (base == 1))),
              oracle=float(np.mean(some_right | (base == 1))))


def split_choice(rewards: dict[str, np.ndarray], alone: str, names: list[str], samples: int,
                 seed: int) -> dict:
  """The go-or-stop check: the row of `names` most above `alone` on the first half of the
  questions (chosen there), and its paired comparison with alone on the second half (where it
  was not chosen). -> {chosen, first_half_diff, second_half (paired_comparison)}."""
  half = len(rewards[alone]) // 2
  first = {n: float(np.mean(rewards[n][:half] - rewards[alone][:half])) for n in names}
  chosen = max(first, key=first.get)
  return dict(chosen=chosen, first_half_diff=first[chosen], first_half=half,
              second_half=paired_comparison(rewards[chosen][half:], rewards[alone][half:],
                                            samples, seed))


def analysis_markdown(rows: list[dict], rewards: dict, config) -> str:
  """Headroom and the go-or-stop check of the rows so far, as Markdown."""
  alone = rows[0]["row"]
  written = [r["row"] for r in rows if r["source"] == "fixed"]
  sources = [r["row"] for r in rows if r["source"] != "none"]
  out = []
  binary = set(np.unique(np.concatenate(list(rewards.values())))) <= {0.0, 1.0}
  groups = [("hand-written instructions", written)]
  if len(sources) > len(written):
    groups.append(("instruction sources, the untrained teacher's included", sources))
  for title, names in groups:
    if names and binary:   # (an oracle of right and wrong: 0/1 rewards only)
      h = headroom(rewards, alone, names)
      out.append(f"- Oracle over the {h['rows']} {title}: {h['oracle']:.3f} (alone "
                 f"{h['alone']:.3f}); right with some row and wrong alone on "
                 f"{h['some_right_alone_wrong']} of {h['questions']} questions; right alone and "
                 f"wrong with some row on {h['alone_right_some_wrong']}, with every row on "
                 f"{h['alone_right_all_wrong']}.")
  if sources:
    c = split_choice(rewards, alone, sources, config.eval.bootstrap_samples, config.seed)
    p = c["second_half"]
    out.append(f"- Chosen on the first {c['first_half']} questions: {c['chosen']!r} "
               f"({c['first_half_diff']:+.3f} vs. alone there). On the other "
               f"{len(rewards[alone]) - c['first_half']}: {p['diff']:+.3f} "
               f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]"
               + (f", McNemar p = {p['mcnemar_p']:.2g}" if "mcnemar_p" in p else "") + ".")
  return "\n".join(out)


def probe(config, out: Path) -> list[dict]:
  """Runs every row (resuming recorded ones); -> the table rows, also written under `out`."""
  if "probe" not in config:
    raise errors.ConfigError("config.probe.instructions is missing: the probe needs the "
                             "hand-written instructions to try (see configs/real_gsm8k_cpu.py).")
  out = Path(out)
  records = out / "probe"
  records.mkdir(parents=True, exist_ok=True)
  metric = "accuracy" if config.reward.kind == "verifier" else "reward-model score"
  budget = config.rollout.answer_len
  # held: (prompt, setup, step inputs) of the current rows; one setup's models at a time.
  held, table, rewards, lengths, judged = None, [], {}, {}, {}
  judge = make_judge(config)   # a second reward model beside the reward, if the config has one
  for name, prompt, source, text, temperature in probe_rows(config):
    placed = config.copy_and_resolve_references()
    with placed.unlocked():
      placed.prompt.update(prompt)
      # A placement may move the question from the suffix to the prefix: room for it in both.
      room = max(placed.data.student_prefix_len, placed.data.student_suffix_len)
      placed.data.update(student_prefix_len=room, student_suffix_len=room)
      if temperature is not None:
        placed.rollout.temperature = temperature
    wanted = json.dumps([placed.prompt.to_dict(), placed.rollout.to_dict()], sort_keys=True)
    if held is None or held[0] != wanted:   # rows of one prompt come together
      held = setup = None   # let the previous setup's models go before loading the next
      setup = Setup(placed, training=False, workdir=out)
      held = wanted, setup, setup.encode(setup.task.eval)
    _, setup, arrays = held
    key = record_key(setup, arrays, name, source)
    result = run_source(setup, arrays, source, (None, setup.teacher_params), desc=name,
                        seed=config.seed, record=records / f"{slug(name)[:60]}-{key}.jsonl",
                        instruction=text)
    lo, hi = bootstrap_interval(result.rewards, config.eval.bootstrap_samples, config.seed)
    rewards[name], lengths[name] = result.rewards, result.answer_tokens
    first = table[0]["row"] if table else name
    judge_scores = {}
    if judge is not None:
      judged[name] = judge(setup, [e["question"] for e in setup.task.eval], result.answers)
      j_lo, j_hi = bootstrap_interval(judged[name], config.eval.bootstrap_samples, config.seed)
      judge_scores = dict(judge_mean=float(judged[name].mean()), judge_ci_low=j_lo,
                          judge_ci_high=j_hi, judge_vs_alone=paired_comparison(
                              judged[name], judged[first],
                              config.eval.bootstrap_samples, config.seed))
    if source == "teacher":
      (out / f"{slug(name)}.md").write_text(teacher_samples(name, placed, result))
    table.append(dict(row=name, source=source, placement=placed.prompt.chat,
                      instruction=text, temperature=placed.rollout.temperature,
                      n=len(result.rewards),
                      mean=float(result.rewards.mean()), ci_low=lo, ci_high=hi,
                      answer_tokens=float(result.answer_tokens.mean()),
                      hit_budget=int(np.sum(result.answer_tokens >= budget)),
                      hit_half_budget=int(np.sum(result.answer_tokens >= budget // 2)),
                      **answer_shape(result.answers), **judge_scores,
                      vs_alone=paired_comparison(result.rewards, rewards[first],
                                                 config.eval.bootstrap_samples, config.seed),
                      vs_alone_at_equal_length=length_controlled(
                          result.rewards, rewards[first], result.answer_tokens, lengths[first],
                          config.eval.bootstrap_samples, config.seed)))
    analysis = analysis_markdown(table, rewards, config)
    (out / "signal.md").write_text(markdown(table, metric, budget) + "\n\n" + analysis + "\n")
    (out / "signal.json").write_text(json.dumps(
        dict(metric=metric, answer_len=budget, eval_size=len(result.rewards),
             student=config.student.path, rows=table, analysis=analysis), indent=2) + "\n")
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
