"""Build-once folders on disk, keyed by a content hash (the embedded default models, the reward
model): a second call with the same inputs finds the folder and returns at once."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable


def default_root() -> Path:
  """Where built and fetched things live: $WST_CACHE, else ~/.cache/wst_jax."""
  return Path(os.environ.get("WST_CACHE") or "~/.cache/wst_jax").expanduser()


def file_hash(path: str) -> str:
  """sha256 of a file's bytes; "" for no file ("")."""
  return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else ""


def content_key(content: dict) -> str:
  """16 hex digits of the sha256 of `content` as sorted-key JSON."""
  return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def build_once(final: Path, marker: str, build: Callable[[Path], None]) -> Path:
  """`final`, built by `build(folder)` unless it already holds the file `marker` (written last).

  The build goes to a temporary sibling that is renamed into place when complete, so a crash never
  leaves a half-built entry; when two processes race, the first rename wins.
  """
  final = Path(final)
  if not (final / marker).is_file():
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
      build(tmp)
      os.replace(tmp, final)
    except OSError:
      if not (final / marker).is_file():
        raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return final
