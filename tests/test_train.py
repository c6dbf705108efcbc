"""train() and the eval table on tiny worlds: resume bit for bit (also after a crash, and past a
damaged checkpoint), the NaN guard, config errors, and a world where PPO must learn which
instruction makes the student right.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from ml_collections import ConfigDict

import tiny_world
from wst_jax import experiment, sharding, train as train_lib, verifiers
from wst_jax.eval import evaluate, trained_teacher_params
from wst_jax.experiment import Setup
from wst_jax.train import train

# ------------------------------------------------------------------------------------ helpers


def metrics_rows(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def comparable(row: dict) -> dict:
  """A metrics row without what may differ between equal steps (timing, the sample texts that
  are logged on the first step of every train() call)."""
  return {k: v for k, v in row.items() if k not in ("step_time_s", "instructions")}


def saved_state(workdir: Path, step: int) -> dict:
  """The raw arrays of checkpoint `step` (the whole TrainState) by path."""
  tree = ocp.StandardCheckpointer().restore((workdir / "checkpoints" / str(step) / "default")
                                            .absolute())
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_same_state(a: dict, b: dict):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def files(folder: Path) -> dict[Path, bytes]:
  return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def data_files(step_folder: Path) -> list[Path]:
  """A checkpoint's OCDBT data files (in folders named d/), largest first."""
  return sorted((p for p in step_folder.rglob("*") if p.is_file() and p.parent.name == "d"),
                key=lambda p: -p.stat().st_size)


def damage(step_folder: Path) -> dict[Path, bytes]:
  """Truncates every array data file of a checkpoint to half its size, as an interrupted copy
  would. -> the step folder's files after the damage."""
  data = data_files(step_folder)
  assert data, sorted(step_folder.rglob("*"))
  for p in data:
    os.truncate(p, p.stat().st_size // 2)
  return files(step_folder)


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def one_compile_per_config():
  """train() wraps a fresh `make_train_step(...)` in jax.jit on every call, so every call
  compiles the step again (~15-30 s here). Calls with the same config (train.* aside) get the
  same step function here, so XLA compiles it once per config for the module. Between steps
  train() runs exactly as it does without this."""
  real, cache = train_lib.make_train_step, {}

  def cached(config, *args):
    key = json.dumps({k: v for k, v in config.to_dict().items() if k not in ("train", "workdir")},
                     sort_keys=True, default=str)
    if key not in cache:
      cache[key] = real(config, *args)
    return cache[key]

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train_lib, "make_train_step", cached)
    yield


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  folder = tmp_path_factory.mktemp("world")
  paths = tiny_world.make(folder)
  base = tiny_world.config(paths, folder / "unused")
  tiny_world.use_gsm8k_files(base, folder, tiny_world.questions(48), tiny_world.questions(16, 1))
  return base


@pytest.fixture
def probe_reward(monkeypatch):
  """A reward that depends on the student's answers (the random student is never right)."""
  monkeypatch.setattr(verifiers, "score", tiny_world.probe_score)


def make_config(base, num_steps: int):
  config = base.copy_and_resolve_references()
  config.train.num_steps, config.train.checkpoint_every = num_steps, 2
  return config


@pytest.fixture(scope="module")
def run_a(world, tmp_path_factory):
  """The uninterrupted reference: 4 steps, checkpoints at 2 and 4."""
  workdir = tmp_path_factory.mktemp("run_a")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(verifiers, "score", tiny_world.probe_score)
    train(make_config(world, 4), workdir)
  return workdir


# ---------------------------------------------------------------------------- resume, NaN guard


def test_resume_is_bit_for_bit(world, run_a, tmp_path, probe_reward):
  rows_a = metrics_rows(run_a)
  assert [r["step"] for r in rows_a] == [1, 2, 3, 4]
  assert len({r["reward"] for r in rows_a}) > 1  # the probe reward does vary
  b = tmp_path / "b"
  train(make_config(world, 2), b)
  assert ocp.CheckpointManager(b.absolute() / "checkpoints").latest_step() == 2
  train(make_config(world, 4), b)  # resumes from the step-2 checkpoint
  rows_b = metrics_rows(b)
  assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
  assert [comparable(r) for r in rows_b] == [comparable(r) for r in rows_a]  # exact floats
  assert_same_state(saved_state(b, 4), saved_state(run_a, 4))


def test_crash_after_a_checkpoint_resumes_bit_for_bit(world, run_a, tmp_path, probe_reward):
  c = tmp_path / "c"

  def crash(step, metrics):
    if step == 3:  # after the step-2 checkpoint, before the step-4 one
      raise RuntimeError("simulated crash")

  with pytest.raises(RuntimeError, match="simulated crash"):
    train(make_config(world, 4), c, on_step=crash)
  assert ocp.CheckpointManager(c.absolute() / "checkpoints").latest_step() == 2
  crashed_rows = metrics_rows(c)
  assert [r["step"] for r in crashed_rows] == [1, 2, 3]
  train(make_config(world, 4), c)
  rows_a, rows_c = metrics_rows(run_a), metrics_rows(c)
  # Step 3 was logged by the crashed run; the resume (from the step-2 checkpoint) dropped that
  # row and logged the step again: one row per step, as in the uninterrupted run.
  assert [r["step"] for r in rows_c] == [1, 2, 3, 4]
  assert [comparable(r) for r in rows_c] == [comparable(r) for r in rows_a]
  assert rows_c[:2] == crashed_rows[:2]  # rows up to the checkpoint are kept as written
  assert not (c / "metrics.jsonl.tmp").exists()
  assert_same_state(saved_state(c, 4), saved_state(run_a, 4))


def test_damaged_newest_checkpoint_is_kept_aside_and_the_run_resumes_from_the_one_before(
    world, run_a, tmp_path, probe_reward, caplog):
  e = tmp_path / "e"
  shutil.copytree(run_a, e)  # checkpoints at steps 2 and 4
  newest = (e / "checkpoints" / "4").absolute()
  damaged = damage(newest)
  with caplog.at_level(logging.INFO):
    train(make_config(world, 4), e)
  [line] = [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and str(newest) in r.getMessage()]
  assert "cannot be read" in line and "resume from step 2" in line and "\n" not in line, line
  assert "resuming from checkpoint step 2" in caplog.text
  # Nothing deleted: the damaged folder is kept, renamed out of the way of the new step 4.
  assert files(newest.with_name("4.damaged")) == damaged
  assert sorted(p.name for p in newest.parent.iterdir()) == ["2", "4", "4.damaged"]
  # Steps 3 and 4 were trained again from the step-2 checkpoint: as in the uninterrupted run.
  rows_a, rows_e = metrics_rows(run_a), metrics_rows(e)
  assert [r["step"] for r in rows_e] == [1, 2, 3, 4]
  assert [comparable(r) for r in rows_e] == [comparable(r) for r in rows_a]
  assert_same_state(saved_state(e, 4), saved_state(run_a, 4))


def test_eval_loader_stamps_the_step_it_restores_past_a_damaged_one(world, run_a, tmp_path):
  """Eval's loader skips a damaged newest step as train does; row (d)'s records are keyed by the
  stamp of the step it restored, not of the newest."""
  e = tmp_path / "e"
  shutil.copytree(run_a, e)  # checkpoints at steps 2 and 4
  damage((e / "checkpoints" / "4").absolute())
  config = make_config(world, 4)
  committed = experiment.checkpoint_manager(e, config).metadata(2).commit_timestamp_nsecs
  _, step, stamp = trained_teacher_params(Setup(config, training=False), e)
  assert step == 2 and stamp == f"checkpoint 2, committed at {committed} ns", stamp


def test_no_readable_checkpoint_is_a_clear_error_and_renames_nothing(world, run_a, tmp_path):
  f = tmp_path / "f"
  shutil.copytree(run_a, f)
  checkpoints = (f / "checkpoints").absolute()
  before = {step: damage(checkpoints / step) for step in ("2", "4")}
  metrics = (f / "metrics.jsonl").read_text()
  message = re.escape(f"no checkpoint in {checkpoints} can be read")
  with pytest.raises(RuntimeError, match=message) as err:
    train(make_config(world, 4), f)
  assert "step 4: ValueError" in str(err.value) and "step 2: ValueError" in str(err.value)
  assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4"]
  assert {step: files(checkpoints / step) for step in ("2", "4")} == before
  assert (f / "metrics.jsonl").read_text() == metrics


# How a checkpoint gets damaged -> whether restore_or_init must skip it. Without _METADATA or the
# commit markers the arrays are still all there and orbax reads them with the target's shapes.
DAMAGE = {
    "one data file truncated": (lambda step: os.truncate(data_files(step)[0], 1000), True),
    "every data file truncated": (lambda step: [os.truncate(p, 1000) for p in data_files(step)],
                                  True),
    "a zero-length data file": (lambda step: os.truncate(data_files(step)[0], 0), True),
    "no _METADATA": (lambda step: (step / "default" / "_METADATA").unlink(), False),
    "no commit markers": (lambda step: [p.unlink() for p in step.rglob("commit_success.txt")],
                          False),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_restore_skips_any_damage_and_deletes_nothing(kind, tmp_path, caplog, monkeypatch):
  """One data file of many truncated makes orbax raise a bare Exception: every kind is skipped
  alike, or read. The one warning line is all that comes out, not the reads orbax abandons
  ("Event loop is closed" from tensorstore's threads, their coroutines and tasks when collected:
  through sys.unraisablehook and the "asyncio" logger). Without `abandoned_reads_quiet` some
  come out in one or more of these cases on most runs."""
  printed = []   # what sys.unraisablehook would print (pytest's own hook makes it warnings)
  monkeypatch.setattr(sys, "unraisablehook", printed.append)
  rep = sharding.replicated(sharding.make_mesh({"data": -1}))
  rng = np.random.default_rng(0)
  states = {step: {f"w{i}": rng.normal(size=(256, 256)).astype(np.float32) for i in range(4)}
            for step in (1, 2)}
  config = ConfigDict({"train": {"keep_checkpoints": 3}})
  mngr = experiment.checkpoint_manager(tmp_path, config)
  for step, state in states.items():
    mngr.save(step, args=ocp.args.StandardSave(jax.device_put(state, rep)))
  mngr.wait_until_finished()
  mngr.close()
  newest = (tmp_path / "checkpoints" / "2").absolute()
  damage_fn, unreadable = DAMAGE[kind]
  damage_fn(newest)
  damaged = files(newest)
  initial = jax.device_put(jax.tree.map(np.zeros_like, states[1]), rep)
  with caplog.at_level(logging.WARNING):
    restored = experiment.restore_or_init(experiment.checkpoint_manager(tmp_path, config),
                                          initial, jax.tree.map(lambda _: rep, initial))
    gc.collect()   # what the restore left behind, if anything, is collected now
  assert not printed, [f"{u.exc_type.__name__}: {u.exc_value}" for u in printed]
  assert not [r for r in caplog.records if r.name == "asyncio"]
  resumed = 1 if unreadable else 2
  for name, array in states[resumed].items():
    np.testing.assert_array_equal(np.asarray(restored[name]), array, err_msg=name)
  kept = newest.with_name("2.damaged") if unreadable else newest
  assert files(kept) == damaged  # nothing deleted or changed
  assert sorted(p.name for p in newest.parent.iterdir()) == ["1", kept.name]
  warnings = [r.getMessage() for r in caplog.records if str(newest) in r.getMessage()]
  if unreadable:
    [line] = warnings
    assert "cannot be read (ValueError: OUT_OF_RANGE" in line and "from step 1" in line, line
  else:
    assert not warnings


def test_rows_up_to_drops_later_and_torn_rows():
  lines = ['{"step": 1}\n', '{"step": 2}\n', '{"step": 3}\n', '{"step": 3}\n', '{"st']
  assert train_lib.rows_up_to(lines, 2) == lines[:2]
  assert train_lib.rows_up_to(lines, 3) == lines[:4]
  assert train_lib.rows_up_to(lines, 0) == []


def step_rates(num_epochs: int, num_minibatches: int, num_steps: int, **optim) -> np.ndarray:
  """The rate of every AdamW update of `num_steps` training steps under config.optim.update(
  **optim); -> [num_steps, num_epochs x num_minibatches]. With a constant gradient and no weight
  decay, Adam's update is the rate itself."""
  from configs import common
  from wst_jax.optim import optimizer
  config = common.base_config()
  config.ppo.update(num_epochs=num_epochs, num_minibatches=num_minibatches)
  config.optim.update(weight_decay=0.0, max_grad_norm=10.0, **optim)
  tx = optimizer(config)
  params = {"w": jax.numpy.zeros(())}
  opt_state, rates = tx.init(params), []
  for _ in range(num_steps * num_epochs * num_minibatches):
    updates, opt_state = tx.update({"w": jax.numpy.ones(())}, opt_state, params)
    rates.append(-float(updates["w"]))
  return np.asarray(rates).reshape(num_steps, num_epochs * num_minibatches)


def test_learning_rate_schedule_counts_training_steps():
  """warmup_steps and decay_steps are training steps: each step's num_epochs x num_minibatches
  AdamW updates share its rate (optax counts updates). Step n (1-based) takes the schedule's
  value at n: the peak at step warmup_steps, the floor from step decay_steps on."""
  per_step = step_rates(1, 2, 12, learning_rate=1.0, warmup_steps=2, decay_steps=10,
                        final_lr_fraction=0.1)
  np.testing.assert_allclose(per_step[:, 0], per_step[:, 1], rtol=1e-5)   # one rate a step
  # Warm-up over steps 1-2, then the cosine over steps 3-10, which ends on the floor (0.1) at
  # step 10 (step 9 is still 0.1 + 0.45 x (1 - cos(pi / 8)) ~ 0.134).
  cosine = 0.1 + 0.45 * (1 + np.cos(np.pi * np.arange(1, 9) / 8))
  np.testing.assert_allclose(per_step[:, 0], [0.5, 1.0, *cosine, 0.1, 0.1], rtol=1e-4)


def test_first_step_trains_at_the_first_warmup_rate():
  """The warm-up starts from 0, but step 1 trains: all its updates at learning_rate /
  warmup_steps."""
  per_step = step_rates(2, 2, 1, learning_rate=1e-3, warmup_steps=10, decay_steps=1000,
                        final_lr_fraction=0.1)
  assert (per_step > 0).all(), per_step
  np.testing.assert_allclose(per_step, 1e-3 / 10, rtol=1e-5)


def test_nan_guard_names_step_and_checkpoint_and_keeps_the_last_good_one(world, run_a, tmp_path,
                                                                          monkeypatch):
  poisoned = []
  monkeypatch.setattr(verifiers, "score", lambda task, text, gold: float("nan") if poisoned
                      else tiny_world.probe_score(task, text, gold))
  d = tmp_path / "d"
  config = make_config(world, 4)
  with pytest.raises(FloatingPointError) as err:
    train(config, d, on_step=lambda step, m: poisoned.append(step) if step == 2 else None)
  message = str(err.value)
  assert message.startswith("step 3: non-finite ["), message
  assert "'reward'" in message, message
  assert f"{d / 'checkpoints'} (step 2)" in message, message
  assert [r["step"] for r in metrics_rows(d)] == [1, 2]  # the bad step is not logged
  params, step, stamp = trained_teacher_params(Setup(config), d)  # eval's loader
  assert step == 2 and stamp.startswith("checkpoint 2, committed at "), stamp
  import jax
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
  assert_same_state(saved_state(d, 2), saved_state(run_a, 2))


@pytest.mark.parametrize("field, value", [("ppo.advantage", "foo"), ("rollout.top_p", 0.0),
                                          ("ppo.num_minibatches", 3),
                                          ("task.name", "gsm9k")])
def test_config_error_names_the_field(world, tmp_path, field, value):
  config = make_config(world, 4)
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(ValueError, match=re.escape(f"config.{field}")):
    train(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists()  # raised before anything was built


# ------------------------------------------------------------- learning: the magic-word world

STEPS = 30  # PPO steps allowed to find the magic phrase


@pytest.fixture(scope="module")
def magic_world(tmp_path_factory):
  folder = tmp_path_factory.mktemp("magic")
  world = tiny_world.make_magic(folder)
  config = tiny_world.config(world, folder / "unused")
  questions = tiny_world.magic_questions()
  tiny_world.use_gsm8k_files(config, folder, questions, questions[::2])
  config.data.teacher_prompt_len, config.data.student_suffix_len = 32, 16
  config.train.batch_size, config.train.num_steps = 16, STEPS
  config.train.checkpoint_every = STEPS
  config.optim.learning_rate, config.optim.warmup_steps = 1e-3, 1
  config.eval.batch_size = len(questions[::2])
  return config, world["checks"]


def test_magic_world_is_what_it_claims(magic_world):
  _, checks = magic_world
  assert checks["student_magic"] >= 0.95, checks   # right after " Use the magic word."
  assert checks["student_other"] == 1.0, checks    # "#### 0" after anything else
  probs = checks["teacher_phrase_probs"]           # each phrase about equally likely
  assert all(0.1 <= p <= 0.4 for p in probs) and sum(probs) >= 0.6, checks


@pytest.fixture(scope="module")
def magic_run(magic_world, tmp_path_factory):
  config, _ = magic_world
  workdir = tmp_path_factory.mktemp("magic_run")
  train(config, workdir)
  return config, workdir


def reward_curve(workdir: Path) -> list[float]:
  rows = metrics_rows(workdir)
  assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
  return [r["reward"] for r in rows]


def test_ppo_learns_the_magic_word(magic_run):
  _, workdir = magic_run
  rewards = reward_curve(workdir)
  print("PPO reward per step:", [round(r, 2) for r in rewards])
  assert len(rewards) == STEPS
  assert rewards[0] <= 0.5, rewards  # the untrained teacher picks the magic phrase ~1/4 of times
  assert np.mean(rewards[-5:]) >= 0.6, rewards
  assert np.mean(rewards[-5:]) >= np.mean(rewards[:3]) + 0.3, rewards


def test_grpo_learns_the_magic_word(magic_world, tmp_path):
  config, _ = magic_world
  config = config.copy_and_resolve_references()
  config.ppo.advantage, config.ppo.group_size = "group", 4
  config.train.batch_size = 4  # x 4 instructions per question: 16 rollouts per step
  train(config, tmp_path)
  rewards = reward_curve(tmp_path)
  print("GRPO reward per step:", [round(r, 2) for r in rewards])
  assert rewards[0] <= 0.5, rewards
  assert np.mean(rewards[-5:]) >= 0.6, rewards


def test_eval_table_after_training(magic_run):
  config, workdir = magic_run
  result = evaluate(config, workdir)
  [table] = result["tables"]
  rows = {r["source"][:3]: r for r in table["rows"]}
  assert list(rows) == ["(a)", "(b)", "(c)", "(d)"], table["rows"]
  assert rows["(d)"]["source"] == f"(d) WST teacher (step {STEPS})"
  n = config.task.eval_size
  assert all(r["n"] == n for r in rows.values())
  out = workdir / "eval"
  assert json.loads((out / "results.json").read_text())["tables"] == result["tables"]
  assert len((out / "table.csv").read_text().strip().splitlines()) == 1 + 4
  assert (out / "table.md").read_text().strip() == result["markdown"]
  # No instruction and the human one get "#### 0" (always wrong here); the trained teacher beats
  # the untrained one.
  assert rows["(a)"]["mean"] == 0.0 and rows["(b)"]["mean"] == 0.0
  assert rows["(c)"]["mean"] < 0.5
  assert rows["(d)"]["mean"] >= rows["(c)"]["mean"] + 0.3, result["markdown"]
  # Every row's answers are recorded per question; the paired comparison reads them.
  records = {r["source"][:3]: Path(r["record"]) for r in table["rows"]}
  for key, path in records.items():
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["index"] for r in lines) == list(range(n))
    assert np.mean([r["reward"] for r in lines]) == pytest.approx(rows[key]["mean"], abs=1e-6)
  paired = table["paired"][f"{rows['(d)']['source']} vs {rows['(a)']['source']}"]
  assert paired["diff"] == pytest.approx(rows["(d)"]["mean"], abs=1e-6)
  assert paired["only_second_right"] == 0
  # (a) is always wrong: a row's win rate against it is its accuracy (a tie counts half).
  assert rows["(a)"]["win_vs_alone"] == 0.5
  assert rows["(d)"]["win_vs_alone"] == pytest.approx(0.5 + rows["(d)"]["mean"] / 2)
  assert 0.0 <= paired["length_controlled"]["matched_n"] <= n
  assert "at equal answer length" in result["markdown"]
  samples = (out / "samples.md").read_text()
  assert all(r["source"] in samples for r in table["rows"]) and "## Question 0" in samples


def test_eval_resumes_from_its_records(magic_run):
  """Complete records are read back with nothing sampled or answered; a crash mid-row (half the
  questions recorded, the last line cut) costs only the rest; a record from another run is an
  error, not silently mixed in."""
  from wst_jax import eval as wst_eval
  config, workdir = magic_run
  first = evaluate(config, workdir)
  [table] = first["tables"]
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(wst_eval, "make_instruction_step", lambda *a, **k: pytest.fail("sampled again"))
    assert evaluate(config, workdir)["tables"][0]["rows"] == table["rows"]
  path = Path(next(r["record"] for r in table["rows"] if r["source"].startswith("(d)")))
  lines = path.read_text().splitlines(keepends=True)
  path.write_text("".join(lines[:len(lines) // 2]) + lines[len(lines) // 2][:10])
  again = evaluate(config, workdir)
  assert again["tables"][0]["rows"] == table["rows"]
  assert sorted(path.read_text().splitlines()) == sorted(line.rstrip("\n") for line in lines)
  row = json.loads(lines[0])
  path.write_text(json.dumps(dict(row, instruction=row["instruction"] + " changed")) + "\n")
  with pytest.raises(ValueError, match="belongs to another run"):
    evaluate(config, workdir)


def test_eval_answers_a_teacher_trained_again_afresh(magic_run, tmp_path):
  """Row (d)'s records are keyed by the checkpoint's save, not only its step: a copied run
  resumes them, a run whose step-STEPS checkpoint was written again (here: the untrained teacher)
  is answered afresh, and its row (d) then scores what row (c) scores."""
  from wst_jax.optim import optimizer
  config, workdir = magic_run
  run, copy = tmp_path / "run", tmp_path / "copy"
  shutil.copytree(workdir, run, ignore=shutil.ignore_patterns("eval"))   # records of its own
  first = evaluate(config, run)["tables"][0]["rows"]
  shutil.copytree(run, copy)
  assert evaluate(config, copy)["tables"][0]["rows"] == [
      dict(r, record=r["record"].replace(str(run), str(copy))) for r in first]
  shutil.rmtree(copy / "checkpoints")
  setup = Setup(config)
  state, _ = experiment.init_state(setup, optimizer(config))
  mngr = experiment.checkpoint_manager(copy, config)
  mngr.save(STEPS, args=ocp.args.StandardSave(state._replace(step=jax.numpy.int32(STEPS))))
  mngr.wait_until_finished()
  again = {r["source"][:3]: r for r in evaluate(config, copy, setup)["tables"][0]["rows"]}
  before = {r["source"][:3]: r for r in first}
  assert again["(d)"]["source"] == before["(d)"]["source"]   # same name, same step
  assert again["(d)"]["record"] != before["(d)"]["record"].replace(str(run), str(copy))
  assert again["(d)"]["mean"] == again["(c)"]["mean"] < before["(d)"]["mean"]


def test_curves_plot_a_runs_metrics(magic_run, tmp_path):
  from wst_jax import curves
  _, workdir = magic_run
  curves.main(["curves", str(workdir), "--out", str(tmp_path / "out"), "--window", "3"])
  assert (tmp_path / "out" / "metrics.jsonl").read_text() == (workdir / "metrics.jsonl").read_text()
  assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert curves.moving_average([1.0, 2.0, 3.0, 4.0], 3) == [1.0, 1.5, 2.0, 3.0]
  with pytest.raises(SystemExit) as exit_:
    curves.main(["curves", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
  assert exit_.value.code == 2
