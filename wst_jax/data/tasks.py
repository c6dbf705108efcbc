"""Task data: GSM8K, MATH and HH-RLHF rows -> plain dict examples with one schema per task.

Sources (`source` argument of every reader):
  * a local file: JSON lines (`.jsonl`, `.json`, optionally `.gz`), read line by line so that a
    bad row is reported as `file:line`; or `.parquet`, read through `datasets`;
  * a Hugging Face hub name ("openai/gsm8k"), read through `datasets.load_dataset`; this needs
    hub access (or the hub cache) and fails offline with a message asking for a local path.
  * a task data reference ("assets:gsm8k/train.jsonl"): the local file `data.assets.resolve`
    finds for it ($WST_ASSETS, ../shared/assets, the hub cache), read as above.

Local JSON lines are parsed with `json` rather than `datasets.load_dataset("json")`: its pyarrow
reader rejects a whole file for one bad or differently typed row, without naming the line, so
neither the `file:line` error nor `skip_malformed` could be honoured.

Schemas (`SCHEMAS`): every value is a `str` except MATH's `level`.
  gsm8k:   id, question, answer (the number after `####`, canonical: `1,000` -> `1000`),
           solution (the original answer text: reasoning with `<<calc>>` notes, `#### N` line)
  math:    id, question, answer (LaTeX), solution, level (1-5; 0 if unknown), subject ("" if
           unknown). MATH-500 rows carry `answer`; original Hendrycks MATH rows (no `answer`,
           `Level 3`, `type`) get the last `\\boxed{}` of their solution.
  hh_rlhf: id, prompt (the dialogue up to and including the last `\\n\\nAssistant:` that both
           dialogues share), chosen / rejected (the rest of each dialogue, leading space kept,
           so prompt + chosen is the original chosen dialogue).
`id` is "<task>/<file stem or hub split>-<row index>", the index counting every row of the
source (skipped ones too), so ids never shift.

A malformed row (bad JSON, missing field, wrong type, no `####` number, no shared prompt) raises
`MalformedRowError` naming the file and line, or with `skip_malformed=True` is skipped and the
count logged as a warning.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from wst_jax.data import assets
from wst_jax.errors import NotFoundError, UnavailableError
from wst_jax.verifiers import extract_boxed, parse_number

log = logging.getLogger(__name__)

SCHEMAS: dict[str, dict[str, type]] = {
    "gsm8k": {"id": str, "question": str, "answer": str, "solution": str},
    "math": {"id": str, "question": str, "answer": str, "solution": str, "level": int,
             "subject": str},
    "hh_rlhf": {"id": str, "prompt": str, "chosen": str, "rejected": str},
}

_JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
_FILE_SUFFIXES = _JSON_SUFFIXES + (".parquet",)


class MalformedRowError(ValueError):
  """A source row that does not fit its task's format; the message starts with `file:line`."""


# ---------------------------------------------------------------------------------------------
# Sources -> raw rows


def _rows(source: str, split: str, hub_kwargs: dict) -> Iterator[tuple[str, str, Any]]:
  """(where, stem, row) for every row of `source`; where = "file:line" / "name[split] row i".

  A JSON line that does not parse is yielded as a `MalformedRowError` in place of its row.
  """
  source = assets.resolve(source)
  path = Path(source).expanduser()
  if path.is_file():
    suffix = next((s for s in _FILE_SUFFIXES if path.name.endswith(s)), "")
    stem = path.name.removesuffix(suffix)
    if suffix in _JSON_SUFFIXES:
      opener = gzip.open if path.name.endswith(".gz") else open
      with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
          if line.strip():
            try:
              yield f"{path}:{number}", stem, json.loads(line)
            except json.JSONDecodeError as e:
              yield f"{path}:{number}", stem, MalformedRowError(f"{path}:{number}: bad JSON ({e})")
      return
    if suffix == ".parquet":
      for i, row in enumerate(_load_dataset("parquet", split="train", data_files=str(path))):
        yield f"{path} row {i}", stem, row
      return
    raise ValueError(f"{path}: unknown file type; expected one of {_FILE_SUFFIXES}.")
  if path.exists() or source.endswith(_FILE_SUFFIXES) or source.startswith(("/", ".", "~")):
    raise NotFoundError(f"{source}: no such data file.")
  try:
    dataset = _load_dataset(source, split=split, **hub_kwargs)
  except Exception as e:  # offline, unknown name, no such split: all need the same advice
    raise UnavailableError(
        f"could not load {source!r} (split {split!r}) from the Hugging Face hub: "
        f"{type(e).__name__}: {e}\nWithout hub access, pass a local path to a JSONL(.gz) or "
        "parquet file instead, e.g. ../shared/assets/gsm8k/train.jsonl.") from e
  for i, row in enumerate(dataset):
    yield f"{source}[{split}] row {i}", split, row


def _load_dataset(*args, **kwargs):
  import datasets  # slow to import; only parquet files and hub names need it

  return datasets.load_dataset(*args, **kwargs)


def _checked(value, key: str, kind: type = str):
  if not isinstance(value, kind) or isinstance(value, bool):
    raise TypeError(f"field {key!r} is {type(value).__name__}, expected {kind.__name__}")
  return value


def _field(row: dict, key: str, kind: type = str):
  if row.get(key) is None:  # `datasets` fills a column missing from a row with None
    raise KeyError(f"missing field {key!r}")
  return _checked(row[key], key, kind)


def _read(task: str, convert: Callable[[dict], dict], source: str, split: str,
          skip_malformed: bool, hub_kwargs: dict) -> list[dict]:
  """Rows of `source` through `convert` (row -> example without id); see the module doc."""
  examples, skipped = [], []
  for index, (where, stem, row) in enumerate(_rows(source, split, hub_kwargs)):
    try:
      if isinstance(row, MalformedRowError):
        raise row
      if not isinstance(row, dict):
        raise TypeError(f"row is {type(row).__name__}, expected an object")
      examples.append({"id": f"{task}/{stem}-{index}", **convert(row)})
    except (KeyError, TypeError, ValueError) as e:
      error = e if isinstance(e, MalformedRowError) else MalformedRowError(
          f"{where}: not a {task} row: {e.args[0]}")
      if not skip_malformed:
        raise error from None
      skipped.append(str(error))
  if skipped:
    log.warning("skipped %d malformed %s rows of %s (skip_malformed=True); first: %s",
                len(skipped), task, source, skipped[0])
  return examples


# ---------------------------------------------------------------------------------------------
# Task formats


def _gsm8k(row: dict) -> dict:
  question, solution = _field(row, "question"), _field(row, "answer")
  if "####" not in solution:
    raise ValueError("answer has no '####' final-answer line")
  final = solution.rsplit("####", 1)[1]
  answer = parse_number(final)
  if answer is None:
    raise ValueError(f"the text after '####' is not a number: {final.strip()!r}")
  return {"question": question, "answer": answer, "solution": solution}


def _math(row: dict) -> dict:
  question = _field(row, "problem")
  solution = _field(row, "solution") if "solution" in row else ""
  answer = _field(row, "answer") if "answer" in row else extract_boxed(solution)
  if not answer:
    raise ValueError("empty 'answer' (or, with none, no \\boxed{} answer in the solution)")
  level = row.get("level")
  level = 0 if level is None else level
  if isinstance(level, str):  # Hendrycks MATH: "Level 3" ("Level ?" when unknown)
    match = re.fullmatch(r"Level (\d|\?)", level)
    if not match:
      raise ValueError(f"level {level!r} is not 'Level N'")
    level = 0 if match.group(1) == "?" else int(match.group(1))
  subject = row.get("subject", row.get("type"))
  subject = "" if subject is None else subject
  return {"question": question, "answer": answer, "solution": solution,
          "level": _checked(level, "level", int), "subject": _checked(subject, "subject")}


_ASSISTANT = "\n\nAssistant:"


def _hh_rlhf(row: dict) -> dict:
  chosen, rejected = _field(row, "chosen"), _field(row, "rejected")
  # The longest shared prefix that ends a turn marker. Not simply the last marker of each:
  # a few real responses themselves contain "\n\nAssistant:".
  shared = len(os.path.commonprefix([chosen, rejected]))
  end = chosen.rfind(_ASSISTANT, 0, shared) + len(_ASSISTANT)
  if end < len(_ASSISTANT):
    raise ValueError("chosen and rejected share no prompt ending in '\\n\\nAssistant:'")
  return {"prompt": chosen[:end], "chosen": chosen[end:], "rejected": rejected[end:]}


_CONVERTERS = {"gsm8k": _gsm8k, "math": _math, "hh_rlhf": _hh_rlhf}
_HUB_DEFAULTS = {"gsm8k": {"name": "main"}, "math": {}, "hh_rlhf": {"data_dir": "harmless-base"}}


def read_task(task: str, source: str, *, split: str = "train", skip_malformed: bool = False,
              hub_kwargs: dict | None = None) -> list[dict]:
  """Examples of `task` ("gsm8k" | "math" | "hh_rlhf") from a local file or hub name.

  split: the hub split ("train", "test"); ignored for a local file, which is one split.
  hub_kwargs: extra `datasets.load_dataset` arguments for a hub name; the defaults pick GSM8K's
  "main" config and HH-RLHF's harmless-base folder.
  """
  if task not in _CONVERTERS:
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(_CONVERTERS)}.")
  return _read(task, _CONVERTERS[task], source, split, skip_malformed,
               hub_kwargs if hub_kwargs is not None else _HUB_DEFAULTS[task])


def read_gsm8k(source: str, **kwargs) -> list[dict]:
  """GSM8K (`{"question", "answer": "... #### N"}`) -> gsm8k examples; kwargs of `read_task`."""
  return read_task("gsm8k", source, **kwargs)


def read_math(source: str, **kwargs) -> list[dict]:
  """MATH-500 / Hendrycks MATH (`{"problem", "solution", "answer"?, "level", "subject"}`)."""
  return read_task("math", source, **kwargs)


def read_hh_rlhf(source: str, **kwargs) -> list[dict]:
  """HH-RLHF (`{"chosen", "rejected"}` full dialogues) -> prompt / chosen / rejected pairs."""
  return read_task("hh_rlhf", source, **kwargs)


# ---------------------------------------------------------------------------------------------
# Order, splits, processes


def shuffle(examples: list, seed: int) -> list:
  """A new list: `examples` permuted by `np.random.default_rng(seed)` (same seed, same order)."""
  return [examples[i] for i in np.random.default_rng(seed).permutation(len(examples))]


def split_train_eval(examples: list, *, eval_fraction: float | None = None,
                     eval_size: int | None = None, seed: int = 0) -> tuple[list, list]:
  """(train, eval): a seeded random subset of `eval_size` (or round(eval_fraction * N)) rows is
  held out; both parts keep the input order. Give exactly one of eval_fraction / eval_size."""
  if (eval_fraction is None) == (eval_size is None):
    raise ValueError("give exactly one of eval_fraction and eval_size.")
  if eval_fraction is not None:
    if not 0 < eval_fraction < 1:
      raise ValueError(f"eval_fraction={eval_fraction} must be in (0, 1).")
    eval_size = round(eval_fraction * len(examples))
  if not 0 <= eval_size <= len(examples):
    raise ValueError(f"eval_size={eval_size} must be in [0, {len(examples)}].")
  held_out = np.zeros(len(examples), bool)
  held_out[np.random.default_rng(seed).permutation(len(examples))[:eval_size]] = True
  return ([e for e, h in zip(examples, held_out) if not h],
          [e for e, h in zip(examples, held_out) if h])


def shard_for_process(examples: list, process_index: int | None = None,
                      process_count: int | None = None) -> list:
  """This process's contiguous slice: len(examples) // process_count rows, disjoint across
  processes (defaults: `jax.process_index()` / `jax.process_count()`). The last
  len % process_count rows go to no process (logged), so every process gets the same count."""
  if process_index is None or process_count is None:
    import jax  # only for the defaults

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
  per, dropped = divmod(len(examples), process_count)
  if dropped:
    log.warning("shard_for_process: dropping the last %d of %d examples so that %d processes "
                "get %d each.", dropped, len(examples), process_count, per)
  return examples[process_index * per:(process_index + 1) * per]
