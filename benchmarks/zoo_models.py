"""Each zoo model through our loader: load time, peak memory, parity with transformers.

    python benchmarks/zoo_models.py [NAME ...]   # default: every zoo model -> zoo_models.json

Each model runs in a fresh process (peak RSS is per process), in this order:
  1. `zoo.fetch` (download + convert on first use; cached afterwards);
  2. our decoder from the converted folder, then (that one dropped) from the GGUF file directly
     (time, peak RSS); the parity below uses the latter;
  3. transformers' model from the same GGUF file (f32), logits on 4 chat-templated GSM8K
     prompts (max |delta| against the logit scale) and 32 greedy tokens from each side.
This is the measurement the real-weight tests (tests/test_real_models.py) assert on; it also covers
Qwen2.5-Coder-1.5B, which CI leaves out.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

NEW_TOKENS = 32
NUM_PROMPTS = 4


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # ru_maxrss is KiB on Linux


def measure(name: str) -> dict:
  import jax
  import numpy as np
  import torch
  import transformers

  from wst_jax import checkpoints, zoo
  from wst_jax.data import assets, batches, tasks
  from wst_jax.models import positions_from_mask
  from wst_jax.sampling import generate

  out = {"model": name, "date": time.strftime("%Y-%m-%d")}
  t = time.perf_counter()
  folder, gguf = zoo.fetch(name), zoo.gguf_path(name)
  out["fetch_s"] = time.perf_counter() - t
  t = time.perf_counter()
  ours = checkpoints.load_decoder(folder)
  out["load_folder_s"] = time.perf_counter() - t
  out["peak_rss_gb_after_folder_load"] = peak_rss_gb()
  del ours   # one copy at a time; the tests check that both loads give the same weights
  t = time.perf_counter()
  ours = checkpoints.load_decoder(gguf)
  out["load_gguf_s"] = time.perf_counter() - t
  out["peak_rss_gb_after_gguf_load"] = peak_rss_gb()
  tokenizer = checkpoints.load_tokenizer(folder)

  questions = [e["question"] for e in tasks.read_task(
      "gsm8k", assets.resolve("assets:gsm8k/test.jsonl"), split="test")[:NUM_PROMPTS]]
  rows = [batches.user_turn_ids(tokenizer, q) for q in questions]
  ids, mask = batches.left_pad(rows, max(map(len, rows)), 0, "prompt")

  # Ours first, then transformers': one model in memory at a time (the 1.5B is 7 GB in f32).
  logits = np.asarray(jax.jit(lambda m, i, k: m(i, positions_from_mask(k), k)[0])(ours, ids, mask))
  eos = ours.cfg.eos_token_id
  t = time.perf_counter()
  tokens = np.asarray(jax.jit(lambda m, i, k: generate(
      m, i, k, jax.random.PRNGKey(0), max_new_tokens=NEW_TOKENS, eos_ids=eos, pad_id=0).tokens)(
          ours, ids, mask))
  out["our_generate_first_call_s"] = time.perf_counter() - t
  del ours
  t = time.perf_counter()
  hf = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                         dtype=torch.float32).eval()
  out["transformers_load_s"] = time.perf_counter() - t
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids, dtype=torch.long),
             attention_mask=torch.tensor(mask, dtype=torch.long),
             position_ids=torch.tensor(positions, dtype=torch.long)).logits.numpy()
    ref_tokens = hf.generate(torch.tensor(ids, dtype=torch.long),
                             attention_mask=torch.tensor(mask, dtype=torch.long),
                             max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=list(eos),
                             pad_token_id=0).numpy()[:, ids.shape[1]:]
  out["max_abs_logit_delta"] = float(np.abs(logits[mask] - ref[mask]).max())
  out["logit_scale"] = float(np.abs(ref[mask]).max())
  ref_tokens = np.pad(ref_tokens, ((0, 0), (0, NEW_TOKENS - ref_tokens.shape[1])))
  out["greedy_identical"] = bool((tokens == ref_tokens).all())
  out["sample"] = tokenizer.decode(tokens[0][tokens[0] != 0], skip_special_tokens=True)
  out["peak_rss_gb"] = peak_rss_gb()
  return out


def main(names: list[str]) -> None:
  from wst_jax import zoo
  names = names or list(zoo.REGISTRY)
  out = Path(__file__).with_name("zoo_models.json")
  for name in names:   # a fresh process each: peak RSS is the model's own
    done = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True,
                          text=True)
    if done.returncode != 0:
      raise RuntimeError(f"{name}: failed (exit code {done.returncode})\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    # Written after each model; models measured earlier keep their entries (each has its date).
    kept = json.loads(out.read_text())["results"] if out.is_file() else []
    out.write_text(json.dumps({
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "results": [r for r in kept if r["model"] != name] + [result]}, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  if sys.argv[1:2] == ["--one"]:
    print(json.dumps(measure(sys.argv[2])))
  else:
    main(sys.argv[1:])
