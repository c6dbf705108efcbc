"""Greedy decode on real checkpoints: our jitted `wst_jax.sampling.generate` vs transformers
(PyTorch) `generate`, in f32 and in bf16 on both sides, on this machine's CPU, for each zoo model,
dtype and batch size in one run.

Each case decodes `batch` GSM8K test questions as chat prompts, left-padded to --prompt tokens,
then --new tokens forced (no stop token, so every row produces all of them). In f32 both sides
must produce identical tokens (on every run); in bf16 the two round differently (ours accumulates
every matmul in f32), so the share of identical tokens is reported instead. Times are the best of
--runs after a warm-up, the runs
interleaved so that background load hits both alike. Our compile time (trace + lower + compile)
is reported separately. torch uses --threads intra-op threads (JAX's CPU backend uses all cores).

Per step we report our milliseconds (wall time / new tokens, the prefill included) next to the
weight-read floor: the bytes of every weight read once per step (the embedding only when tied,
as the LM head) over this machine's read bandwidth, measured here with a large numpy reduction.
`floor_kv_ms` adds the mean KV-cache bytes read per step. Peak memory is XLA's buffer assignment
of our compiled generate (arguments + outputs + temporaries, less donated aliases).

    python benchmarks/decode_real.py [--models ...] [--batches 1 16 64] [--dtypes ...] [--runs 1]

Targets (batch 16, f32): ours >= 2.0x transformers on SmolLM2-135M and >= 1.5x on Qwen2.5-0.5B, a step
within 1.5x of the weight-read floor, compile <= 10 s. The JSON records each as met or not; the
exit status is non-zero when the tokens differ or a target measured in this run is missed.
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

sys.path.insert(0, str(Path(__file__).parents[1]))
from wst_jax import checkpoints, zoo  # noqa: E402
from wst_jax.data import assets, batches  # noqa: E402
from wst_jax.sampling import generate  # noqa: E402

MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
# Batch-16 targets: the minimum ratio ours / transformers per model; the rest apply to both.
MIN_RATIO = {"smollm2-135m-instruct": 2.0, "qwen2.5-coder-0.5b-instruct": 1.5}
TARGET_BATCH, MAX_FLOOR_FACTOR, MAX_COMPILE_S = 16, 1.5, 10.0


def read_bandwidth_gb_s(runs=5) -> float:
  """Best-of-`runs` bytes/s of summing a 1 GiB f32 array (far beyond the caches), one part per
  CPU core in parallel threads (numpy releases the GIL), as XLA reads with every core."""
  parts = np.array_split(np.ones(1 << 28, np.float32), os.cpu_count())
  with concurrent.futures.ThreadPoolExecutor(len(parts)) as pool:
    read_all = lambda: list(pool.map(np.sum, parts))
    best = min(_timed(read_all)[1] for _ in range(runs))
  return sum(p.nbytes for p in parts) / best / 1e9


def _timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def prompts(tokenizer, batch: int, length: int, pad_id: int):
  """The first `batch` GSM8K test questions (of those that fit in `length` tokens) as chat
  prompts: left-padded ids int32[batch, length], mask bool[batch, length]."""
  rows = []
  with open(assets.locate("gsm8k/test.jsonl")) as f:
    for line in f:
      ids = batches.user_turn_ids(tokenizer, json.loads(line)["question"])
      if len(ids) <= length:
        rows.append(ids)
      if len(rows) == batch:
        break
  return batches.left_pad(rows, length, pad_id, "prompt")


def run_model(name, args, bandwidth):
  """-> {dtype: {"weight_mb", "cases": [one per batch]}} for one zoo model."""
  folder = zoo.fetch(name)
  tokenizer = checkpoints.load_tokenizer(folder)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  out = {}
  for dtype in args.dtypes:
    ours = checkpoints.load_decoder(folder, dtype=dtype, param_dtype=dtype)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=getattr(torch, dtype), local_files_only=True).eval()
    out[dtype] = run_dtype(ours, hf, tokenizer, pad_id, args, bandwidth, f"{name} {dtype}")
    del ours, hf
  return out


def run_dtype(ours, hf, tokenizer, pad_id, args, bandwidth, label):
  cfg, new = ours.cfg, args.new
  exact = cfg.compute_dtype == jnp.float32  # bf16: the two sides round differently
  # Each weight is read once per step, the embedding only when tied (as the LM head): a step
  # gathers just B of its rows.
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
  if not cfg.tie_word_embeddings:
    weight_bytes -= ours.embed[...].nbytes
  floor_ms = 1e3 * weight_bytes / bandwidth

  def decode(model, prompt, prompt_mask):
    return generate(model, prompt, prompt_mask, jax.random.key(0), max_new_tokens=new,
                    eos_ids=(), pad_id=pad_id, greedy=True).tokens

  cases = []
  for batch in args.batches:
    ids, mask = prompts(tokenizer, batch, args.prompt, pad_id)
    compiled, compile_s = _timed(lambda: jax.jit(decode).lower(ours, ids, mask).compile())
    mem = compiled.memory_analysis()
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
    prompt_dev, mask_dev = jnp.asarray(ids), jnp.asarray(mask)
    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def run_ours():
      return np.asarray(jax.block_until_ready(compiled(ours, prompt_dev, mask_dev)))

    def run_hf():
      with torch.inference_mode():
        out = hf.generate(ids_t, attention_mask=mask_t, do_sample=False, min_new_tokens=new,
                          max_new_tokens=new, eos_token_id=None, pad_token_id=pad_id)
      return out[:, args.prompt:].numpy()

    (ours_tokens, first_s), hf_tokens = _timed(run_ours), run_hf()  # warm-up
    same = ours_tokens.shape == hf_tokens.shape and np.array_equal(ours_tokens, hf_tokens)
    times = {"ours": [], "hf": []}
    for _ in range(args.runs if same or not exact else 0):  # interleaved
      for side, fn in [("ours", run_ours), ("hf", run_hf)]:
        tokens, seconds = _timed(fn)
        if exact:
          same &= np.array_equal(tokens, hf_tokens)
        times[side].append(seconds)
    case = dict(batch=batch, same_tokens=bool(same),
                identical_token_share=round(float(np.mean(ours_tokens == hf_tokens)), 4),
                compile_s=round(compile_s, 2), first_run_s=round(first_s, 2),
                peak_memory_mb=round(peak / 2**20),
                times_s={k: [round(t, 3) for t in v] for k, v in times.items()},
                load_average=[round(x, 2) for x in os.getloadavg()])
    if times["ours"]:
      ours_tok_s, hf_tok_s = (batch * new / min(times[k]) for k in ("ours", "hf"))
      kv_bytes = (2 * cfg.num_layers * batch * cfg.num_kv_heads * cfg.head_dim
                  * (args.prompt + new / 2) * jnp.dtype(cfg.compute_dtype).itemsize)
      case.update(ours_tok_s=round(ours_tok_s, 1), hf_tok_s=round(hf_tok_s, 1),
                  ratio=round(ours_tok_s / hf_tok_s, 3),
                  step_ms=round(1e3 * min(times["ours"]) / new, 1), floor_ms=round(floor_ms, 1),
                  floor_kv_ms=round(1e3 * (weight_bytes + kv_bytes) / bandwidth, 1))
    cases.append(case)
    print(f"{label} batch {batch}: " + ", ".join(f"{k} {v}" for k, v in case.items()
                                                  if k != "times_s"), flush=True)
  return dict(weight_mb=round(weight_bytes / 2**20), cases=cases)


def targets(models: dict) -> dict:
  """Each batch-16 target measured in this run -> dict(value, limit, met)."""
  out = {}
  for name, by_dtype in models.items():
    if "float32" not in by_dtype:
      continue
    case = next((c for c in by_dtype["float32"]["cases"] if c["batch"] == TARGET_BATCH), None)
    if case is None:
      continue
    out[f"{name}: same tokens"] = dict(value=case["same_tokens"], met=case["same_tokens"])
    if case["same_tokens"]:
      out[f"{name}: ratio"] = dict(value=case["ratio"], limit=f">= {MIN_RATIO[name]}",
                                   met=case["ratio"] >= MIN_RATIO[name])
      factor = case["step_ms"] / case["floor_ms"]
      out[f"{name}: step / floor"] = dict(value=round(factor, 2), limit=f"<= {MAX_FLOOR_FACTOR}",
                                          met=factor <= MAX_FLOOR_FACTOR)
    out[f"{name}: compile s"] = dict(value=case["compile_s"], limit=f"<= {MAX_COMPILE_S}",
                                     met=case["compile_s"] <= MAX_COMPILE_S)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
  parser.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                      choices=["float32", "bfloat16"])
  parser.add_argument("--prompt", type=int, default=140)
  parser.add_argument("--new", type=int, default=128)
  parser.add_argument("--runs", type=int, default=1)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  bandwidth = read_bandwidth_gb_s() * 1e9
  print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s, load {os.getloadavg()}", flush=True)
  models = {}
  for name in args.models:  # the JSON is rewritten after each model: a long run keeps its part
    models[name] = run_model(name, args, bandwidth)
    checked, result = write(models, args, bandwidth)
  for key, t in checked.items():
    print(f"{'met   ' if t['met'] else 'MISSED'} {key}: {t['value']} {t.get('limit', '')}")
  print(f"-> {args.out}")
  if not result["all_targets_met"]:
    sys.exit("FAIL: tokens differ or a target is missed (see above).")


def write(models: dict, args, bandwidth: float):
  """Writes the JSON of `models` measured so far -> (targets, result)."""
  checked = targets(models)
  device = jax.devices()[0]
  result = dict(
      targets=checked, all_targets_met=all(t["met"] for t in checked.values()),
      models_done=list(models), models_asked=args.models, models=models,
      read_bandwidth_gb_s=round(bandwidth / 1e9, 1),
      device=f"{device.platform}: {device.device_kind}; {platform.processor() or platform.machine()}"
             f", {os.cpu_count()} CPU cores",
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      config=dict(prompt_len=args.prompt, new_tokens=args.new, dtypes=args.dtypes, greedy=True,
                  runs=args.runs, statistic="best of runs after warm-up",
                  torch_threads=torch.get_num_threads()),
      jax_version=jax.__version__, torch_version=torch.__version__,
      transformers_version=transformers.__version__)
  Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  return checked, result


if __name__ == "__main__":
  main()
