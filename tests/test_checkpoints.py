"""Streaming checkpoint loading onto a mesh, on 8 simulated CPU devices: every weight lands in the
sharding of its logical axes, each device's block is read on its own (never the whole tensor of
a sharded weight), and the values equal the plain single-device load.

The 8 devices need XLA_FLAGS=--xla_force_host_platform_device_count=8 before JAX starts, so the
loads run in a subprocess: this file is its own worker (`python tests/test_checkpoints.py DIR`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if __name__ == "__main__":  # worker: make the repo and tests/ importable
  sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import tiny_world
from wst_jax import checkpoints
from wst_jax.models import Decoder

MESH = {"data": 2, "fsdp": 2, "model": 2}
VOCAB = 96


def make_folders(root: Path) -> None:
  """root/gpt2 (fused q/k/v) in one file; root/llama (GQA, untied head) split over two files
  with an index; root/reward_model, a llama reward model (`score.weight`, no LM head)."""
  for family in ("gpt2", "llama"):
    cfg = tiny_world.decoder_config(family, VOCAB, 64, 2)
    if family == "llama":
      cfg = cfg.replace(tie_word_embeddings=False, intermediate_size=128)
    checkpoints.save_decoder(Decoder(cfg, rngs=nnx.Rngs(1)), root / family)
  llama = root / "llama"
  tensors = load_file(llama / "model.safetensors")
  rm = root / "reward_model"
  rm.mkdir()
  (rm / "config.json").write_text((llama / "config.json").read_text())
  score = np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32)
  save_file({**{k: v for k, v in tensors.items() if k != "lm_head.weight"}, "score.weight": score},
            rm / "model.safetensors")
  keys = sorted(tensors)
  parts = {f"model-0000{i + 1}-of-00002.safetensors": keys[i::2] for i in range(2)}
  for name, part in parts.items():
    save_file({k: tensors[k] for k in part}, llama / name)
  (llama / "model.safetensors").unlink()
  (llama / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {k: name for name, part in parts.items() for k in part}}))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
  root = tmp_path_factory.mktemp("ckpt")
  make_folders(root)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, __file__, str(root)], env=env, capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
  return json.loads((root / "results.json").read_text())


@pytest.mark.parametrize("name", ["gpt2", "llama", "reward_model"])
def test_sharded_load_equals_single_device_load(loaded, name):
  params = loaded[name]
  assert params and all(p["equal"] for p in params.values()), \
      [k for k, p in params.items() if not p["equal"]]
  assert all(p["single_device"] for p in params.values())  # the plain load: one device
  for path, p in params.items():
    assert p["spec"] == p["expected_spec"], path
    shard = [-(-n // int(np.prod([MESH[a] for a in ([s] if isinstance(s, str) else s or [])])))
             for n, s in zip(p["shape"], p["spec"])]
    assert p["shard_shapes"] == [shard] * 8, path
    # Each distinct block was read once, at its own size: replicas over "data" share a read and
    # no device of a sharded weight ever received the whole tensor.
    assert sorted(p["reads"]) == sorted([shard] * p["distinct_blocks"]), path


def test_weights_really_are_split(loaded):
  llama, gpt2 = loaded["llama"], loaded["gpt2"]
  up = llama["layers.0.mlp.up.kernel"]           # [embed 64, mlp 128]
  assert up["spec"] == ["fsdp", "model"] and up["shard_shapes"][0] == [32, 64]
  assert up["distinct_blocks"] == 4 and len(up["reads"]) == 4  # 8 devices, 2 replicas each
  assert llama["embed"]["spec"] == ["model", "fsdp"]            # [vocab, embed]
  assert llama["lm_head"]["spec"] == ["model", "fsdp"]          # [vocab, embed], as HF's
  assert llama["layers.1.attn_norm.scale"]["spec"] == ["fsdp"]
  q = gpt2["layers.0.attn.q.kernel"]  # a third of the fused c_attn [64, 192]
  assert q["spec"] == ["fsdp", "model"] and q["shard_shapes"][0] == [32, 32]
  assert gpt2["layers.0.attn.v.bias"]["spec"] == ["model"]
  assert loaded["reward_model"]["head.kernel"]["spec"] == ["fsdp", None]


# -------------------------------------------------------------------------------------- worker


def _spec(spec, ndim: int) -> list:
  """PartitionSpec -> JSON: one entry per dim (None, an axis name or a list of names)."""
  spec = list(spec) + [None] * (ndim - len(spec))
  return [a if a is None or isinstance(a, str) else list(a) for a in spec]


def worker(root: Path) -> None:
  import jax

  from wst_jax import sharding
  assert jax.device_count() == 8, jax.devices()
  mesh = sharding.make_mesh(MESH)
  # The blocks read for each placed array (make_array_from_callback reads while it places).
  reads, current = {}, []
  real_read, real_place = checkpoints._read_block, checkpoints._place

  def logged_read(*args):
    block = real_read(*args)
    current.append(list(block.shape))
    return block

  def logged_place(*args):
    current.clear()
    array = real_place(*args)
    reads[id(array)] = list(current)
    return array

  checkpoints._read_block, checkpoints._place = logged_read, logged_place
  loaders = {"gpt2": checkpoints.load_decoder, "llama": checkpoints.load_decoder,
             "reward_model": checkpoints.load_reward_model}
  results = {}
  for name, load in loaders.items():
    plain = checkpoints._param_paths(load(root / name))
    results[name] = {}
    for path, var in checkpoints._param_paths(load(root / name, mesh=mesh)).items():
      arr, ref = var.get_value(), plain[path].get_value()
      results[name][path] = {
          "shape": list(arr.shape),
          "spec": _spec(arr.sharding.spec, arr.ndim),
          "expected_spec": _spec(sharding.variable_sharding(var, mesh).spec, arr.ndim),
          "shard_shapes": [list(s.data.shape) for s in arr.addressable_shards],
          "distinct_blocks": len({str(s.index) for s in arr.addressable_shards}),
          "reads": reads[id(arr)],
          "equal": bool(arr.dtype == ref.dtype
                        and np.array_equal(np.asarray(arr), np.asarray(ref))),
          "single_device": len(ref.sharding.device_set) == 1}
  (root / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
  worker(Path(sys.argv[1]))
