"""The statistics of a table: intervals of a mean, and two rows compared on the same questions.

Pure numpy functions of the per-question rewards (f32[N], one row of a table); the tables that
report them are `wst_jax.eval` and `wst_jax.probe`.
"""
from __future__ import annotations

import math

import numpy as np


def bootstrap_interval(x: np.ndarray, samples: int, seed: int = 0) -> tuple[float, float]:
  """95% percentile bootstrap interval of the mean of x f32[N]."""
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, len(x), (samples, len(x)))].mean(axis=1)
  return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_comparison(x: np.ndarray, y: np.ndarray, samples: int, seed: int = 0) -> dict:
  """x vs y f32[N] on the same questions: the mean difference with its 95% paired bootstrap
  interval and, for 0/1 rewards, McNemar's exact two-sided p-value on the discordant questions."""
  rng = np.random.default_rng(seed)
  d = x - y
  means = d[rng.integers(0, len(d), (samples, len(d)))].mean(axis=1)
  out = dict(diff=float(d.mean()), ci_low=float(np.percentile(means, 2.5)),
             ci_high=float(np.percentile(means, 97.5)))
  if set(np.unique(np.concatenate([x, y]))) <= {0.0, 1.0}:
    wins, losses = int(np.sum((x == 1) & (y == 0))), int(np.sum((x == 0) & (y == 1)))
    k, n = min(wins, losses), wins + losses
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    out.update(only_first_right=wins, only_second_right=losses, mcnemar_p=p)
  return out


def paired_text(p: dict) -> str:
  """A `paired_comparison` as one sentence of a table's notes."""
  text = f"difference {p['diff']:+.3f}, 95% CI [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]"
  if "mcnemar_p" in p:
    text += (f"; right only with the first {p['only_first_right']}, only with the second "
             f"{p['only_second_right']}, McNemar p = {p['mcnemar_p']:.3g}")
  return text
