"""Every configs/*.py run config validates (its variants too), and every paper-scale config
(one with a `plan` block) plans with `python -m wst_jax.plan` without its weights: it fits on the
devices it is sized for, is refused on smaller ones, and README.md shows its plan's summary.
Without task data the CPU configs still build, and validating them is the one-line error."""
from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from test_data import no_task_data  # noqa: F401 (a fixture)
from wst_jax import plan
from wst_jax.config_checks import validate
from wst_jax.data import assets

REPO = Path(__file__).resolve().parent.parent
# Not run configs: the schema, the paper-scale helpers, the embedded default's pretraining block
# (every *_cpu config validates with it as its `pretrain` block).
NOT_RUN_CONFIGS = {"__init__", "common", "paper_scale", "pretrain_cpu"}
RUN_CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py")
                     if p.stem not in NOT_RUN_CONFIGS)
# Paper-scale config -> a device memory (GiB) it must not fit in: a TPU v5e chip for the 8 x H100
# configs, half of one for the 32-chip pod config.
TOO_SMALL_GIB = {"gsm8k": 16.0, "math500": 16.0, "hh_rlhf": 16.0, "pod_gsm8k": 8.0,
                 "real_gsm8k_gpu": 24.0}   # the one-GPU real-model config: sized for 80 GB


def variants(name: str) -> list[str]:
  """The config's VARIANTS where it lists them, else "" and, where get_config takes an
  argument, "tiny"."""
  module = importlib.import_module(f"configs.{name}")
  if hasattr(module, "VARIANTS"):
    return list(module.VARIANTS)
  return ["", "tiny"] if inspect.signature(module.get_config).parameters else [""]


def load(name: str, arg: str = ""):
  get_config = importlib.import_module(f"configs.{name}").get_config
  return get_config(arg) if arg else get_config()


@pytest.fixture
def task_data(tmp_path, monkeypatch):
  """$WST_ASSETS holding every file the CPU configs name (empty: validation only looks for them),
  so that they validate with or without ../shared."""
  for name in assets.HUB_FILES:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).touch()
  monkeypatch.setenv("WST_ASSETS", str(tmp_path))


@pytest.mark.usefixtures("task_data")
@pytest.mark.parametrize("name, arg", [(n, a) for n in RUN_CONFIGS for a in variants(n)])
def test_config_validates(name, arg):
  validate(load(name, arg))


@pytest.mark.usefixtures("task_data")
@pytest.mark.parametrize("rows, ok", [("abcd", True), ("ad", True), ("a", True), ("da", False),
                                      ("bd", False), ("abe", False), ("", False)])
def test_eval_rows_are_letters_of_abcd_in_order_from_a(rows, ok):
  config = load("gsm8k_cpu")
  config.eval.rows = rows
  if ok:
    validate(config)
  else:
    with pytest.raises(ValueError, match=r"^config\.eval\.rows=.* starting with 'a'"):
      validate(config)


@pytest.mark.parametrize("name", [n for n in RUN_CONFIGS if n.endswith("_cpu")])
def test_cpu_configs_without_task_data(name, no_task_data):  # noqa: F811 (the fixture)
  config = load(name)  # builds: the data it misses is named by reference
  one_line = (r"^config\.[a-z_.\[\]0-9]+='assets:[^']+': task data .* not found: "
              r"set WST_ASSETS .* HF_HUB_OFFLINE=0 and hub access")
  with pytest.raises(ValueError, match=one_line) as error:
    validate(config)
  assert "\n" not in str(error.value)


def test_configs_with_a_plan_block_are_the_sized_ones():
  assert sorted(n for n in RUN_CONFIGS if load(n).get("plan")) == sorted(TOO_SMALL_GIB)
  assert {"gsm8k_cpu", "math500_cpu"} <= set(RUN_CONFIGS)
  assert "tiny" in variants("math500_cpu")


@pytest.mark.parametrize("name", sorted(TOO_SMALL_GIB))
def test_plan_command_fits_and_is_in_the_readme(name):
  run = subprocess.run([sys.executable, "-m", "wst_jax.plan", "--config", f"configs/{name}.py"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  summary = run.stdout.strip().splitlines()[-1]
  assert summary.startswith("  peak per device") and summary.endswith(": fits"), run.stdout
  readme = (REPO / "README.md").read_text()
  assert f"configs/{name}.py" in readme and summary.strip() in readme, \
      f"README.md's plan for configs/{name}.py is stale; it is now:\n{run.stdout}"


@pytest.mark.parametrize("name", sorted(TOO_SMALL_GIB))
def test_plan_refuses_smaller_devices(name):
  config = load(name)
  assert plan.make_plan(config).fits
  small = plan.make_plan(config, device_memory_gib=TOO_SMALL_GIB[name])
  assert not small.fits
  with pytest.raises(plan.PlanError, match="does not fit"):
    plan.check_fits(small)
