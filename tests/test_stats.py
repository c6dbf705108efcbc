"""The table statistics (`wst_jax.stats`) on rows whose answers are known."""
import numpy as np
import pytest

from wst_jax import stats


def test_answer_shape_counts_refusals_and_canned_replies():
  shape = stats.answer_shape(["Sorry, but I can't assist with that.",
                              " Sorry, but I can't assist with that.", "Sure: lock the door.",
                              "I cannot help with that.", "Check the sorrel first."])
  assert shape == {"refusals": 0.6, "most_common": 0.4}


def test_win_rate_counts_a_tie_as_half():
  x, y = np.array([1.0, 0.5, 0.2, 0.0]), np.array([0.0, 0.5, 0.3, 0.0])
  assert stats.win_rate(x, y) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
  assert stats.win_rate(x, y) + stats.win_rate(y, x) == pytest.approx(1.0)


def test_a_gain_that_is_only_length_vanishes_at_equal_length():
  """x's answers are shorter and the score pays 0.02 per token saved: a raw gain of ~+0.4 that
  is nothing at equal length; a gain of +0.3 at every length stays +0.3."""
  rng = np.random.default_rng(0)
  len_y = rng.integers(20, 120, 200)
  len_x = np.maximum(1, len_y - rng.integers(0, 40, 200))
  y = rng.normal(0, 1, 200).astype(np.float32)
  only_length = y - 0.02 * (len_x - len_y)
  p = stats.length_controlled(only_length, y, len_x, len_y, samples=200)
  assert np.mean(only_length - y) > 0.3
  assert p["diff_at_equal_length"] == pytest.approx(0.0, abs=1e-5)
  assert p["slope"] == pytest.approx(-0.02, abs=1e-6)
  assert p["ci_low"] <= 0.0 <= p["ci_high"]
  real = y + 0.3 + rng.normal(0, 0.05, 200)
  p = stats.length_controlled(real, y, len_x, len_y, samples=200)
  assert p["diff_at_equal_length"] == pytest.approx(0.3, abs=0.05) and p["ci_low"] > 0.2
  near = np.abs(len_x - len_y) <= np.maximum(4, 0.2 * np.maximum(len_x, len_y))
  assert p["matched_n"] == near.sum() > 0
  assert p["matched_diff"] == pytest.approx(np.mean((real - y)[near]))
  assert "at equal answer length +0.3" in stats.length_text(p)


def test_paired_comparison_of_right_and_wrong_gives_mcnemar():
  x = np.array([1, 1, 1, 0, 1, 0], np.float32)
  y = np.array([0, 0, 1, 0, 1, 1], np.float32)
  p = stats.paired_comparison(x, y, samples=100)
  assert p["diff"] == pytest.approx(1 / 6)
  assert (p["only_first_right"], p["only_second_right"]) == (2, 1)
  assert p["mcnemar_p"] == pytest.approx(1.0)   # 3 discordant: 2 * P(X <= 1 | n 3) = 1
