"""The statistics of a table: intervals of a mean, two rows compared on the same questions (with
and without their answers' lengths), and how alike a row's answers are.

Pure numpy functions of a row's per-question rewards (f32[N], one row of a table), answer lengths
and answers; the tables that report them are `wst_jax.eval` and `wst_jax.probe`.
"""
from __future__ import annotations

import collections
import math
import re

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


def win_rate(x: np.ndarray, y: np.ndarray) -> float:
  """The share of questions where x f32[N] beats y f32[N] (the same questions), a tie half."""
  return float(np.mean(x > y) + 0.5 * np.mean(x == y))


def length_controlled(x: np.ndarray, y: np.ndarray, len_x: np.ndarray, len_y: np.ndarray,
                      samples: int, seed: int = 0, tolerance: float = 0.2) -> dict:
  """x vs y f32[N] on the same questions, with their answers' lengths (int[N] tokens) taken out:
  a gain that is only a shorter (or longer) answer shows up as none here.

  - diff_at_equal_length: the intercept of the least-squares line of the paired difference
    x - y on the length difference len_x - len_y, i.e. the difference between two answers of the
    same length, with its 95% paired bootstrap interval; slope: the score per token of length.
  - matched: the mean difference over the questions whose two answers are within `tolerance`
    of each other's length (or 4 tokens), and how many there are.
  """
  d = (x - y).astype(np.float64)
  dl = (len_x - len_y).astype(np.float64)

  def fit(idx):
    design = np.stack([np.ones(len(idx)), dl[idx]], 1)
    return np.linalg.lstsq(design, d[idx], rcond=None)[0]

  rng = np.random.default_rng(seed)
  intercepts = [fit(rng.integers(0, len(d), len(d)))[0] for _ in range(samples)]
  intercept, slope = fit(np.arange(len(d)))
  near = np.abs(dl) <= np.maximum(4, tolerance * np.maximum(len_x, len_y))
  return dict(diff_at_equal_length=float(intercept), slope=float(slope),
              ci_low=float(np.percentile(intercepts, 2.5)),
              ci_high=float(np.percentile(intercepts, 97.5)),
              matched_n=int(near.sum()),
              matched_diff=float(d[near].mean()) if near.any() else float("nan"))


def length_text(p: dict) -> str:
  """A `length_controlled` as one sentence of a table's notes."""
  return (f"at equal answer length {p['diff_at_equal_length']:+.3f}, 95% CI "
          f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}] ({p['slope']:+.4f} per token of length "
          f"difference); over the {p['matched_n']} length-matched pairs {p['matched_diff']:+.3f}")


# A refusal, by its words (the HH issue's measure): what a harmlessness reward can be pleased by.
REFUSAL = re.compile(r"\b(sorry|I can(?:no|'|’)t|I can not|I won(?:'|’)t|"
                     r"I(?:'m|’m| am) (?:not able|unable)|not (?:able|appropriate)|"
                     r"can(?:no|'|’)t (?:assist|help))\b", re.IGNORECASE)


def answer_shape(answers: list[str]) -> dict:
  """How alike a row's answers are: the share that refuse (`REFUSAL`) and the share that are the
  row's most common answer word for word (a canned reply)."""
  common = collections.Counter(a.strip() for a in answers).most_common(1)
  return dict(refusals=float(np.mean([bool(REFUSAL.search(a)) for a in answers])),
              most_common=float(common[0][1] / len(answers)) if common else 0.0)
