"""config.task -> the train and eval examples of a run.

Every process reads the whole (small) example list; `data.batches.batch_indices` then picks the
rows each process feeds, so no example is dropped to even out processes.
"""
from __future__ import annotations

from typing import NamedTuple

from wst_jax.data import tasks
from wst_jax.errors import ConfigError


class Task(NamedTuple):
  train: list[dict]   # examples with at least "id", "question", "answer"
  eval: list[dict]


def _read(name: str, path: str, task_cfg, split: str) -> list[dict]:
  reader = {"gsm8k": "gsm8k", "math500": "math", "hh_rlhf": "hh_rlhf"}[name]
  examples = tasks.read_task(reader, path, split=split, skip_malformed=task_cfg.skip_malformed)
  if name == "hh_rlhf":  # the teacher and the student see the dialogue so far as the question
    examples = [dict(e, question=e["prompt"], answer="") for e in examples]
  return examples


def load_eval_examples(task_cfg, seed: int = 0) -> list[dict]:
  """A seeded subset of task.eval_size rows (0 = all) of task.eval_path."""
  if not task_cfg.eval_path:
    raise ConfigError(f"config.task.eval_path is empty for task {task_cfg.name!r}: give a local "
                      "file, a task data reference (e.g. assets:gsm8k/test.jsonl) or a hub name.")
  evals = tasks.shuffle(_read(task_cfg.name, task_cfg.eval_path, task_cfg, "test"), seed)
  return evals[:task_cfg.eval_size] if task_cfg.eval_size else evals


def load_task(task_cfg, seed: int = 0) -> Task:
  """Train / eval examples for config.task.

  With task.eval_path the eval examples come from that file (a seeded subset of task.eval_size
  rows; 0 = all), else task.eval_size rows of task.train_path are held out (the only choice for
  MATH-500 and the harmless-base test file, which are single splits). With task.dev_size the
  eval examples are dev_size of the remaining training examples instead (a `:dev` config).
  """
  name = task_cfg.name
  if name == "synthetic":
    from wst_jax.data import synthetic
    return Task(*synthetic.train_eval(task_cfg, seed))
  if not task_cfg.train_path:
    raise ConfigError(f"config.task.train_path is empty for task {name!r}: give a local file, "
                      "a task data reference (e.g. assets:gsm8k/train.jsonl) or a hub name.")
  train = _read(name, task_cfg.train_path, task_cfg, "train")
  if task_cfg.eval_path:
    evals = load_eval_examples(task_cfg, seed)
  else:
    train, evals = tasks.split_train_eval(train, eval_size=task_cfg.eval_size, seed=seed)
  if task_cfg.dev_size:
    # The split settings are chosen on: dev_size training examples in place of the held-out
    # ones (which no run of this config then reads), and out of training.
    train, evals = tasks.split_train_eval(train, eval_size=task_cfg.dev_size, seed=seed + 1)
  if task_cfg.max_train:
    train = tasks.shuffle(train, seed)[:task_cfg.max_train]
  if not train or not evals:
    raise ConfigError(f"task {name!r}: {len(train)} train / {len(evals)} eval examples; check "
                      "config.task.train_path, eval_path and eval_size.")
  return Task(train, evals)
