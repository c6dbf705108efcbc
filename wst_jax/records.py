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
import threading
from pathlib import Path


class JsonlRecords:
  """An append-only JSONL file of dict rows, read back as {row[key]: row}.

  A last line cut by a crash (no newline) is dropped from the file when it is opened, so that
  appending continues after the last whole row. `append` is thread-safe and flushes each row.
  writable False (the other processes of a multi-host run): rows are kept in memory only.
  """

  def __init__(self, path: Path | None, key: str, writable: bool = True):
    self.path, self.key = (None if path is None else Path(path)), key
    self.rows: dict = {}
    self._lock = threading.Lock()
    self._file = None
    if self.path is None:
      return
    if self.path.exists():
      text = self.path.read_text()
      whole = text[:text.rfind("\n") + 1]
      if whole != text and writable:
        self.path.write_text(whole)
      for line in whole.splitlines():
        if line:
          row = json.loads(line)
          self.rows[row[key]] = row
    if writable:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._file = open(self.path, "a")

  def __len__(self) -> int:
    return len(self.rows)

  def __contains__(self, k) -> bool:
    return k in self.rows

  def get(self, k):
    return self.rows.get(k)

  def append(self, row: dict) -> None:
    with self._lock:
      self.rows[row[self.key]] = row
      if self._file is not None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

  def close(self) -> None:
    with self._lock:
      if self._file is not None:
        self._file.close()
        self._file = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


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

  def add(self, model: str, messages: list[dict], settings: dict, answer: dict) -> dict:
    row = dict(key=request_key(model, messages, settings), model=model, messages=messages,
               settings=settings, **answer)
    self.append(row)
    return row
