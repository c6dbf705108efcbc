"""wst_jax.data: task readers (fixtures in the public formats), where task data comes from
($WST_ASSETS, ../shared/assets, the hub cache), splits, shards, array_record."""
import gzip
import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest

from configs import hh_rlhf_cpu, math500_cpu, pretrain_cpu
from configs.common import ASSETS
from wst_jax.config_checks import validate
from wst_jax.data import (MalformedRowError, read_gsm8k, read_hh_rlhf, read_math, read_task,
                          shard_for_process, shuffle, split_train_eval)
from wst_jax.data import assets
from wst_jax.data.registry import load_task


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


# ---------------------------------------------------------------------------------------------
# Where task data comes from: $WST_ASSETS, ../shared/assets, the hub cache, else one line


@pytest.fixture
def no_task_data(tmp_path, monkeypatch) -> Path:
  """No task data anywhere: no $WST_ASSETS, an empty ../shared/assets stand-in, an empty hub cache
  and no hub. -> the hub cache folder (tests lay out snapshots in it)."""
  import huggingface_hub
  datasets = pytest.importorskip("datasets")
  monkeypatch.delenv("WST_ASSETS", raising=False)
  monkeypatch.setattr(assets, "DEFAULT_FOLDER", tmp_path / "shared" / "assets")
  home = tmp_path / "hf"
  for var, value in [("HF_HOME", home), ("HF_HUB_CACHE", home / "hub"),
                     ("HF_DATASETS_CACHE", home / "datasets"), ("HF_HUB_OFFLINE", "1")]:
    monkeypatch.setenv(var, str(value))
  # huggingface_hub and datasets read those variables at import: patch the values they hold.
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
  return home / "hub"


def hub_snapshot(hub_cache: Path, repo: str) -> Path:
  """The snapshot folder of dataset `repo` at "main" in a hub cache laid out as huggingface_hub
  does (datasets--<org>--<name>/refs/main holds the commit, snapshots/<commit>/ the files)."""
  folder = hub_cache / ("datasets--" + repo.replace("/", "--"))
  commit = "c0ffee" + "0" * 34
  (folder / "refs").mkdir(parents=True)
  (folder / "refs" / "main").write_text(commit)
  (folder / "snapshots" / commit).mkdir(parents=True)
  return folder / "snapshots" / commit


def write_assets(folder: Path, question: str) -> Path:
  """Small files in the ../shared/assets layout; every GSM8K question starts with `question`."""
  for task in ("gsm8k", "math500", "hh_rlhf"):
    (folder / task).mkdir(parents=True)
  write_jsonl(folder / "gsm8k" / "train.jsonl", [dict(r, question=question + r["question"])
                                                 for r in GSM8K])
  write_jsonl(folder / "gsm8k" / "test.jsonl", GSM8K[:1])
  write_jsonl(folder / "math500" / "test.jsonl", MATH500)
  write_jsonl(folder / "hh_rlhf" / "harmless-base-test.jsonl.gz", HH, gz=True)
  return folder


def test_missing_task_data_is_one_line_naming_every_way(no_task_data, tmp_path):
  reference = "assets:gsm8k/train.jsonl"
  assert assets.locate("gsm8k/train.jsonl") == reference  # a config still builds
  config = pretrain_cpu.get_config()
  assert config.tokenizer.gsm8k_path == reference
  for fail in (lambda: assets.resolve(reference), lambda: read_gsm8k(reference)):
    with pytest.raises(assets.MissingDataError) as error:
      fail()
    message = str(error.value)
    assert "\n" not in message
    for part in ("WST_ASSETS (now unset)", str(tmp_path / "shared" / "assets" / "gsm8k"),
                 "openai/gsm8k", "HF_HUB_OFFLINE=0 and hub access", "not cached, HF_HUB_OFFLINE=1"):
      assert part in message
  # Config validation stops the run there, with the field in front.
  with pytest.raises(ValueError, match=r"^config\.task\.train_path='assets:math500/test\.jsonl': "
                                       r"task data math500/test\.jsonl not found") as error:
    validate(math500_cpu.get_config())
  assert "\n" not in str(error.value)
  with pytest.raises(assets.MissingDataError, match="no hub copy is known"):
    assets.resolve("assets:gsm8k/socratic.jsonl")
  assert assets.resolve("openai/gsm8k") == "openai/gsm8k"  # paths and hub names: unchanged


def test_wst_assets_comes_first_then_shared_assets(no_task_data, tmp_path, monkeypatch):
  shared = write_assets(tmp_path / "shared" / "assets", "shared: ")
  named = write_assets(tmp_path / "mine", "named: ")
  (named / "math500" / "test.jsonl").unlink()
  # Set after every module was imported: read when a config is built.
  monkeypatch.setenv("WST_ASSETS", str(named))
  assert assets.folders() == [named, shared]
  config = pretrain_cpu.get_config()
  assert config.tokenizer.gsm8k_path == str(named / "gsm8k" / "train.jsonl")
  assert read_gsm8k(config.tokenizer.gsm8k_path)[0]["question"].startswith("named: ")
  # A file the named folder lacks comes from ../shared/assets.
  assert math500_cpu.get_config().task.train_path == str(shared / "math500" / "test.jsonl")
  monkeypatch.delenv("WST_ASSETS")
  examples = read_gsm8k("assets:gsm8k/train.jsonl")
  assert examples[0]["id"] == "gsm8k/train-0" and examples[0]["question"].startswith("shared: ")
  config = hh_rlhf_cpu.get_config("tiny")
  assert config.task.train_path == str(shared / "hh_rlhf" / "harmless-base-test.jsonl.gz")
  validate(config)
  config.task.eval_size = 1
  task = load_task(config.task)
  assert len(task.train) == len(task.eval) == 1


def test_hub_cache_when_no_folder_holds_the_file(no_task_data):
  import pyarrow as pa  # a dependency of datasets, as the fixture's
  import pyarrow.parquet as pq
  gsm8k = hub_snapshot(no_task_data, "openai/gsm8k")
  hub_rows = [dict(r, question="hub: " + r["question"]) for r in GSM8K]
  (gsm8k / "main").mkdir()
  pq.write_table(pa.Table.from_pylist(hub_rows), gsm8k / "main" / "train-00000-of-00001.parquet")
  math = hub_snapshot(no_task_data, "HuggingFaceH4/MATH-500")
  write_jsonl(math / "test.jsonl", MATH500)
  hh = hub_snapshot(no_task_data, "Anthropic/hh-rlhf")
  (hh / "harmless-base").mkdir()
  write_jsonl(hh / "harmless-base" / "test.jsonl.gz", HH, gz=True)

  # The configs name the cached files themselves (the tokenizer reads a path, not a reference).
  train = str(gsm8k / "main" / "train-00000-of-00001.parquet")
  assert pretrain_cpu.get_config().tokenizer.gsm8k_path == train
  assert math500_cpu.get_config().task.train_path == str(math / "test.jsonl")
  config = hh_rlhf_cpu.get_config()
  assert config.task.train_path == str(hh / "harmless-base" / "test.jsonl.gz")
  validate(config)
  # The rows are the hub's (parquet through datasets, offline).
  examples = read_gsm8k("assets:gsm8k/train.jsonl")
  assert [e["question"] for e in examples] == [r["question"] for r in hub_rows]
  assert examples[0]["id"] == "gsm8k/train-00000-of-00001-0"
  assert read_math("assets:math500/test.jsonl") == read_math(str(math / "test.jsonl"))
  # A file the hub cache lacks is the one-line error.
  with pytest.raises(assets.MissingDataError, match="fetch openai/gsm8k .main/test-"):
    assets.resolve("assets:gsm8k/test.jsonl")


def test_hub_fetch_when_online(no_task_data, monkeypatch):
  import huggingface_hub
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
  snapshot = hub_snapshot(no_task_data, "HuggingFaceH4/MATH-500")
  fetched = []

  def download(repo, filename, repo_type):  # a stand-in for the network: fills the hub cache
    fetched.append((repo, filename, repo_type))
    return str(write_jsonl(snapshot / filename, MATH500))

  monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url: None)
  monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
  path = str(snapshot / "test.jsonl")
  assert assets.resolve("assets:math500/test.jsonl") == path
  assert assets.resolve("assets:math500/test.jsonl") == path  # from the cache, no request
  assert fetched == [("HuggingFaceH4/MATH-500", "test.jsonl", "dataset")]

  def unreachable(url):
    raise ConnectionError("no network")

  monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
  with pytest.raises(assets.MissingDataError, match=r"\(now: fetching failed: ConnectionError\)"):
    assets.resolve("assets:hh_rlhf/harmless-base-test.jsonl.gz")


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


def test_dev_size_takes_the_eval_split_from_training_and_keeps_the_held_out_apart():
  from configs import hh_rlhf_cpu
  config = hh_rlhf_cpu.get_config()
  table = load_task(config.task)
  config.task.dev_size = 50
  dev = load_task(config.task)
  key = lambda examples: {e["question"] + e["chosen"] for e in examples}
  assert len(dev.eval) == 50
  assert key(dev.eval) <= key(table.train)              # dev dialogues are training ones,
  assert not key(dev.eval) & key(table.eval)            # never the table's,
  assert not key(dev.eval) & key(dev.train)             # and out of training
  assert key(dev.train) | key(dev.eval) == key(table.train)


def test_dialogue_turns_and_the_placement_on_the_last_human_turn():
  from ml_collections import ConfigDict

  from wst_jax.errors import ConfigError
  from wst_jax.data.batches import PLACEMENTS, dialogue_turns, student_messages
  transcript = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I pick a lock?\n\nAssistant:"
  assert dialogue_turns(transcript) == [
      {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
      {"role": "user", "content": "how do I pick a lock?"}]
  # Cut on the left inside a human turn: the fragment is that turn; inside an assistant's: gone.
  assert dialogue_turns("a lock?\n\nAssistant: no\n\nHuman: why\n\nAssistant:")[0] == {
      "role": "user", "content": "a lock?"}
  assert dialogue_turns("llo\n\nHuman: why\n\nAssistant:") == [{"role": "user",
                                                                   "content": "why"}]
  # Cut right after the blank lines, or inside a marker; no markers at all.
  tail = "\n\nAssistant: b\n\nHuman: c\n\nAssistant:"
  two = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
         {"role": "user", "content": "c"}]
  assert dialogue_turns("Human: a" + tail) == dialogue_turns("uman: a" + tail) == two
  assert dialogue_turns("stant: b\n\nHuman: c\n\nAssistant:") == two[2:]
  assert dialogue_turns("What is 2 plus 2?") == [{"role": "user", "content": "What is 2 plus 2?"}]
  history = dialogue_turns(transcript)[:2]
  for where, fields in PLACEMENTS.items():
    prompt = ConfigDict(dict(fields, dialogue=True))
    messages = student_messages(prompt, transcript, "Be kind.")
    last = "how do I pick a lock?"
    if where == "system":
      assert messages == [{"role": "system", "content": "Be kind."}, *history,
                          {"role": "user", "content": last}]
    else:
      text = "Be kind." + last if where == "user_before" else last + "Be kind."
      assert messages == [*history, {"role": "user", "content": text}]
  with pytest.raises(ConfigError, match="human turn"):
    dialogue_turns("\n\nHuman: hi\n\nAssistant: hello")
