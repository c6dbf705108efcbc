"""User errors at the command line (`wst_jax.errors`): the message alone on stderr, exit status 2;
the traceback with --debug or WST_DEBUG=1; any other exception keeps its traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wst_jax import errors, zoo

REPO = Path(__file__).resolve().parents[1]


def raising(err: Exception):
  def main(argv):
    raise err
  return main


@pytest.fixture(autouse=True)
def no_debug_env(monkeypatch):
  monkeypatch.delenv(errors.DEBUG_ENV, raising=False)


def test_user_error_prints_its_message_alone(capsys):
  with pytest.raises(SystemExit) as exited:
    errors.run_command(raising(errors.ConfigError("config.x=0 must be > 0.")), ["prog"])
  assert exited.value.code == 2
  assert capsys.readouterr().err == "error: config.x=0 must be > 0.\n"


@pytest.mark.parametrize("argv, env", [(["prog", "--debug"], ""), (["prog"], "1")])
def test_debug_keeps_the_traceback(argv, env, monkeypatch):
  monkeypatch.setenv(errors.DEBUG_ENV, env)
  seen = []

  def main(args):
    seen.append(args)
    raise errors.NotFoundError("no such file")

  with pytest.raises(errors.NotFoundError):
    errors.run_command(main, argv)
  assert seen == [["prog"]]  # --debug is the wrapper's, not the command's


@pytest.mark.parametrize("err", [ValueError("a bug"), FileNotFoundError("a bug"), KeyError("a bug")])
def test_other_errors_keep_their_traceback(err):
  with pytest.raises(type(err), match="a bug"):
    errors.run_command(raising(err), ["prog"])


def test_user_errors_are_still_their_builtin_types():
  assert issubclass(errors.ConfigError, ValueError)
  assert issubclass(errors.NotFoundError, FileNotFoundError)
  assert issubclass(errors.UnavailableError, RuntimeError)


def test_zoo_command_prints_a_fetch_failure_alone(monkeypatch, capsys):
  monkeypatch.setattr(zoo, "fetch", raising(errors.UnavailableError("no network; set X.")))
  with pytest.raises(SystemExit) as exited:
    zoo.main(["fetch", "gemma-3-270m"])
  assert exited.value.code == 2 and capsys.readouterr().err == "error: no network; set X.\n"


# ------------------------------------------------------------------ the commands, as a user runs them


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  """Stand-in task data files: config validation only checks that they exist."""
  folder = tmp_path_factory.mktemp("assets")
  for name in ("gsm8k/train.jsonl", "gsm8k/test.jsonl"):
    (folder / name).parent.mkdir(exist_ok=True)
    (folder / name).touch()
  return folder


def command(assets, module, *args, debug=False):
  env = dict(os.environ, HF_HUB_OFFLINE="1", WST_ASSETS=str(assets))
  env.pop(errors.DEBUG_ENV, None)
  if debug:
    env[errors.DEBUG_ENV] = "1"
  return subprocess.run([sys.executable, "-m", module, "--config", "configs/gsm8k_cpu.py", *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module, override, message", [
    ("wst_jax.train", "--config.train.batch_size=0",
     "error: config.train.batch_size=0 must be > 0."),
    ("wst_jax.train", "--config.task.train_path=assets:gsm8k/nowhere.jsonl",
     "error: config.task.train_path='assets:gsm8k/nowhere.jsonl': task data gsm8k/nowhere.jsonl "
     "not found"),
    ("wst_jax.eval", "--config.teacher.path=zoo:no-such-model",
     "error: unknown zoo model 'no-such-model'"),
])
def test_commands_print_user_errors_alone(assets, module, override, message):
  run = command(assets, module, override)
  assert run.returncode == 2, run.stderr[-3000:]
  assert "Traceback" not in run.stderr, run.stderr[-3000:]
  assert run.stderr.strip().splitlines()[-1].startswith(message), run.stderr[-3000:]


def test_debug_env_shows_the_traceback(assets):
  run = command(assets, "wst_jax.train", "--config.train.batch_size=0", debug=True)
  assert run.returncode == 1, run.stderr[-3000:]
  assert "Traceback" in run.stderr
  assert run.stderr.strip().splitlines()[-1] == (
      "wst_jax.errors.ConfigError: config.train.batch_size=0 must be > 0.")
