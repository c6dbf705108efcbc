"""Greedy decode throughput: our jitted `wst_jax.sampling.generate` vs transformers (PyTorch)
`generate`, on the same random GPT-2-shaped checkpoint, f32, on this machine's CPU (or default
JAX device).

Both decode batch 8 x prompt 128 -> 64 new tokens (no stop token, so every row produces all 64),
must produce identical tokens, and are timed as the median of several runs after a warm-up
(runs interleaved, so background load hits both alike). Our compile time is reported separately.
torch uses as many intra-op threads as there are CPU cores (JAX's CPU backend uses all cores);
that is the headline `hf_tok_s` / `ratio`. Because torch's multi-threaded CPU kernels degrade
sharply when the machine is oversubscribed (other jobs on the cores), HF with one thread is also
timed and reported as `hf_1thread_tok_s` / `ratio_vs_hf_1thread` (informational, not checked).

    python benchmarks/decode.py [--runs 5] [--min-ratio 2.0] [--out benchmarks/decode.json]

Exits non-zero when the tokens differ or when ours/HF tokens-per-second is below --min-ratio.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).parents[1]))
from wst_jax import checkpoints  # noqa: E402
from wst_jax.sampling import generate  # noqa: E402

CONFIG = dict(model_type="gpt2", n_embd=256, n_layer=4, n_head=8, vocab_size=8192,
              n_positions=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--prompt", type=int, default=128)
  parser.add_argument("--new", type=int, default=64)
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--threads", type=int, default=os.cpu_count(),
                      help="torch intra-op threads (default: the CPU count)")
  parser.add_argument("--min-ratio", type=float, default=2.0)
  parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
  args = parser.parse_args()
  if args.runs < 3:
    parser.error("--runs must be at least 3")
  torch.set_num_threads(args.threads)

  # One random checkpoint on disk, read by both.
  torch.manual_seed(0)
  folder = Path(tempfile.mkdtemp()) / "gpt2"
  hf_cfg = transformers.GPT2Config(**{k: v for k, v in CONFIG.items() if k != "model_type"})
  transformers.GPT2LMHeadModel(hf_cfg).save_pretrained(folder)
  hf = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
  ours = checkpoints.load_decoder(folder)

  rng = np.random.default_rng(0)
  ids = rng.integers(3, CONFIG["vocab_size"], (args.batch, args.prompt)).astype(np.int32)
  mask = np.ones_like(ids, bool)
  new = args.new

  # Ours: compile once (timed separately), then time the compiled call.
  def decode(model, prompt, prompt_mask):
    return generate(model, prompt, prompt_mask, jax.random.key(0), max_new_tokens=new,
                    eos_ids=(), pad_id=CONFIG["pad_token_id"], greedy=True).tokens

  t0 = time.perf_counter()
  compiled = jax.jit(decode).lower(ours, ids, mask).compile()
  compile_s = time.perf_counter() - t0
  prompt_dev, mask_dev = jnp.asarray(ids), jnp.asarray(mask)

  def run_ours():
    return np.asarray(jax.block_until_ready(compiled(ours, prompt_dev, mask_dev)))

  ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

  def run_hf():
    with torch.inference_mode():
      out = hf.generate(ids_t, attention_mask=mask_t, do_sample=False, min_new_tokens=new,
                        max_new_tokens=new, eos_token_id=None,
                        pad_token_id=CONFIG["pad_token_id"])
    return out[:, args.prompt:].numpy()

  ours_tokens, hf_tokens = run_ours(), run_hf()  # warm-up
  if ours_tokens.shape != hf_tokens.shape or not np.array_equal(ours_tokens, hf_tokens):
    bad = np.argwhere(ours_tokens != hf_tokens) if ours_tokens.shape == hf_tokens.shape else None
    sys.exit(f"FAIL: our greedy tokens differ from transformers' (shapes {ours_tokens.shape} vs "
             f"{hf_tokens.shape}; first differing [row, step]: "
             f"{None if bad is None or not len(bad) else bad[0].tolist()}).")

  def run_hf_1thread():
    torch.set_num_threads(1)
    try:
      return run_hf()
    finally:
      torch.set_num_threads(args.threads)

  run_hf_1thread()  # warm-up at this thread count
  times = {"ours": [], "hf": [], "hf_1thread": []}
  for _ in range(args.runs):  # interleaved
    for name, fn in [("ours", run_ours), ("hf", run_hf), ("hf_1thread", run_hf_1thread)]:
      t0 = time.perf_counter()
      tokens = fn()
      times[name].append(time.perf_counter() - t0)
      if not np.array_equal(tokens, hf_tokens):
        sys.exit(f"FAIL: {name} produced different tokens on a timed run.")

  n_tokens = args.batch * new
  ours_tok_s = n_tokens / statistics.median(times["ours"])
  hf_tok_s = n_tokens / statistics.median(times["hf"])
  ratio = ours_tok_s / hf_tok_s
  hf1_tok_s = n_tokens / statistics.median(times["hf_1thread"])
  device = jax.devices()[0]
  result = dict(
      ours_tok_s=round(ours_tok_s, 1), hf_tok_s=round(hf_tok_s, 1), ratio=round(ratio, 3),
      compile_s=round(compile_s, 2),
      hf_1thread_tok_s=round(hf1_tok_s, 1), ratio_vs_hf_1thread=round(ours_tok_s / hf1_tok_s, 3),
      device=f"{device.platform}: {device.device_kind}; {platform.processor() or platform.machine()}"
             f", {os.cpu_count()} CPU cores",
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      config=dict(CONFIG, batch=args.batch, prompt_len=args.prompt, new_tokens=new,
                  dtype="float32", greedy=True, runs=args.runs, statistic="median after warm-up"),
      torch_threads=torch.get_num_threads(), jax_version=jax.__version__,
      torch_version=torch.__version__, transformers_version=transformers.__version__,
      times_s={k: [round(t, 4) for t in v] for k, v in times.items()},
      load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
  Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  print(f"ours: {ours_tok_s:9.1f} new tokens/s  (compile {compile_s:.2f} s, not included)")
  print(f"HF:   {hf_tok_s:9.1f} new tokens/s  (torch threads {torch.get_num_threads()})")
  print(f"HF:   {hf1_tok_s:9.1f} new tokens/s  (torch threads 1, informational: "
        f"ratio {ours_tok_s / hf1_tok_s:.2f})")
  print(f"ratio ours/HF: {ratio:.2f}  (min {args.min_ratio})  -> {args.out}")
  if ratio < args.min_ratio:
    sys.exit(f"FAIL: ours/HF decode throughput ratio {ratio:.2f} is below --min-ratio "
             f"{args.min_ratio}.")


if __name__ == "__main__":
  main()
