"""The benchmarks' own inputs, checked without running them (each needs the real models and the
whole machine): a benchmark broken by a change elsewhere should fail here, not on its next run."""
import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
  monkeypatch.syspath_prepend(str(BENCHMARKS))
  monkeypatch.syspath_prepend(str(Path(__file__).parent))
  return lambda name: importlib.import_module(name)


def test_api_student_prompt_renders_the_question_as_the_json_and_api_paths_do(bench):
  from wst_jax.data import batches
  api_student = bench("api_student")
  assert batches.student_messages(api_student.PROMPT, "What is 2 + 3?", "") == [
      {"role": "user", "content": "What is 2 + 3?"}]


def test_answer_rate_checks_each_student_against_its_own_floor_target(bench):
  answer_rate = bench("answer_rate")
  probes = {"bfloat16": dict(prefill_gflop_s=600.0, step_over_floor=1.4)}
  for student, met in (("qwen2.5-coder-0.5b-instruct", True),
                       ("qwen2.5-coder-1.5b-instruct", False)):
    factor, _ = answer_rate.STUDENTS[student]
    assert answer_rate.targets({}, probes, factor)["bf16 step / compute floor"]["met"] is met
