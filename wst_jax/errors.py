"""User errors, and how a command line shows them.

A `UserError` is raised only where the code has checked an input and its message names what is
wrong and the fix: a config field that cannot work (`ConfigError`), task data, a model or a file
that is not there (`NotFoundError`), something a run needs that could not be fetched or read
(`UnavailableError`: no network, no readable checkpoint). A command line run through
`run_command` prints such a message alone on stderr and exits with status 2.

Everything else keeps its traceback, ValueErrors and FileNotFoundErrors included: raised by a
library or by an unchecked case, they may be bugs, and the traceback is how to find them.
`--debug` on the command line, or WST_DEBUG=1, keeps the traceback of user errors too.

Each subclass is also the built-in type raised there before, so `except ValueError` and the like
still catch them.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

DEBUG_FLAG, DEBUG_ENV = "--debug", "WST_DEBUG"


class UserError(Exception):
  """An input the user can fix; the message alone says what and how."""


class ConfigError(UserError, ValueError):
  """A config field (or setting) that cannot work; the message names it and the fix."""


class NotFoundError(UserError, FileNotFoundError):
  """Task data, a model or a file that is not there; the message says where it was looked for."""


class UnavailableError(UserError, RuntimeError):
  """Something a run needs could not be fetched or read; the message says what to do."""


def run_command(main: Callable[[list[str]], object], argv: Sequence[str]) -> None:
  """Runs `main(argv)` as a command line: a UserError prints "error: <message>" on stderr and
  exits with status 2; any other exception propagates with its traceback. `DEBUG_FLAG` in argv
  (taken out before `main` sees it) or `DEBUG_ENV`=1 lets user errors propagate too."""
  debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
  try:
    main([arg for arg in argv if arg != DEBUG_FLAG])
  except UserError as err:
    if debug:
      raise
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
