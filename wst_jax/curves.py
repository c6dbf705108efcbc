r"""A training run's curves: reward, KL to the reference and instruction length per step, from
its metrics.jsonl, as a PNG beside a copy of that JSONL.

    python -m wst_jax.curves runs/real_gsm8k_cpu --out results/real_gsm8k
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from wst_jax import errors

# (metric, panel title) per panel; each metric is a column of metrics.jsonl (`train.train`).
PANELS = (("reward", "reward (per student answer)"), ("kl", "KL to the untrained teacher"),
          ("instruction_len", "instruction tokens"), ("answer_len", "answer tokens"))


def read_metrics(path: Path) -> list[dict]:
  if not path.is_file():
    raise errors.NotFoundError(f"{path}: no metrics.jsonl; give the workdir of a training run.")
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def moving_average(values: list[float], window: int) -> list[float]:
  """The mean of each value and the window - 1 before it (fewer at the start)."""
  return [sum(values[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1))
          for i in range(len(values))]


def plot(rows: list[dict], out: Path, title: str = "", window: int = 5) -> None:
  """Writes the panels of `rows` (metrics.jsonl rows) to the PNG `out`: each metric per step,
  with its moving average over `window` steps."""
  try:
    import matplotlib
  except ImportError as err:
    raise errors.UnavailableError("the curves need matplotlib: pip install matplotlib") from err
  matplotlib.use("Agg")   # files only, no display
  import matplotlib.pyplot as plt
  steps = [r["step"] for r in rows]
  fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
  for ax, (key, name) in zip(axes, PANELS):
    values = [r[key] for r in rows]
    ax.plot(steps, values, ".", alpha=0.5, label="per step")
    ax.plot(steps, moving_average(values, window), "-", label=f"mean of {window}")
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step")
  axes[0].legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m wst_jax.curves",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("workdir", type=Path, help="the training run's folder (its metrics.jsonl)")
  parser.add_argument("--out", type=Path, required=True,
                      help="folder for curves.png and the copy of metrics.jsonl")
  parser.add_argument("--window", type=int, default=5, help="steps in the moving average")

  def run(args):
    args = parser.parse_args(args[1:])
    rows = read_metrics(args.workdir / "metrics.jsonl")
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.workdir / "metrics.jsonl", args.out / "metrics.jsonl")
    plot(rows, args.out / "curves.png", str(args.workdir), args.window)
    print(f"{args.out / 'curves.png'}: {len(rows)} steps")

  import sys
  errors.run_command(run, sys.argv if argv is None else argv)


if __name__ == "__main__":
  main()
