"""wst_jax.plan: per-device memory from abstract shapes, checked by hand on a tiny config."""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from configs import common
from wst_jax import checkpoints, experiment, plan

REPO = Path(__file__).resolve().parent.parent

# Hand-countable models given as HF config.json fields (config.plan), no folders on disk.
TEACHER = dict(model_type="llama", vocab_size=16, hidden_size=8, intermediate_size=16,
               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
               tie_word_embeddings=False)
STUDENT = dict(model_type="llama", vocab_size=16, hidden_size=16, intermediate_size=32,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=4,
               tie_word_embeddings=True)

# Parameters, counted by hand.
# teacher: embed 16*8=128; layer: 2 norms 8+8, q 8*8=64, k 8*4=32, v 32, o 64, gate 8*16=128,
#   up 128, down 16*8=128 -> 592; final norm 8; lm_head 8*16=128 => 856; value head 8*1.
TEACHER_PARAMS, VALUE_HEAD = 856, 8
# student: embed 16*16=256 (tied); layer: norms 32, q 256, k 16*8=128, v 128, o 256,
#   gate 16*32=512, up 512, down 512 -> 2336, x2 layers; final norm 16 => 4944.
STUDENT_PARAMS = 4944


def tiny_config(mesh=None, memory_gib=1.0):
  c = common.base_config()
  c.teacher.path, c.student.path = "/not/on/this/machine/t", "/not/on/this/machine/s"
  c.teacher.dtypes = dict(dtype="float32", param_dtype="float32")
  c.student.dtypes = dict(dtype="bfloat16", param_dtype="bfloat16")
  c.data.update(teacher_prompt_len=6, student_prefix_len=12, student_suffix_len=5)
  c.rollout.update(instruction_len=2, answer_len=3)
  c.train.batch_size = 4
  c.ppo.num_minibatches = 2
  c.mesh = mesh or dict(data=1, fsdp=1, model=1)
  c.plan = dict(device_memory_gib=memory_gib, teacher=TEACHER, student=STUDENT)
  return c


def items(p: plan.Plan) -> dict[str, plan.Item]:
  return {i.name: i for i in p.items}


def test_bytes_by_hand_on_one_device():
  p = plan.make_plan(tiny_config())
  it = items(p)
  assert p.mesh == {"data": 1, "fsdp": 1, "model": 1}
  f32, bf16 = 4, 2
  assert it["teacher params (+ value head)"].per_device == (TEACHER_PARAMS + VALUE_HEAD) * f32
  assert it["reference teacher params"].per_device == TEACHER_PARAMS * f32
  assert it["student params"].per_device == STUDENT_PARAMS * bf16
  # AdamW: mu and nu like the teacher (f32 here) plus two int32 step counts (adam, schedule).
  assert it["optimizer state (AdamW mu, nu)"].per_device == \
      2 * (TEACHER_PARAMS + VALUE_HEAD) * f32 + 2 * 4
  assert it["teacher gradients"].per_device == (TEACHER_PARAMS + VALUE_HEAD) * f32
  # KV: rows x tokens x layers x kv_heads x head_dim x (K, V) x compute bytes.
  assert it["KV cache: teacher sampling"].per_device == 4 * (6 + 2) * 1 * 1 * 4 * 2 * f32
  # Student prompt: a 12-token prefix + no instruction_sep + 2 instruction tokens (shared
  # vocabulary) + 5 question tokens, then 3 answer tokens.
  assert it["KV cache: student decoding"].per_device == 4 * (12 + 2 + 5 + 3) * 2 * 2 * 4 * 2 * bf16
  # One layer over the prompt: scores + probabilities [rows, heads, prompt, cache] (f32 + compute
  # dtype) and gate/up/product [rows, prompt, mlp] in the compute dtype.
  assert it["prompt forward: teacher (1 layer)"].per_device == \
      4 * 2 * 6 * 8 * (f32 + f32) + 4 * 6 * 16 * 3 * f32
  assert it["prompt forward: student (1 layer)"].per_device == \
      4 * 4 * 19 * 22 * (f32 + bf16) + 4 * 19 * 32 * 3 * bf16
  # Policy and reference: f32 logits [4 rows, 2 new tokens, 16] + 3 copies; the LM head runs
  # over the instruction tokens only.
  assert it["scoring logits: policy + reference"].per_device == 2 * 4 * (4 * 2 * 16) * f32
  resident = sum(i.per_device for i in p.items if i.phase == "resident")
  assert p.phase("resident") == resident and p.peak == resident + max(p.phases.values())
  assert all(i.total == i.per_device for i in p.items)  # one device holds everything
  assert p.fits and "fits" in plan.format_plan(p)


def test_activation_estimate_by_hand():
  # One layer, f32, T = 6 + 2, 2 rows per minibatch (4 rows / 2 minibatches).
  t, n, rows = 8, 2, 2
  d, h, q, kv, f, v = 8, 2, 8, 4, 16, 16
  per_layer = (2 * d * 4 + 2 * d * 4) + (2 * q * 4 + q * 4) + (4 * kv * 4 + kv * 4) \
      + h * t * (4 + 4) + 3 * f * 4
  head = 5 * n / t * v * 4   # logits, their gradient and 3 copies, over the new tokens only
  want = rows * t * (per_layer + head)
  got = items(plan.make_plan(tiny_config()))["PPO activations (teacher fwd/bwd)"]
  assert got.per_device == got.total == int(want)


def test_sharding_divides_bytes():
  one = items(plan.make_plan(tiny_config(), devices=1))
  # fsdp=4: every teacher weight has an "embed" axis of size 8 -> split 4 ways; rows too.
  four = plan.make_plan(tiny_config(dict(data=1, fsdp=4, model=1)))
  assert four.mesh == {"data": 1, "fsdp": 4, "model": 1}
  it = items(four)
  for name in ("teacher params (+ value head)", "reference teacher params", "student params",
               "teacher gradients", "KV cache: teacher sampling", "KV cache: student decoding",
               "prompt forward: student (1 layer)"):
    assert it[name].total == one[name].total, name
    assert it[name].per_device * 4 == one[name].per_device, name
  # A PPO minibatch has 2 rows: 4 batch shards cannot split it further than 1 row per device.
  acts = "PPO activations (teacher fwd/bwd)"
  assert it[acts].per_device * 2 == one[acts].per_device
  assert items(plan.make_plan(tiny_config(dict(data=2, fsdp=1, model=1))))[acts].per_device * 2 \
      == one[acts].per_device
  # fsdp=2 x model=2, counted by hand per leaf (vocab/heads/kv_heads/mlp over model, embed over
  # fsdp): embed 8x4=32, norms 3x4, q 4x4=16, k 4x2=8, v 8, o 16, gate/up/down 3x32, lm_head
  # 4x8=32, value head 4x1 -> 224 params; the total/4 would be 216 (norms and head only split 2).
  it = items(plan.make_plan(tiny_config(dict(data=1, fsdp=2, model=2))))
  assert it["teacher params (+ value head)"].per_device == 224 * 4
  # The teacher's single kv head does not divide over model=2: its cache splits over fsdp only.
  kv_t, kv_s = "KV cache: teacher sampling", "KV cache: student decoding"
  assert it[kv_t].per_device * 2 == one[kv_t].per_device
  # The student's 2 kv heads do: rows / 2 and heads / 2.
  assert it[kv_s].per_device * 4 == one[kv_s].per_device
  # data=2: params replicated over data, rows split.
  it = items(plan.make_plan(tiny_config(dict(data=2, fsdp=1, model=1))))
  assert it["student params"].per_device == one["student params"].per_device
  assert it[kv_s].per_device * 2 == one[kv_s].per_device


def test_device_count_from_flag_or_mesh():
  with pytest.raises(plan.PlanError, match="--devices"):
    plan.make_plan(tiny_config(dict(data=-1, fsdp=2, model=1)))
  assert plan.make_plan(tiny_config(dict(data=-1, fsdp=2, model=1)), devices=8).mesh == \
      {"data": 4, "fsdp": 2, "model": 1}
  with pytest.raises(ValueError, match="needs 4 devices"):
    plan.make_plan(tiny_config(dict(data=2, fsdp=2, model=1)), devices=8)


def test_refuses_what_does_not_fit():
  four = dict(data=1, fsdp=4, model=1)
  peak1, peak4 = plan.make_plan(tiny_config()).peak, plan.make_plan(tiny_config(four)).peak
  assert peak4 < peak1
  memory = (peak1 + peak4) / 2 / plan.USABLE_FRACTION / plan.GIB  # between the two peaks
  p = plan.make_plan(tiny_config(memory_gib=memory))
  assert not p.fits and p.peak > p.usable
  with pytest.raises(plan.PlanError) as err:
    plan.check_fits(p)
  msg = str(err.value)
  assert "does not fit" in msg and "config.mesh.fsdp" in msg and "config.train.batch_size" in msg
  # The same models and batch split over 4 devices fit in the same memory.
  plan.check_fits(plan.make_plan(tiny_config(four, memory_gib=memory)))


def test_reward_model_counted_when_used():
  c = tiny_config()
  assert "reward model params" not in items(plan.make_plan(c))
  c.reward.kind, c.reward.model_path = "reward_model", "/not/on/this/machine/rm"
  c.plan.reward_model = STUDENT
  it = items(plan.make_plan(c))
  # Loaded without dtype overrides (f32), plus a [16, 1] score head.
  assert it["reward model params"].per_device == (STUDENT_PARAMS + 16) * 4
  # Its forward over [rm prompt 256 + answer 3]: K/V of 2 layers + one layer's transient.
  t = 256 + 3
  assert it["reward model forward"].per_device == \
      4 * 2 * t * 4 * 2 * 2 * 4 + 4 * 4 * t * t * (4 + 4) + 4 * t * 32 * 3 * 4


def test_missing_model_shape_names_the_field():
  c = tiny_config()
  del c.plan["student"]
  with pytest.raises(plan.PlanError, match=r"config\.plan\.student"):
    plan.make_plan(c)


def test_reads_config_json_from_local_folders(tmp_path):
  from wst_jax.models import DecoderConfig
  for role, hf in (("teacher", TEACHER), ("student", STUDENT)):
    cfg = DecoderConfig.from_hf(hf)
    (tmp_path / role).mkdir()
    (tmp_path / role / "config.json").write_text(__import__("json").dumps(cfg.to_hf()))
  c = tiny_config()
  c.teacher.path, c.student.path = str(tmp_path / "teacher"), str(tmp_path / "student")
  c.plan = dict(device_memory_gib=1.0)  # no shapes inline: they come from the folders
  it = items(plan.make_plan(c))
  assert it["student params"].per_device == STUDENT_PARAMS * 2


CONFIG_FILE = """
from configs import common
def get_config():
  c = common.base_config()
  c.teacher.path, c.student.path = "/nowhere/t", "/nowhere/s"
  c.data.update(teacher_prompt_len=6, student_suffix_len=5)
  c.rollout.update(instruction_len=2, answer_len=3)
  c.train.batch_size = 4
  c.mesh = dict(data=1, fsdp=2, model=1)
  c.plan = dict(device_memory_gib=1.0, teacher={teacher!r}, student={student!r})
  return c
"""


def test_cli_prints_plan_and_exits_2_when_it_does_not_fit(tmp_path):
  path = tmp_path / "tiny_plan.py"
  path.write_text(CONFIG_FILE.format(teacher=TEACHER, student=STUDENT))
  run = lambda *args: subprocess.run([sys.executable, "-m", "wst_jax.plan", "--config", str(path),
                                      *args], cwd=REPO, capture_output=True, text=True,
                                     timeout=180)
  ok = run()
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert "mesh data=1, fsdp=2, model=1 (2 devices)" in ok.stdout and ": fits" in ok.stdout
  refused = run("--device_memory_gib", str(10_000 / plan.GIB))
  assert refused.returncode == 2, refused.stderr[-3000:]
  assert "does not fit" in refused.stderr and "config.mesh.fsdp" in refused.stderr


# ------------------------------------------------------------------ the check at the start of a run


def fake_mesh(bytes_limit, n=2):
  """A stand-in jax Mesh of n devices that report `bytes_limit` (None: no memory stats, as CPU)."""
  from types import SimpleNamespace
  stats = None if bytes_limit is None else {"bytes_limit": bytes_limit}
  devices = np.array([SimpleNamespace(process_index=0, platform="gpu", memory_stats=lambda: stats)
                      for _ in range(n)])
  return SimpleNamespace(devices=devices, size=n)


def test_run_check_uses_the_devices_memory_else_the_plan_block():
  c = tiny_config(dict(data=1, fsdp=2, model=1), memory_gib=1.0)
  paths = {"teacher": c.teacher.path, "student": c.student.path}
  peak = plan.make_plan(c).peak
  # The devices' own limit wins over config.plan.device_memory_gib, both ways.
  with pytest.raises(plan.PlanError, match=r"bytes_limit.*XLA_PYTHON_CLIENT_MEM_FRACTION"):
    plan.check_run(c, fake_mesh(peak), paths, training=True)  # 90% of the peak is usable
  tight = tiny_config(dict(data=1, fsdp=2, model=1), memory_gib=1e-6)
  assert plan.check_run(tight, fake_mesh(2 * peak), paths, training=True).fits
  # No memory stats: config.plan.device_memory_gib.
  with pytest.raises(plan.PlanError, match=r"config\.plan\.device_memory_gib"):
    plan.check_run(tight, fake_mesh(None), paths, training=True)
  assert plan.check_run(c, fake_mesh(None), paths, training=True).device_memory_gib == 1.0
  # Neither (CPU, no plan block): nothing to check against.
  bare = common.base_config()
  bare.mesh = dict(data=2, fsdp=1, model=1)
  assert plan.check_run(bare, fake_mesh(None), {}, training=True) is None


def test_only_a_training_run_counts_the_kl_reference(monkeypatch):
  """The reference is made by `Setup.training_frozen` alone; eval's setups only sample."""
  train, sample = plan.make_plan(tiny_config()), plan.make_plan(tiny_config(), training=False)
  assert set(items(train)) - set(items(sample)) == {"reference teacher params"}
  assert train.phase("resident") - sample.phase("resident") == TEACHER_PARAMS * 4   # f32
  assert train.peak - sample.peak == TEACHER_PARAMS * 4
  # Memory between the two peaks: a training Setup is refused, an eval one goes on to read.
  monkeypatch.setattr(checkpoints, "load_tokenizer", lambda path: pytest.fail(f"read {path}"))
  memory_gib = (train.peak + sample.peak) / 2 / plan.USABLE_FRACTION / plan.GIB
  between = tiny_config(memory_gib=memory_gib)
  with pytest.raises(plan.PlanError, match="does not fit"):
    experiment.Setup(between)
  with pytest.raises(pytest.fail.Exception, match="read /not/on/this/machine"):
    experiment.Setup(between, training=False)


def test_setup_refuses_a_config_that_does_not_fit_before_reading_anything(monkeypatch):
  def load_tokenizer(path):
    raise AssertionError(f"read {path}")

  monkeypatch.setattr(checkpoints, "load_tokenizer", load_tokenizer)
  with pytest.raises(plan.PlanError, match="does not fit") as err:
    experiment.Setup(tiny_config(memory_gib=1e-6))
  assert "config.mesh.fsdp" in str(err.value)
  # The same config with room passes the check and goes on to read the (absent) folders.
  with pytest.raises(AssertionError, match="read /not/on/this/machine"):
    experiment.Setup(tiny_config())


def test_a_setup_shares_only_the_same_student(monkeypatch):
  monkeypatch.setattr(checkpoints, "load_tokenizer", lambda path: pytest.fail(f"read {path}"))
  other = tiny_config()
  other.student.path = "/not/on/this/machine/another-student"
  with pytest.raises(ValueError, match=r"config\.student differs"):
    experiment.Setup(tiny_config(), student_from=types.SimpleNamespace(config=other))
