"""Answer verifiers: is the student's completion right? (GSM8K numbers, MATH expressions).

`score(task, completion, gold) -> 1.0 | 0.0` is what `wst_jax.rewards.verifier_reward` calls on
the host for every answer, so everything here is a pure function of its strings and safe to call
from any thread (JAX may run host callbacks on runtime threads, not the main one).

GSM8K: the final number of the completion (after the last `####`, else the last number) equals
the gold number as a decimal: `$1,000.00` == `1000`, `3.50` == `3.5`.

MATH: `math-verify` (sympy) decides equivalence: `\\frac12` == `0.5`, `90^\\circ` == `90`,
`[1,2)` != `(1,2)`. math-verify's own time limits use `signal.alarm`, which works only on the
main thread (JAX host callbacks may run elsewhere) and, with them off, an answer such as
`\\boxed{10^{10^{9}}}` keeps sympy busy for well over 30 s. So every check runs in a child worker
process that is killed when it passes its time limit and replaced by a fresh one.
"""
from __future__ import annotations

import atexit
import decimal
import json
import logging
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# GSM8K: numbers

# One number as people write it: optional sign and `$`, digits with optional thousands commas
# (`1,000` only when every group has 3 digits), optional decimals. Not preceded by a letter,
# digit or `.` so that `x2`, `v1.2` and the `5` of `.5` are not read as numbers.
_NUMBER = re.compile(r"(?<![\w.])(-)?\$?(-)?(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(\.\d+)?")


def _canonical(match: re.Match) -> str:
  """A `_NUMBER` match -> canonical decimal string: no `$`/commas/trailing zeros, `-0` -> `0`."""
  neg = bool(match.group(1) or match.group(2))
  value = decimal.Decimal(match.group(3).replace(",", "") + (match.group(4) or ""))
  value = -value if neg else value
  return format(value.normalize() if value else decimal.Decimal(0), "f")


def parse_number(text: str) -> str | None:
  """`text` that is exactly one number (spaces and a final `.` allowed) -> canonical string.

  `" $1,000.00 "` -> `"1000"`, `"-3.50."` -> `"-3.5"`, `"12 apples"` -> None.
  """
  match = _NUMBER.fullmatch(text.strip().removesuffix("."))
  return _canonical(match) if match else None


def extract_gsm8k_answer(text: str) -> str | None:
  """The completion's final answer as a canonical number string, or None if it has no number.

  The first number after the last `####` (GSM8K's answer marker); when there is no `####` or
  nothing numeric follows it, the last number anywhere in the text. Units, `$`, thousands
  commas and a sentence's final `.` are ignored: `"#### $1,000.00."` -> `"1000"`.
  """
  if "####" in text:
    match = _NUMBER.search(text.rsplit("####", 1)[1])
    if match:
      return _canonical(match)
  matches = list(_NUMBER.finditer(text))
  return _canonical(matches[-1]) if matches else None


def gsm8k_correct(completion: str, gold: str) -> bool:
  """Does the completion's final number equal `gold` (a number, e.g. the loader's `answer`)?"""
  gold_number = parse_number(gold)
  if gold_number is None:
    raise ValueError(f"GSM8K gold answer {gold!r} is not a number.")
  answer = extract_gsm8k_answer(completion)
  return answer is not None and decimal.Decimal(answer) == decimal.Decimal(gold_number)


# ---------------------------------------------------------------------------------------------
# MATH: LaTeX expressions

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces kept, else None.

  Escaped braces `\\{ \\}` do not count: `\\boxed{\\{1,2\\}}` -> `\\{1,2\\}`. An unclosed box
  -> None.
  """
  starts = [m.end() for m in _BOX.finditer(text)]
  if not starts:
    return None
  depth, i = 1, starts[-1]
  while i < len(text):
    if text[i] == "\\":
      i += 2  # an escaped character, `\{` and `\}` included
      continue
    depth += {"{": 1, "}": -1}.get(text[i], 0)
    if depth == 0:
      return text[starts[-1]:i]
    i += 1
  return None


_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\{([^{}]*)\}")
_DROPPED = re.compile(r"\\left|\\right|\\[,;:! ]|\^\{?\\circ\}?|\\?%|\$|\s")


def normalize_math_string(text: str) -> str:
  """The fallback comparison key for a LaTeX answer that math-verify could not parse.

  Unwraps `\\text{..}`-like wrappers, drops `\\left`/`\\right`, spacing commands, degree signs,
  `%`, `$` and whitespace, maps `\\dfrac`/`\\tfrac` to `\\frac`, strips a final `.`, lowercases.
  """
  text = _TEXT_WRAPPERS.sub(r"\1", text)
  text = _DROPPED.sub("", text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac"))
  return text.rstrip(".").lower()


def math_correct(completion: str, gold: str, timeout_s: float = 5.0) -> bool:
  """Is the completion's answer mathematically equal to the MATH `gold` answer (LaTeX)?

  math-verify parses the gold (as `\\boxed{gold}`) and the completion (its last `\\boxed{}`,
  else the last LaTeX / plain expression) and compares them with sympy. Only when it cannot
  decide (either side yields no parsed expression, or the whole check passes `timeout_s`
  seconds) does it fall back to comparing `normalize_math_string` of the last `\\boxed{}`
  content (else the whole completion) with that of the gold. Never blocks much longer than
  `timeout_s` (plus, once per process, the worker's start-up).
  """
  verdict = _WORKER.check(gold, completion, timeout_s)
  if verdict is not None:
    return verdict
  answer = extract_boxed(completion)
  answer = completion if answer is None else answer
  key = normalize_math_string(gold)
  return bool(key) and normalize_math_string(answer) == key


# ---------------------------------------------------------------------------------------------
# The math-verify worker process

_STARTUP_TIMEOUT_S = 120.0  # importing sympy + math-verify on a busy host


def _serve() -> None:
  """Worker main loop: a JSON request `{"gold", "completion", "timeout_s"}` per stdin line ->
  a JSON reply `{"parsed": bool, "equal": bool}` per line on the original stdout."""
  reply = os.fdopen(os.dup(1), "w")
  os.dup2(2, 1)  # a stray print() inside sympy must not corrupt the protocol
  import math_verify  # only the worker pays for sympy

  logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" warnings
  reply.write("ready\n")
  reply.flush()
  for line in sys.stdin:
    request = json.loads(line)
    # A backstop should the parent vanish mid-check: SIGALRM's default action ends the process
    # even inside C code. The parent normally kills us first.
    signal.alarm(math.ceil(request["timeout_s"]) + 2)
    try:
      gold = math_verify.parse("\\boxed{" + request["gold"] + "}", parsing_timeout=None)
      pred = math_verify.parse(request["completion"], parsing_timeout=None)
      parsed = all(any(not isinstance(x, str) for x in side) for side in (gold, pred))
      equal = parsed and math_verify.verify(gold, pred, timeout_seconds=None)
    except Exception:  # noqa: BLE001  sympy can raise anything on garbage; the caller falls back
      log.exception("math-verify failed on %r", request)
      parsed, equal = False, False
    signal.alarm(0)
    reply.write(json.dumps({"parsed": parsed, "equal": bool(equal)}) + "\n")
    reply.flush()


class _MathWorker:
  """One `_serve` child process per parent process, shared by all threads (one check at a time).

  Started lazily; a check that passes its time limit (or a worker that dies) kills the child and
  starts a replacement right away, so it is importing while the caller moves on.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._proc: subprocess.Popen | None = None
    self._ready = False
    self._pid = os.getpid()

  def _start(self) -> None:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])  # so the child can import wst_jax
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    self._proc = subprocess.Popen(
        [sys.executable, "-c", "from wst_jax.verifiers import _serve; _serve()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    self._ready, self._pid = False, os.getpid()

  def _stop(self) -> None:
    if self._proc is not None and self._pid == os.getpid():
      self._proc.kill()
      self._proc.wait()
    self._proc = None

  def _read_line(self, deadline: float) -> str | None:
    """One reply line, or None if the deadline passes or the worker dies first."""
    fd, data = self._proc.stdout.fileno(), b""
    while not data.endswith(b"\n"):
      remaining = deadline - time.monotonic()
      if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
        return None
      chunk = os.read(fd, 65536)
      if not chunk:
        return None
      data += chunk
    return data.decode()

  def check(self, gold: str, completion: str, timeout_s: float) -> bool | None:
    """math-verify's verdict, or None when it could not parse a side or ran out of time."""
    with self._lock:
      if self._proc is None or self._pid != os.getpid():  # first use, or a forked child
        self._start()
      if not self._ready:
        if self._read_line(time.monotonic() + _STARTUP_TIMEOUT_S) != "ready\n":
          self._stop()
          raise RuntimeError("the math-verify worker process did not start (see its stderr).")
        self._ready = True
      request = {"gold": gold, "completion": completion, "timeout_s": timeout_s}
      try:
        self._proc.stdin.write((json.dumps(request) + "\n").encode())
        self._proc.stdin.flush()
        line = self._read_line(time.monotonic() + timeout_s)
      except BrokenPipeError:
        line = None
      if line is None:
        log.warning("math-verify gave no verdict within %.1f s (gold %r); restarting its worker "
                    "and comparing strings.", timeout_s, gold)
        self._stop()
        self._start()
        return None
      reply = json.loads(line)
      return reply["equal"] if reply["parsed"] else None

  def close(self) -> None:
    with self._lock:
      self._stop()


_WORKER = _MathWorker()
atexit.register(_WORKER.close)


# ---------------------------------------------------------------------------------------------

_VERIFIERS = {"gsm8k": gsm8k_correct, "math": math_correct}


def score(task: str, completion: str, gold: str) -> float:
  """1.0 if `completion` answers correctly (gold answer `gold`) under `task`'s verifier, else 0.0.

  task: "gsm8k" (final number) or "math" (math-verify equivalence).
  """
  if task not in _VERIFIERS:
    hint = (" HH-RLHF answers are scored by a reward model (rewards.reward_model_reward), not a "
            "verifier." if "hh" in task.lower() else "")
    raise ValueError(f"unknown verifier task {task!r}; expected one of {sorted(_VERIFIERS)}."
                     + hint)
  return float(_VERIFIERS[task](completion, gold))
