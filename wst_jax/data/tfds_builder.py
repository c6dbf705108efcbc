"""Task examples -> array_record files that `tfds.data_source` reads, TensorFlow not needed.

`write_array_record("gsm8k", {"train": examples}, data_dir)` builds the TFDS dataset
`wst_task/gsm8k:1.0.0` under `data_dir` (one `FeaturesDict` per task from `tasks.SCHEMAS`: `str`
fields as `Text`, `int` as int32), in the input order. Read it back with random access through
`tfds.data_source("wst_task/gsm8k:1.0.0", data_dir=data_dir, split="train")` (records are dicts
of bytes / numpy ints) or as plain examples with `read_array_record`. Writing and reading were
checked with tensorflow absent (tfds 4.9.10 switches to its NumPy code path).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from wst_jax.data.tasks import SCHEMAS

NAME, VERSION = "wst_task", "1.0.0"


class WstTask(tfds.core.GeneratorBasedBuilder):
  """One builder config per task; the examples to write are given to the constructor."""

  VERSION = tfds.core.Version(VERSION)
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=task) for task in SCHEMAS]
  # tfds resolves its builders' source folder with the `importlib_resources` backport, which it
  # does not install on Python >= 3.9; we have no checksums or metadata files there anyway.
  code_path = None

  def __init__(self, *, split_examples: dict[str, list[dict]] | None = None, **kwargs):
    self._split_examples = split_examples or {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    kinds = {str: tfds.features.Text(), int: np.int32}
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,  # keep the caller's order
        features=tfds.features.FeaturesDict(
            {key: kinds[kind] for key, kind in SCHEMAS[self.builder_config.name].items()}))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(rows) for split, rows in self._split_examples.items()}

  def _generate_examples(self, rows):
    yield from enumerate(rows)


def write_array_record(task: str, split_examples: dict[str, list[dict]], data_dir: str | Path,
                       overwrite: bool = False) -> Path:
  """Write `{split: examples}` of `task` as array_record; returns the dataset's folder.

  Every example must have exactly `SCHEMAS[task]`'s keys and types. An existing dataset of the
  same task under `data_dir` is an error unless `overwrite`, which replaces it.
  """
  if task not in SCHEMAS:
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(SCHEMAS)}.")
  schema = SCHEMAS[task]
  for split, rows in split_examples.items():
    if not rows:
      raise ValueError(f"split {split!r} has no examples.")
    for row in rows:
      if set(row) != set(schema) or not all(isinstance(row[k], t) for k, t in schema.items()):
        raise ValueError(f"split {split!r}: example {row.get('id')!r} does not match the {task} "
                         f"schema {({k: t.__name__ for k, t in schema.items()})}.")
  folder = Path(data_dir) / NAME / task / VERSION
  if folder.exists():
    if not overwrite:
      raise FileExistsError(f"{folder} exists; pass overwrite=True to replace it.")
    shutil.rmtree(folder)
  builder = WstTask(config=task, split_examples=split_examples, data_dir=str(data_dir),
                    file_format="array_record")
  builder.download_and_prepare()
  return folder


def data_source(task: str, data_dir: str | Path, split: str):
  """Random-access TFDS data source of a written split: `len(ds)`, `ds[i]` -> dict of bytes/ints."""
  return tfds.data_source(f"{NAME}/{task}:{VERSION}", data_dir=str(data_dir), split=split)


def read_array_record(task: str, data_dir: str | Path, split: str) -> list[dict]:
  """A written split back as plain examples (str / int values, as the readers return them)."""
  schema = SCHEMAS[task]
  decode = {str: lambda v: v.decode("utf-8"), int: int}
  return [{k: decode[t](record[k]) for k, t in schema.items()}
          for record in data_source(task, data_dir, split)]
