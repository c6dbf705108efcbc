"""Where a task data file named like "gsm8k/train.jsonl" comes from, in this order:

  1. the folder `$WST_ASSETS` names (read at each call, not at import);
  2. `../shared/assets` beside the repository (a source checkout or an editable install);
  3. the same rows on the Hugging Face hub (`HUB_FILES`), as a file in the hub cache: fetched
     into it unless `HF_HUB_OFFLINE=1`, which uses only what is cached there;
  4. else `MissingDataError`, one line naming all three.

Every answer is a local file, so whatever reads a path (the readers, the embedded default's
tokenizer, the content-hashed cache keys) reads it alike. The reference "assets:<name>" stands
for such a file where a path is expected: the CPU configs hold one when `locate` found no file
as they were built, and the readers and config validation resolve it again when the data is
needed, so the error comes then and from here.

    HF_HUB_OFFLINE=0 python -m wst_jax.data   # where each file resolves; fills the hub cache
"""
from __future__ import annotations

import os
from pathlib import Path

from wst_jax.errors import NotFoundError

PREFIX = "assets:"
# ../shared/assets beside the repository: this file is <repo>/wst_jax/data/assets.py.
DEFAULT_FOLDER = Path(__file__).resolve().parents[3] / "shared" / "assets"
# name -> (hub dataset repo, file in it), the same rows as the local file: GSM8K's "main" config
# (as parquet), MATH-500, HH-RLHF's harmless-base test split.
HUB_FILES = {
    "gsm8k/train.jsonl": ("openai/gsm8k", "main/train-00000-of-00001.parquet"),
    "gsm8k/test.jsonl": ("openai/gsm8k", "main/test-00000-of-00001.parquet"),
    "math500/test.jsonl": ("HuggingFaceH4/MATH-500", "test.jsonl"),
    "hh_rlhf/harmless-base-test.jsonl.gz": ("Anthropic/hh-rlhf", "harmless-base/test.jsonl.gz"),
}


class MissingDataError(NotFoundError):
  """No source of a task data file worked; the message is one line naming each way to fix it."""


def folders() -> list[Path]:
  """The local folders searched, in order: $WST_ASSETS (if set), then ../shared/assets."""
  named = os.environ.get("WST_ASSETS")
  return ([Path(named).expanduser()] if named else []) + [DEFAULT_FOLDER]


def _hub_file(repo: str, filename: str) -> str:
  """`filename` of the hub dataset `repo`: its cached copy, else downloaded into the hub cache."""
  import huggingface_hub  # only when no local folder holds the file

  cached = huggingface_hub.try_to_load_from_cache(repo, filename, repo_type="dataset")
  if isinstance(cached, str):  # used as is: no request to the hub each time a config is built
    return cached
  # One request first: without a network it fails at once, where the download retries for ~25 s.
  huggingface_hub.get_hf_file_metadata(
      huggingface_hub.hf_hub_url(repo, filename, repo_type="dataset"))
  return huggingface_hub.hf_hub_download(repo, filename, repo_type="dataset")


def resolve(source: str) -> str:
  """`source` itself unless it is a reference "assets:<name>", which becomes the local file of
  <name> found in the order of the module doc.

  Raises:
    MissingDataError: for a reference that no source provides.
  """
  if not source.startswith(PREFIX):
    return source
  name = source.removeprefix(PREFIX)
  for folder in folders():
    if (folder / name).is_file():
      return str(folder / name)
  named = os.environ.get("WST_ASSETS") or "unset"
  local = (f"task data {name} not found: set WST_ASSETS (now {named}) to a folder holding it, "
           f"or put it at {DEFAULT_FOLDER / name}")
  if name not in HUB_FILES:
    raise MissingDataError(f"{local} (no hub copy is known for it).")
  repo, filename = HUB_FILES[name]
  try:
    return _hub_file(repo, filename)
  except Exception as e:  # offline, no network, no access, moved: the same advice for all
    from huggingface_hub import constants
    why = ("not cached, HF_HUB_OFFLINE=1" if constants.is_offline_mode()
           else f"fetching failed: {type(e).__name__}")
  raise MissingDataError(
      f"{local}, or fetch {repo} ({filename}) into the hub cache with HF_HUB_OFFLINE=0 and hub "
      f"access, e.g. `HF_HUB_OFFLINE=0 python -m wst_jax.data` (now: {why}).")


def locate(name: str) -> str:
  """The local file of task data `name` (e.g. "gsm8k/train.jsonl") as `resolve` finds it, or,
  where none is found, the reference "assets:<name>". Never raises, so that a config builds
  without its data; the reference fails when the data is needed (see the module doc)."""
  try:
    return resolve(PREFIX + name)
  except MissingDataError:
    return PREFIX + name
