"""Seeded procedural GSM8K-format word problems and the instruction pools of the embedded default.

Our own generator (never reasoning-gym's gsm_symbolic, whose templates come from GSM8K test).
Each problem takes 2-3 arithmetic steps on small numbers and carries a GSM8K-style worked
solution, one step per line, then the `#### N` line:

    "Tom has 3 boxes with 4 apples in each box. He gives away 2 apples. How many apples does he
     have left?"  ->  solution "3 * 4 = 12\n12 - 2 = 10\n#### 10", answer "10"

Examples have the GSM8K reader's schema {"id", "question", "answer", "solution"}. Problem i of
stream s is a pure function of (seed, s, i). The split of a problem is a function of its question
text alone (a hash), so train and eval never share a question, whatever seed or stream made them.

The instruction pools: a few "worked-steps" phrases (the student answers them with the worked
solution) and many direct / neutral / unhelpful ones (the student answers "#### N" directly),
so a teacher that writes pool phrases uniformly asks for worked steps only ~20% of the time.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from wst_jax.errors import ConfigError

# Bump whenever the problems, solutions or pools below change: cached pretrained models key on it.
GENERATOR_VERSION = 3

WORKED_STEPS_PHRASES = (
    "Let's think step by step.",
    "Show your work, one step per line.",
    "Work it out step by step, then give the answer.",
    "Write each calculation on its own line.",
)
DIRECT_PHRASES = (
    "Answer with just the number.",
    "Be brief.",
    "Reply quickly.",
    "Give only the final answer.",
    "No explanation needed.",
    "Just say the answer.",
    "Keep it short.",
    "Do not show your work.",
    "Answer in one line.",
    "Read the question carefully.",
    "You can do this.",
    "Try your best.",
    "Be confident.",
    "Use the numbers in the question.",
    "Guess the answer.",
    "Think about apples.",
)
INSTRUCTION_POOL = WORKED_STEPS_PHRASES + DIRECT_PHRASES

SPLITS = ("train", "eval")
EVAL_PERCENT = 10      # share of the question space held out for eval (by question hash)

# Number ranges (inclusive). Every worked step is one small fact: a single-digit product or
# quotient, or a number of at most two digits plus or minus one digit that never carries or
# borrows (only the units digit changes). Composing 2-3 of them in one go (the direct answer)
# is what a small student cannot do.
FACTOR = (2, 9)
SMALL = (1, 9)
START = (10, 40)

_NAMES = (("Tom", "he", "his"), ("Anna", "she", "her"), ("Ben", "he", "his"),
          ("Lily", "she", "her"), ("Sam", "he", "his"), ("Mia", "she", "her"),
          ("Jack", "he", "his"), ("Emma", "she", "her"), ("Leo", "he", "his"),
          ("Zoe", "she", "her"), ("Max", "he", "his"), ("Nora", "she", "her"))
_ITEMS = ("apples", "pencils", "cookies", "marbles", "stickers", "eggs", "cards", "shells",
          "stamps", "candies", "buttons", "coins")
_CONTAINERS = (("box", "boxes"), ("bag", "bags"), ("pack", "packs"), ("basket", "baskets"),
               ("jar", "jars"), ("tray", "trays"))

Step = tuple[int, str, int, int]  # x op y = z


def _step(x: int, op: str, y: int) -> Step:
  z = {"+": x + y, "-": x - y, "*": x * y, "/": x // y}[op]
  return x, op, y, z


class _Draw:
  """The random choices of one problem: numbers in the module's ranges, entities."""

  def __init__(self, rng: np.random.Generator):
    self.rng = rng
    self.name, self.he, self.his = self.pick(_NAMES)
    self.other = self.pick([n for n in _NAMES if n[0] != self.name])[0]
    self.items = self.pick(_ITEMS)
    self.box, self.boxes = self.pick(_CONTAINERS)

  def pick(self, options):
    return options[self.rng.integers(len(options))]

  def int(self, lo_hi: tuple[int, int]) -> int:
    return int(self.rng.integers(lo_hi[0], lo_hi[1] + 1))

  def addend(self, x: int) -> int:
    """A SMALL number that x + it does not carry."""
    return self._upto(min(SMALL[1], 9 - x % 10))

  def subtrahend(self, x: int) -> int:
    """A SMALL number that x - it does not borrow and leaves something."""
    return self._upto(min(SMALL[1], x % 10, x - 1))

  def _upto(self, hi: int) -> int:
    if hi < SMALL[0]:
      raise _Redraw
    return int(self.rng.integers(SMALL[0], hi + 1))


class _Redraw(Exception):
  """These numbers admit no step of the allowed kind: draw the problem again."""


# Each template: draw -> (question, steps). Steps chain: a step's result feeds a later one.

def _boxes_give_away(d: _Draw):
  a, b = d.int(FACTOR), d.int(FACTOR)
  s1 = _step(a, "*", b)
  s2 = _step(s1[3], "-", d.subtrahend(s1[3]))
  q = (f"{d.name} has {a} {d.boxes} with {b} {d.items} in each {d.box}. {d.he.capitalize()} "
       f"gives away {s2[2]} {d.items}. How many {d.items} does {d.he} have left?")
  return q, [s1, s2]


def _buy_packs_had_some(d: _Draw):
  a, b = d.int(FACTOR), d.int(FACTOR)
  s1 = _step(a, "*", b)
  s2 = _step(s1[3], "+", d.addend(s1[3]))
  q = (f"{d.name} buys {a} {d.boxes} of {d.items}. Each {d.box} has {b} {d.items}. "
       f"{d.he.capitalize()} already had {s2[2]} {d.items}. How many {d.items} does {d.he} have "
       f"now?")
  return q, [s1, s2]


def _gets_more_loses(d: _Draw):
  a = d.int(START)
  s1 = _step(a, "+", d.addend(a))
  s2 = _step(s1[3], "-", d.subtrahend(s1[3]))
  q = (f"{d.name} has {a} {d.items}. {d.other} gives {d.name} {s1[2]} more {d.items}. Then "
       f"{d.name} loses {s2[2]} {d.items}. How many {d.items} does {d.name} have now?")
  return q, [s1, s2]


def _share_then_add(d: _Draw):
  per, b = d.int(FACTOR), d.int(FACTOR)
  s1 = _step(per * b, "/", b)
  s2 = _step(per, "+", d.addend(per))
  q = (f"{d.name} has {per * b} {d.items} and puts them equally into {b} {d.boxes}. Then "
       f"{d.he} adds {s2[2]} more {d.items} to each {d.box}. How many {d.items} are in each "
       f"{d.box}?")
  return q, [s1, s2]


def _spend_on_items(d: _Draw):
  a, b = d.int(FACTOR), d.int(FACTOR)
  s1 = _step(b, "*", a)
  s2 = _step(s1[3], "+", d.addend(s1[3]))
  q = (f"{d.name} buys {b} {d.items} for {a} dollars each and a {d.box} for {s2[2]} dollars. "
       f"How many dollars does {d.he} spend?")
  return q, [s1, s2]


def _boxes_buy_give(d: _Draw):
  a, b = d.int(FACTOR), d.int(FACTOR)
  s1 = _step(a, "*", b)
  s2 = _step(s1[3], "+", d.addend(s1[3]))
  s3 = _step(s2[3], "-", d.subtrahend(s2[3]))
  q = (f"{d.name} has {a} {d.boxes} with {b} {d.items} in each {d.box}. {d.he.capitalize()} "
       f"buys {s2[2]} more {d.items} and then gives away {s3[2]} {d.items}. How many {d.items} "
       f"does {d.he} have now?")
  return q, [s1, s2, s3]


def _has_buys_gives(d: _Draw):
  b, c = d.int(FACTOR), d.int(FACTOR)
  s1 = _step(b, "*", c)
  s2 = _step(s1[3], "+", d.addend(s1[3]))
  s3 = _step(s2[3], "-", d.subtrahend(s2[3]))
  q = (f"{d.name} has {s2[2]} {d.items}. {d.he.capitalize()} buys {b} {d.boxes} with {c} "
       f"{d.items} in each {d.box}. Then {d.he} gives {s3[2]} {d.items} to {d.other}. How many "
       f"{d.items} does {d.name} have now?")
  return q, [s1, s2, s3]


def _boxes_into_bags(d: _Draw):
  a, b = d.int(FACTOR), d.int(FACTOR)
  s1 = _step(a, "*", b)
  divisors = [k for k in range(FACTOR[0], FACTOR[1] + 1) if s1[3] % k == 0]
  s2 = _step(s1[3], "/", d.pick(divisors))
  s3 = _step(s2[3], "+", d.addend(s2[3]))
  q = (f"{d.name} buys {a} {d.boxes} with {b} {d.items} in each {d.box}. {d.he.capitalize()} "
       f"shares them equally among {s2[2]} friends. Then each friend finds {s3[2]} more "
       f"{d.items}. How many {d.items} does each friend have?")
  return q, [s1, s2, s3]


TEMPLATES: tuple[Callable[[_Draw], tuple[str, list[Step]]], ...] = (
    _boxes_give_away, _buy_packs_had_some, _gets_more_loses, _share_then_add, _spend_on_items,
    _boxes_buy_give, _has_buys_gives, _boxes_into_bags)


def worked_solution(steps: list[Step]) -> str:
  """"3 * 4 = 12\\n12 - 5 = 7\\n#### 7": one line per step, then the final answer."""
  lines = [f"{x} {op} {y} = {z}" for x, op, y, z in steps]
  return "\n".join(lines + [f"#### {steps[-1][3]}"])


def direct_solution(answer: str) -> str:
  """The answer without steps: "#### 7"."""
  return f"#### {answer}"


def split_of(question: str) -> str:
  """"eval" for EVAL_PERCENT% of the question space (by a hash of the text), else "train"."""
  bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "little") % 100
  return "eval" if bucket < EVAL_PERCENT else "train"


def _stream_key(stream: str) -> int:
  return int.from_bytes(hashlib.sha256(stream.encode()).digest()[:4], "little")


def problem(seed: int, stream: str, index: int) -> dict:
  """Problem `index` of `stream`, whichever split its question falls in."""
  rng = np.random.default_rng([seed, _stream_key(stream), index])
  while True:
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    try:
      question, steps = template(_Draw(rng))
      break
    except _Redraw:
      continue
  answer = str(steps[-1][3])
  return {"id": f"synthetic/{stream}-{seed}-{index}", "question": question, "answer": answer,
          "solution": worked_solution(steps)}


def problems(split: str, count: int, *, seed: int, stream: str) -> list[dict]:
  """The first `count` problems of `stream` whose question lies in `split` ("train" | "eval").

  Different streams give different problems for the same seed (e.g. the student's pretraining
  data vs the RL task); the eval split is disjoint from every stream's train split.
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r}; expected one of {SPLITS}.")
  out, index = [], 0
  while len(out) < count:
    example = problem(seed, stream, index)
    if split_of(example["question"]) == split:
      out.append(example)
    index += 1
  return out


TASK_STREAM = "task"
DEFAULT_TASK_TRAIN = 5000  # RL train problems when config.task.max_train is 0 (unbounded source)


def train_eval(task_cfg, seed: int = 0) -> tuple[list[dict], list[dict]]:
  """The synthetic task of a run: (task.max_train or DEFAULT_TASK_TRAIN) train problems and
  task.eval_size held-out eval problems, from a stream apart from the pretraining data's."""
  if task_cfg.eval_size <= 0:
    raise ConfigError(f"config.task.eval_size={task_cfg.eval_size}: the synthetic task needs a "
                      "positive eval size (its source is unbounded).")
  return (problems("train", task_cfg.max_train or DEFAULT_TASK_TRAIN, seed=seed,
                   stream=TASK_STREAM),
          problems("eval", task_cfg.eval_size, seed=seed, stream=TASK_STREAM))
