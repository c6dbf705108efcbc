"""The paper's table as it is read: Markdown tables, every row's answers side by side, and the
files workdir/eval/{table.md, samples.md, results.json, table.csv}.

Functions of the rows `wst_jax.eval` computes (`eval.table_rows`: one dict per row, the same
keys in every row of a table) and of each row's `eval.SourceResult`; nothing here runs a model.
"""
from __future__ import annotations

import collections
import csv
import json
from pathlib import Path

import numpy as np

from wst_jax.stats import length_text, paired_text


def top_instructions(instructions: list[str], rewards: np.ndarray, k: int = 5) -> list[dict]:
  """The teacher's most frequent instructions with their count and mean reward."""
  by_text = collections.defaultdict(list)
  for t, r in zip(instructions, rewards):
    by_text[t].append(float(r))
  common = sorted(by_text.items(), key=lambda kv: -len(kv[1]))[:k]
  return [{"instruction": t, "count": len(v), "reward": float(np.mean(v))} for t, v in common]


def instructions_text(tables: list[dict]) -> str:
  """Each teacher row's most frequent instructions (`top_instructions`), a line each, under its
  table's title and row name. tables: as `tables_markdown` takes them, with "instructions"."""
  lines = []
  for table in tables:
    for name, tops in table["instructions"].items():
      lines.append(f"{table['title']}, {name}: most frequent instructions")
      lines += [f"  {t['count']:4d}x  reward {t['reward']:.3f}  {t['instruction']!r}" for t in tops]
  return "\n".join(lines)


def requests_text(rows: list[dict]) -> str:
  """The API student's requests behind a table, summed over its rows ("" for a JAX student):
  what this evaluation asked (and a paid API billed), and what the journal answered."""
  asked = collections.Counter()
  for r in rows:
    asked.update(r.get("student_requests", {}))
  if not any("student_requests" in r for r in rows):
    return ""
  total = asked["asked"] + asked["journal_hits"]
  return (f"\n\nStudent requests: {asked['asked']} asked ({asked['prompt_tokens']} prompt + "
          f"{asked['completion_tokens']} completion tokens), {asked['journal_hits']} answered "
          f"from the journal ({asked['journal_hits'] / max(total, 1):.0%}), {asked['retries']} "
          "retries; rows read back from their records asked nothing.")


def markdown_table(rows: list[dict], metric: str) -> str:
  """The table; "win vs. (a)" is the share of questions where a row's score beats the first
  row's (a tie half), under the reward and under the judge."""
  judged = "judge_mean" in rows[0]
  lines = [f"| instruction source | n | {metric} | 95% CI | vs. student alone | win vs. (a) "
           + ("| judge score | judge 95% CI | judge win vs. (a) " if judged else "")
           + "| instruction tokens | answer tokens | refusals | the most common answer |",
           "|---|---:|---:|---|---:|---:|" + ("---:|---|---:|" if judged else "")
           + "---:|---:|---:|---:|"]
  for r in rows:
    rel = r["relative_improvement_pct"]
    rel = "—" if rel is None else f"{rel:+.1f}%"
    judge = (f"{r['judge_mean']:.3f} | [{r['judge_ci_low']:.3f}, {r['judge_ci_high']:.3f}] | "
             f"{r['judge_win_vs_alone']:.3f} | " if judged else "")
    lines.append(f"| {r['source']} | {r['n']} | {r['mean']:.3f} | "
                 f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {rel} | {r['win_vs_alone']:.3f} | "
                 f"{judge}{r['instruction_tokens']:.1f} | {r['answer_tokens']:.1f} | "
                 f"{r['refusals']:.0%} | {r['most_common']:.0%} |")
  return "\n".join(lines)


def tables_markdown(tables: list[dict], metric: str) -> str:
  """Every table under its "### title": `markdown_table`, then each paired comparison of its
  "paired" (as it is and at equal answer length) and its API student's requests
  (`requests_text`). tables: [{"title", "rows", "paired", ...}], as `eval.evaluate` returns."""
  return "\n\n".join(f"### {t['title']}\n\n{markdown_table(t['rows'], metric)}"
                     + "".join(f"\n\nPaired, {k}: {paired_text(v)}; "
                               f"{length_text(v['length_controlled'])}"
                               for k, v in t["paired"].items())
                     + requests_text(t["rows"])
                     for t in tables)


def samples_markdown(questions: list[str], results: dict, judged: dict, k: int = 6,
                     context: int = 400) -> str:
  """Every row's instruction and answer for the same first k questions, side by side (each
  question's last `context` characters), with the reward (and the judge's score).

  results: row name -> its `eval.SourceResult`; judged: row name -> the judge's f32[N] scores
  (the rows a judge read)."""
  out = []
  for i in range(min(k, len(questions))):
    text = questions[i] if len(questions[i]) <= context else "…" + questions[i][-context:]
    out += [f"## Question {i}", "", "> " + text.strip().replace("\n", "\n> "), ""]
    for name, r in results.items():
      judge = f", judge {judged[name][i]:.3f}" if name in judged else ""
      out += [f"**{name}** (reward {r.rewards[i]:.3f}{judge})", "",
              f"- instruction: {r.instructions[i].strip()!r}" if r.instructions[i] else
              "- no instruction",
              "- answer: " + repr(r.answers[i].strip()), ""]
  return "\n".join(out)


def write_tables(out: Path, result: dict, samples_md: list[str]) -> None:
  """Writes `eval.evaluate`'s result ({"metric", "tables", "markdown"}) to the folder out:
  table.md (its markdown), results.json (all of it), table.csv (every table's rows, each under
  an "eval_set" column holding its table's title) and samples.md (samples_md: each table's
  samples section, in table order)."""
  tables = result["tables"]
  out.mkdir(parents=True, exist_ok=True)
  (out / "table.md").write_text(result["markdown"] + "\n")
  (out / "samples.md").write_text("\n\n".join(samples_md) + "\n")
  (out / "results.json").write_text(json.dumps(result, indent=2))
  with open(out / "table.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["eval_set", *tables[0]["rows"][0]])
    writer.writeheader()
    writer.writerows({"eval_set": t["title"], **r} for t in tables for r in t["rows"])
