"""wst_jax.data: task readers (fixtures in the public formats), splits, shards, array_record."""
import gzip
import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest

from configs.common import ASSETS
from wst_jax.data import (MalformedRowError, read_gsm8k, read_hh_rlhf, read_math, read_task,
                          shard_for_process, shuffle, split_train_eval)


GSM8K = [
    {"question": "Tom has 2 apples and buys 2. How many?", "answer": "2+2=<<2+2=4>>4\n#### 4"},
    {"question": "A car costs $1,000. Price?", "answer": "It is $1,000.\n#### 1,000"},
    {"question": "It is 2 C and drops 5. Temperature?", "answer": "2-5=<<2-5=-3>>-3\n#### -3"},
]
MATH500 = [
    {"problem": "What is $1/2$ as a decimal?", "solution": "It is $\\boxed{0.5}$.",
     "answer": "0.5", "subject": "Prealgebra", "level": 1},
    {"problem": "Polar form of $(0,3)$?", "solution": "$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$",
     "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2},
]
HENDRYCKS = {"problem": "Solve $x+1=3$.", "solution": "So $x=\\boxed{\\{2\\}}$.", "level": "Level 3",
             "type": "Algebra"}
HH = [
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: Why did...",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: No."},
    # A chosen response that itself contains the turn marker (5 such rows in the real test split).
    {"chosen": "\n\nHuman: Q\n\nAssistant: A1\n\nAssistant: A2",
     "rejected": "\n\nHuman: Q\n\nAssistant: B"},
]


def write_jsonl(path: Path, rows, gz=False) -> Path:
  text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
  if gz:
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(text)
  else:
    path.write_text(text)
  return path


def test_gsm8k(tmp_path):
  examples = read_gsm8k(str(write_jsonl(tmp_path / "train.jsonl", GSM8K)))
  assert [e["answer"] for e in examples] == ["4", "1000", "-3"]
  assert examples[1] == {"id": "gsm8k/train-1", "question": GSM8K[1]["question"],
                         "answer": "1000", "solution": GSM8K[1]["answer"]}


def test_math_formats(tmp_path):
  examples = read_math(str(write_jsonl(tmp_path / "test.jsonl", MATH500 + [HENDRYCKS])))
  assert examples[1] == {"id": "math/test-1", "question": MATH500[1]["problem"],
                         "answer": MATH500[1]["answer"], "solution": MATH500[1]["solution"],
                         "level": 2, "subject": "Precalculus"}
  # Hendrycks MATH: answer from the last \boxed{}, "Level 3" -> 3, "type" is the subject.
  assert examples[2] | {"id": ""} == {"id": "", "question": HENDRYCKS["problem"],
                                      "answer": "\\{2\\}", "solution": HENDRYCKS["solution"],
                                      "level": 3, "subject": "Algebra"}


def test_hh_rlhf(tmp_path):
  examples = read_hh_rlhf(str(write_jsonl(tmp_path / "harmless-base-test.jsonl.gz", HH, gz=True)))
  assert examples[0] == {"id": "hh_rlhf/harmless-base-test-0",
                         "prompt": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant:",
                         "chosen": " Why did...", "rejected": " No."}
  assert examples[1]["prompt"] == "\n\nHuman: Q\n\nAssistant:"
  assert examples[1]["chosen"] == " A1\n\nAssistant: A2"
  for e, row in zip(examples, HH):
    assert e["prompt"] + e["chosen"] == row["chosen"]
    assert e["prompt"] + e["rejected"] == row["rejected"]


BAD_ROWS = [
    ("gsm8k", {"question": "q"}, "missing field 'answer'"),
    ("gsm8k", {"question": "q", "answer": "it is 4"}, "no '####'"),
    ("gsm8k", {"question": "q", "answer": "#### four"}, "not a number: 'four'"),
    ("gsm8k", {"question": ["q"], "answer": "#### 4"}, "'question' is list, expected str"),
    ("gsm8k", {"question": "q", "answer": 4}, "'answer' is int, expected str"),
    ("gsm8k", '{"question": "q", "answer": ', "bad JSON"),
    ("gsm8k", "[1, 2]", "row is list"),
    ("math", {"problem": "p", "solution": "no box"}, "no \\\\boxed"),
    ("math", {"problem": "p", "answer": "1", "level": "hard"}, "not 'Level N'"),
    ("math", {"problem": "p", "answer": "1", "level": 2.0}, "'level' is float"),
    ("hh_rlhf", {"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"},
     "share no prompt"),
    ("hh_rlhf", {"chosen": "\n\nHuman: A\n\nAssistant: x"}, "missing field 'rejected'"),
]


@pytest.mark.parametrize("task, bad, message", BAD_ROWS)
def test_malformed_row_names_file_and_line(tmp_path, task, bad, message):
  good = {"gsm8k": GSM8K[0], "math": MATH500[0], "hh_rlhf": HH[0]}[task]
  path = write_jsonl(tmp_path / "rows.jsonl", [good, "", bad, good])  # bad row on line 3
  with pytest.raises(MalformedRowError, match=rf"rows\.jsonl:3: .*{message}"):
    read_task(task, str(path))


def test_skip_malformed_logs_count_and_keeps_ids(tmp_path, caplog):
  path = write_jsonl(tmp_path / "train.jsonl",
                     [GSM8K[0], {"question": "q"}, "{oops", GSM8K[1], GSM8K[2]])
  with caplog.at_level(logging.WARNING):
    examples = read_gsm8k(str(path), skip_malformed=True)
  assert [e["id"] for e in examples] == ["gsm8k/train-0", "gsm8k/train-3", "gsm8k/train-4"]
  assert "skipped 2 malformed gsm8k rows" in caplog.text and "train.jsonl:2" in caplog.text


def test_sources_that_are_not_there(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="no such data file"):
    read_gsm8k(str(tmp_path / "missing.jsonl"))
  with pytest.raises(ValueError, match="unknown task"):
    read_task("gsm8k_v2", str(tmp_path / "missing.jsonl"))
  datasets = pytest.importorskip("datasets")
  monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # never touch the network here
  with pytest.raises(RuntimeError, match="pass a local path"):
    read_gsm8k("openai/gsm8k", split="test")


def test_parquet_through_datasets(tmp_path):
  datasets = pytest.importorskip("datasets")
  datasets.Dataset.from_list(MATH500).to_parquet(str(tmp_path / "test.parquet"))
  from_parquet = read_math(str(tmp_path / "test.parquet"))
  assert from_parquet == read_math(str(write_jsonl(tmp_path / "test.jsonl", MATH500)))


def test_shuffle_is_a_seeded_permutation():
  items = list(range(50))
  a, b, c = shuffle(items, seed=1), shuffle(items, seed=1), shuffle(items, seed=2)
  assert a == b and a != c and a != items and sorted(a) == items
  assert items == list(range(50))  # input untouched


def test_split_train_eval():
  items = list(range(100))
  train, held = split_train_eval(items, eval_size=10, seed=3)
  assert len(held) == 10 and sorted(train + held) == items and not set(train) & set(held)
  assert train == sorted(train) and held == sorted(held)  # input order kept in each part
  assert split_train_eval(items, eval_size=10, seed=3) == (train, held)
  assert split_train_eval(items, eval_size=10, seed=4)[1] != held
  assert len(split_train_eval(items, eval_fraction=0.25, seed=0)[1]) == 25
  for bad in [dict(), dict(eval_size=1, eval_fraction=0.1), dict(eval_fraction=1.0),
              dict(eval_size=101)]:
    with pytest.raises(ValueError):
      split_train_eval(items, seed=0, **bad)


def test_shard_for_process(caplog):
  items = list(range(10))
  shards = [shard_for_process(items, i, 3) for i in range(3)]
  assert [len(s) for s in shards] == [3, 3, 3]
  assert sorted(sum(shards, [])) == items[:9]
  assert "dropping the last 1 of 10" in caplog.text
  assert shard_for_process(items) == items  # one JAX process here
  with pytest.raises(ValueError):
    shard_for_process(items, 3, 3)


def test_array_record_round_trip(tmp_path):
  tfds_builder = pytest.importorskip("wst_jax.data.tfds_builder")
  splits = {
      "gsm8k": {"train": read_gsm8k(str(write_jsonl(tmp_path / "train.jsonl", GSM8K))),
                "test": read_gsm8k(str(write_jsonl(tmp_path / "test.jsonl", GSM8K[:1])))},
      "math": {"test": read_math(str(write_jsonl(tmp_path / "m.jsonl", MATH500 + [HENDRYCKS])))},
      "hh_rlhf": {"test": read_hh_rlhf(str(write_jsonl(tmp_path / "h.jsonl", HH)))},
  }
  out = tmp_path / "tfds"
  for task, split_examples in splits.items():
    tfds_builder.write_array_record(task, split_examples, out)
    for split, examples in split_examples.items():
      assert tfds_builder.read_array_record(task, out, split) == examples
  source = tfds_builder.data_source("gsm8k", out, "train")
  assert len(source) == 3 and source[1]["answer"] == b"1000"
  assert sorted(p.name for p in (out / "wst_task" / "gsm8k" / "1.0.0").iterdir()
                if "array_record" in p.name) == ["wst_task-test.array_record-00000-of-00001",
                                                 "wst_task-train.array_record-00000-of-00001"]
  if importlib.util.find_spec("tensorflow") is None:
    assert "tensorflow" not in sys.modules
  with pytest.raises(FileExistsError):
    tfds_builder.write_array_record("gsm8k", {"train": splits["gsm8k"]["test"]}, out)
  tfds_builder.write_array_record("gsm8k", {"train": splits["gsm8k"]["test"]}, out, overwrite=True)
  assert tfds_builder.read_array_record("gsm8k", out, "train") == splits["gsm8k"]["test"]
  with pytest.raises(ValueError, match="does not match the gsm8k schema"):
    tfds_builder.write_array_record("gsm8k", {"x": splits["math"]["test"]}, tmp_path / "other")


@pytest.mark.skipif(not ASSETS.is_dir(), reason="no ../shared/assets")
def test_real_files_parse():
  counts = {("gsm8k", "gsm8k/train.jsonl"): 7473, ("gsm8k", "gsm8k/test.jsonl"): 1319,
            ("math", "math500/test.jsonl"): 500,
            ("hh_rlhf", "hh_rlhf/harmless-base-test.jsonl.gz"): 2312}
  for (task, name), count in counts.items():
    examples = read_task(task, str(ASSETS / name))  # raises on any malformed row
    assert len(examples) == count, name
    assert len({e["id"] for e in examples}) == count, name
  hh = read_hh_rlhf(str(ASSETS / "hh_rlhf" / "harmless-base-test.jsonl.gz"))
  with gzip.open(ASSETS / "hh_rlhf" / "harmless-base-test.jsonl.gz", "rt") as f:
    for e, line in zip(hh, f):
      row = json.loads(line)
      assert e["prompt"].endswith("\n\nAssistant:")
      assert (e["prompt"] + e["chosen"], e["prompt"] + e["rejected"]) == (row["chosen"],
                                                                          row["rejected"])
