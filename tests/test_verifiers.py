"""wst_jax.verifiers: GSM8K numbers, MATH equivalence (math-verify in a worker), `score`."""
import json
import threading
import time

import pytest

from configs.common import ASSETS
from wst_jax.verifiers import (extract_boxed, extract_gsm8k_answer, gsm8k_correct, math_correct,
                               normalize_math_string, parse_number, score)



@pytest.mark.parametrize("text, expected", [
    ("Janet makes 9 * 2 = $18.\n#### 18", "18"),
    ("#### 1,000", "1000"),
    ("#### $1,000.00.", "1000"),
    ("It costs 3.50", "3.5"),
    ("The temperature is -5 degrees.", "-5"),
    ("10 - 15 = -5", "-5"),
    ("x-5", "5"),  # a minus after a letter is subtraction, not a sign
    ("She ran 12 km, then 7km.", "7"),
    ("the answer is 50%.", "50"),
    ("-$5", "-5"),
    ("#### -0", "0"),
    ("#### 1,234,567.890", "1234567.89"),
    ("1,2,3", "3"),  # not a thousands separator
    ("#### I am not sure, maybe 7", "7"),  # nothing numeric after '####': last number
    ("#### 18\n\nQuestion: 5 apples?\n#### 5", "5"),  # the last '####' wins
    ("The answer is 42 and then #### 41 more text 40", "41"),
    ("v1.2 is not a number; 7 is", "7"),
    ("no numbers here", None),
    ("", None),
    ("####", None),
])
def test_extract_gsm8k_answer(text, expected):
  assert extract_gsm8k_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    (" $1,000.00 ", "1000"), ("-3.50.", "-3.5"), ("18", "18"), ("007", "7"),
    ("12 apples", None), ("1,00", None), ("", None), ("1/2", None),
])
def test_parse_number(text, expected):
  assert parse_number(text) == expected


@pytest.mark.parametrize("completion, gold, expected", [
    ("#### 3.50", "3.5", True),
    ("$1,000.00", "1000", True),
    ("1000", "$1,000.00", True),
    ("The answer is 1,000 dollars.", "1000", True),
    ("#### -3", "-3", True),
    ("#### 3", "-3", False),
    ("#### 18", "17", False),
    ("3.5", "3.05", False),
    ("I cannot solve this.", "5", False),
    ("", "5", False),
])
def test_gsm8k_correct(completion, gold, expected):
  assert gsm8k_correct(completion, gold) is expected


def test_gsm8k_gold_must_be_a_number():
  with pytest.raises(ValueError, match="not a number"):
    gsm8k_correct("#### 5", "five")


@pytest.mark.parametrize("text, expected", [
    (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"\boxed{1} then \boxed{2}", "2"),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\fbox{42}", "42"),
    (r"\boxed {x^{2}}", "x^{2}"),
    (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces are not nesting
    (r"\boxed{\text{(C)}}", r"\text{(C)}"),
    (r"\boxed{1 + {2", None),  # unclosed
    ("no box here", None),
])
def test_extract_boxed(text, expected):
  assert extract_boxed(text) == expected


def test_normalize_math_string():
  assert normalize_math_string(r"\text{Evelyn}") == normalize_math_string("evelyn ") == "evelyn"
  assert normalize_math_string(r"\left( 3,\! \dfrac{\pi}{2} \right).") == r"(3,\frac{\pi}{2})"
  assert normalize_math_string(r"90^\circ") == normalize_math_string("90^{\\circ}") == "90"


@pytest.mark.parametrize("completion, gold, expected", [
    (r"so \boxed{0.5}", r"\frac{1}{2}", True),
    (r"\boxed{\frac12}", "0.5", True),
    (r"\boxed{2/4}", r"\frac12", True),
    (r"\boxed{\dfrac{14}{3}}", r"\frac{14}{3}", True),
    (r"\boxed{4.6667}", r"\frac{14}{3}", False),
    (r"\boxed{90}", r"90^\circ", True),
    (r"the angle is $90^\circ$", "90", True),
    (r"\boxed{[1,2)}", "[1,2)", True),
    (r"\boxed{(1,2)}", "[1,2)", False),  # open vs half-open interval
    (r"\boxed{(3,\pi/2)}", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\boxed{10\text{ cm}}", "10", True),
    (r"\boxed{C}", r"\text{(C)}", True),
    (r"\boxed{1,000}", "1000", True),
    (r"\boxed{\$1,000.00}", "1000", True),
    (r"\boxed{-3}", "-3", True),
    (r"\boxed{3}", "-3", False),
    (r"\boxed{\{1,2\}}", r"\{1,2\}", True),
    (r"\boxed{7,5,3}", "3, 5, 7", True),
    (r"\boxed{42_8}", "52_8", False),
    (r"\fbox{6-5i}", "6 - 5i", True),
    ("The answer is 5.", "5", True),
    ("Evelyn", r"\text{Evelyn}", True),  # math-verify parses no expression: string fallback
    ("I don't know", "5", False),
    ("", "5", False),
])
def test_math_correct(completion, gold, expected):
  assert math_correct(completion, gold) is expected


def test_math_correct_cannot_hang():
  """10^(10^9) as an exact integer runs for minutes in C code that math-verify's signal-based
  timeout cannot interrupt; the worker is killed at the limit, the answer counts as wrong, the
  string fallback still accepts the identical string, and the next check gets a fresh worker."""
  math_correct("\\boxed{1}", "1")  # worker started
  start = time.monotonic()
  assert math_correct(r"\boxed{10^{10^{9}}}", "3", timeout_s=1.0) is False
  assert time.monotonic() - start < 3.0
  assert math_correct(r"\boxed{10^{10^{9}}}", r"10^{10^{9}}", timeout_s=1.0) is True
  assert math_correct(r"\boxed{\frac{1}{2}}", "0.5") is True


def test_math_correct_off_the_main_thread():
  """JAX runs host callbacks on runtime threads, where math-verify's own signal timeouts fail."""
  results = []
  threads = [threading.Thread(target=lambda: results.append(math_correct(r"\boxed{\frac12}", "0.5")))
             for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert results == [True] * 3


def test_score_dispatch():
  assert score("gsm8k", "#### 1,000", "1000") == 1.0
  assert score("gsm8k", "#### 999", "1000") == 0.0
  assert score("math", r"\boxed{\frac12}", "0.5") == 1.0
  assert isinstance(score("math", "nothing", "0.5"), float)
  with pytest.raises(ValueError, match="unknown verifier task 'gsm8K'"):
    score("gsm8K", "#### 1", "1")
  with pytest.raises(ValueError, match="reward model"):
    score("hh_rlhf", "hi", "there")


@pytest.mark.skipif(not ASSETS.is_dir(), reason="no ../shared/assets")
def test_real_gold_solutions_verify():
  """Every GSM8K test solution, and a spread of MATH-500 solutions, is right about its own gold."""
  for line in (ASSETS / "gsm8k" / "test.jsonl").read_text().splitlines():
    row = json.loads(line)
    assert gsm8k_correct(row["answer"], row["answer"].rsplit("####", 1)[1]), row
  rows = [json.loads(l) for l in (ASSETS / "math500" / "test.jsonl").read_text().splitlines()]
  for row in rows[::25]:
    assert math_correct(row["solution"], row["answer"]), row["answer"]
    assert not math_correct(row["solution"], row["answer"] + "+1"), row["answer"]

