"""Per-question records: what a student answered, appended to a JSONL file as soon as it is known,
so that nothing answered is paid for twice and a crash loses nothing that was already written.

Two keys over one mechanism (`JsonlRecords`):
  * a table row's record (`wst_jax.eval.run_source`): one line per question of the row, keyed
    by its "index"; the file itself is named by what the row answers (`eval.content_key`);
  * the answer journal of a student behind an API (`AnswerJournal`): one line per request,
    keyed by a hash of the model id, the exact chat messages and the generation settings. Greedy
    answers are a function of that key, so a resumed run, a rerun of the table and another
    teacher asking the same thing read the answer here instead of asking again.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from wst_jax.errors import ConfigError


class JsonlRecords:
  """An append-only JSONL file of dict rows, read back as {row[key]: row}.

  A last line cut by a crash (no newline) is cut off the file when it is opened (a truncation,
  so nothing before it is ever rewritten), and appending continues after the last whole row.
  `append` is thread-safe and writes each row with one write() to a file opened O_APPEND, so
  that two processes appending to one journal never interleave within a row. A line that is not
  JSON is an error naming the file and the line. writable False (the other processes of a
  multi-host run): rows are kept in memory only.
  """

  def __init__(self, path: Path | None, key: str, writable: bool = True):
    self.path, self.key = (None if path is None else Path(path)), key
    self.rows: dict = {}
    self._lock = threading.Lock()
    self._fd = None
    if self.path is None:
      return
    if self.path.exists():
      raw = self.path.read_bytes()
      whole = raw[:raw.rfind(b"\n") + 1]
      if len(whole) != len(raw) and writable:
        os.truncate(self.path, len(whole))
      for number, line in enumerate(whole.decode().splitlines(), 1):
        if not line:
          continue
        try:
          row = json.loads(line)
        except ValueError:
          raise ConfigError(f"{self.path}, line {number}, is not a JSON record: move the file "
                            "away (or mend that line) to go on.") from None
        self.rows[row[key]] = row
    if writable:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

  def __len__(self) -> int:
    return len(self.rows)

  def __contains__(self, k) -> bool:
    return k in self.rows

  def get(self, k):
    return self.rows.get(k)

  def append(self, row: dict) -> None:
    line = (json.dumps(row) + "\n").encode()
    with self._lock:
      self.rows[row[self.key]] = row
      if self._fd is not None:
        os.write(self._fd, line)

  def close(self) -> None:
    with self._lock:
      if self._fd is not None:
        os.close(self._fd)
        self._fd = None


def request_key(model: str, messages: list[dict], settings: dict) -> str:
  """The journal key of one chat request: sha256 of its model id, messages and settings."""
  text = json.dumps([model, messages, settings], sort_keys=True, ensure_ascii=False)
  return hashlib.sha256(text.encode()).hexdigest()


class AnswerJournal(JsonlRecords):
  """Every answer a student server returned (`wst_jax.student_api`), keyed by `request_key`;
  each line also holds the request itself, the answer text, its finish reason and its usage."""

  def __init__(self, path: Path, writable: bool = True):
    super().__init__(path, "key", writable)

  def lookup(self, model: str, messages: list[dict], settings: dict) -> dict | None:
    return self.get(request_key(model, messages, settings))

  def add(self, model: str, messages: list[dict], settings: dict, answer: dict) -> None:
    self.append(dict(key=request_key(model, messages, settings), model=model, messages=messages,
                     settings=settings, **answer))
