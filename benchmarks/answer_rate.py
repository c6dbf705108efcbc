"""How fast the student answers GSM8K: Qwen2.5-Coder-0.5B-Instruct (or --student, the zoo's
1.5B) answers the first --questions GSM8K test questions (chat template, its own stop token, a
--budget-token answer budget), greedy, on this machine, in one run:

  * "f32 static": our `generate` in f32, batches of --batch rows padded to their longest prompt,
    each batch decoding until its longest answer ends (the path before mixed precision);
  * "bf16 static": the same in bf16 with f32 accumulation (weights held in bf16);
  * "bf16 queued": bf16, `generate_queued` (--batch slots that take the next question as soon as
    their answer ends);
  * "transformers bf16": transformers' `generate` (torch, --threads threads) on the same batches.

Each way reports answers/minute and generated tokens/s with its compile time left out (measured
with JAX's compile-time events and reported beside), GSM8K accuracy, and how many answers differ
from f32 static. Per model precision we also report the prefill's GFLOP/s (one batch of the first
--batch prompts) and the ms of one decode step at --batch rows (a forced-length decode, minus its
prefill) beside its compute floor: the step's FLOPs over the dot rate measured in this run on the
model's own MLP matmuls at --batch rows. The load average is recorded before and after each part.
Also SmolLM2-135M-Instruct, the teacher, sampling --instruction-len-token instructions for
--teacher-batch rows (f32 and bf16 compute with f32 weights, as the trained teacher runs; 0
rows: not measured).

    python benchmarks/answer_rate.py [--questions 200] [--budget 256] [--ways ...]
    python benchmarks/answer_rate.py --student qwen2.5-coder-1.5b-instruct --questions 64 \
        --budget 512 --batch 32 --ways "bf16 queued" --teacher-batch 0   # answer_rate_1.5b.json

Targets: bf16 queued >= 3x the answers/minute of f32 static and ahead of transformers bf16;
its accuracy within 3 points of f32; prefill >= 200 GFLOP/s; a decode step within 1.5x of its
compute floor (1.3x for the 1.5B, the step-cost issue's target). The JSON records each as met
or not; the exit status is non-zero when one is missed. Run it alone on the machine (no tests, no
training): figures under load are not results.
"""
import argparse
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
from flax import nnx
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parents[1]))
from wst_jax import checkpoints, verifiers, zoo  # noqa: E402
from wst_jax.data import assets, batches  # noqa: E402
from wst_jax.data.tasks import read_gsm8k  # noqa: E402
from wst_jax.models import positions_from_mask  # noqa: E402
from wst_jax.sampling import generate, generate_queued  # noqa: E402

TEACHER = "smollm2-135m-instruct"
# Each student -> (the bf16 decode step's limit over its compute floor, its JSON beside this file).
STUDENTS = {"qwen2.5-coder-0.5b-instruct": (1.5, "answer_rate.json"),
            "qwen2.5-coder-1.5b-instruct": (1.3, "answer_rate_1.5b.json")}
WAYS = ("f32 static", "bf16 static", "bf16 queued", "transformers bf16")
MIN_SPEEDUP, MAX_ACC_DROP, MIN_PREFILL_GFLOPS = 3.0, 0.03, 200.0

_compile_s = []  # seconds of every JAX trace/lower/compile event since the last reset
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: _compile_s.append(secs) if event.startswith("/jax/core/compile/")
    else None)


def load() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def timed(fn):
  """-> (fn(), wall seconds, seconds of it spent compiling)."""
  _compile_s.clear()
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - t0, sum(_compile_s)


def layer_flops_per_token(cfg) -> int:
  """2 x the weights of the decoder layers (the matmuls every token runs through)."""
  d, f = cfg.hidden_size, cfg.intermediate_size
  attn = d * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
  return 2 * cfg.num_layers * (attn + (3 if cfg.family == "llama" else 2) * d * f)


def attention_flops(cfg, rows: int, queries: int, keys: int) -> int:
  """Scores and values: 2 x 2 x rows x queries x keys x heads x head_dim per layer."""
  return 4 * cfg.num_layers * rows * queries * keys * cfg.num_heads * cfg.head_dim


def dot_rate(cfg, rows: int, dtype) -> float:
  """FLOP/s of the model's MLP matmuls (x [rows, D] @ [D, F], then [rows, F] @ [F, D]) in
  `dtype` with f32 accumulation, best of 10: the rate the compute floor divides by."""
  r = np.random.default_rng(0)
  d, f = cfg.hidden_size, cfg.intermediate_size
  x = jnp.asarray(r.normal(size=(rows, d)), dtype)
  up, down = (jnp.asarray(r.normal(size=s) * 0.02, dtype) for s in [(d, f), (f, d)])
  mlp = jax.jit(lambda x, up, down: jnp.matmul(
      jnp.matmul(x, up, preferred_element_type=jnp.float32).astype(dtype), down,
      preferred_element_type=jnp.float32))
  jax.block_until_ready(mlp(x, up, down))
  best = min(timed(lambda: mlp(x, up, down))[1] for _ in range(10))
  return 4 * rows * d * f / best


def questions(n: int) -> list[dict]:
  return read_gsm8k(assets.locate("gsm8k/test.jsonl"), split="test")[:n]


def static_batches(rows: list[list[int]], batch: int, pad_id: int):
  """Batches of `batch` prompts, left-padded to their longest (the last one filled up with row
  0, its extra answers dropped) -> [(ids int32[batch, P], mask, number of real rows)]."""
  out = []
  for start in range(0, len(rows), batch):
    part = rows[start:start + batch]
    real = len(part)
    part = part + [rows[0]] * (batch - real)
    ids, mask = batches.left_pad(part, max(map(len, part)), pad_id, "prompt")
    out.append((ids, mask, real))
  return out


def answers_of(tokens: np.ndarray, mask: np.ndarray) -> list[list[int]]:
  return [row[m].tolist() for row, m in zip(tokens, mask.astype(bool))]


def run_static(model, parts, *, budget, eos, pad_id):
  """Our `generate` over the static batches -> (answer ids per question, seconds, compile s)."""
  fn = jax.jit(lambda m, ids, mask: generate(m, ids, mask, jax.random.key(0),
                                             max_new_tokens=budget, eos_ids=eos, pad_id=pad_id))
  out, seconds, compiling = [], 0.0, 0.0
  for ids, mask, real in tqdm(parts, desc="batches", leave=False):
    gen, s, c = timed(lambda: fn(model, ids, mask))
    seconds, compiling = seconds + s, compiling + c
    out += answers_of(np.asarray(gen.tokens)[:real], np.asarray(gen.mask)[:real])
  return out, seconds, compiling


def run_queued(model, rows, *, slots, budget, eos, pad_id):
  """`generate_queued` over all prompts -> (answer ids per question, seconds, compile s)."""
  ids, mask = batches.left_pad(rows, max(map(len, rows)), pad_id, "prompt")
  answers = [None] * len(rows)

  def run():
    with tqdm(total=len(rows), desc="answers", leave=False) as bar:
      for done, gen in generate_queued(model, ids, mask, slots=slots, max_new_tokens=budget,
                                       eos_ids=eos, pad_id=pad_id, progress=bar):
        for i, a in zip(done, answers_of(gen.tokens, gen.mask)):
          answers[i] = a

  _, seconds, compiling = timed(run)
  return answers, seconds, compiling


def run_transformers(folder, parts, *, budget, eos, pad_id):
  import torch
  import transformers
  hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16,
                                                         local_files_only=True).eval()
  out, seconds = [], 0.0
  for ids, mask, real in tqdm(parts, desc="batches", leave=False):
    t0 = time.perf_counter()
    with torch.inference_mode():
      gen = hf.generate(torch.tensor(ids, dtype=torch.long),
                        attention_mask=torch.tensor(mask, dtype=torch.long), do_sample=False,
                        max_new_tokens=budget, eos_token_id=list(eos), pad_token_id=pad_id)
    seconds += time.perf_counter() - t0
    gen = gen[:real, ids.shape[1]:].numpy()
    # Stop at the first stop token (kept), as ours do; transformers pads after it.
    for row in gen:
      hit = np.flatnonzero(np.isin(row, eos))
      out.append(row[:hit[0] + 1 if hit.size else len(row)].tolist())
  return out, seconds, 0.0


def speed_probe(model, ids, mask, *, forced: int, rate: float, pad_id: int) -> dict:
  """Prefill GFLOP/s on one batch, and ms per decode step (a `forced`-token decode with no stop
  token, less the prefill) beside the compute floor at `rate` FLOP/s."""
  cfg = model.cfg
  rows, p = ids.shape
  prefill = jax.jit(lambda m, i, k: m.logits(m(i, positions_from_mask(k), k)[1][:, -1]))
  decode = jax.jit(lambda m, i, k: generate(m, i, k, jax.random.key(0), max_new_tokens=forced,
                                            eos_ids=(), pad_id=pad_id).tokens)
  prefill(model, ids, mask), decode(model, ids, mask)  # compile
  prefill_s = min(timed(lambda: prefill(model, ids, mask))[1] for _ in range(2))
  decode_s = timed(lambda: decode(model, ids, mask))[1]
  head = 2 * cfg.hidden_size * cfg.vocab_size
  prefill_flops = (rows * p * layer_flops_per_token(cfg) + rows * head
                   + attention_flops(cfg, rows, p, p))
  step_ms = 1e3 * (decode_s - prefill_s) / forced
  keys = p + forced / 2
  step_flops = rows * (layer_flops_per_token(cfg) + head) + attention_flops(cfg, rows, 1, keys)
  floor_ms = 1e3 * step_flops / rate
  return dict(prefill_rows=rows, prefill_len=p, prefill_s=round(prefill_s, 2),
              prefill_gflop_s=round(prefill_flops / prefill_s / 1e9, 1),
              step_ms=round(step_ms, 1), step_gflop=round(step_flops / 1e9, 1),
              dot_rate_gflop_s=round(rate / 1e9, 1), floor_ms=round(floor_ms, 1),
              step_over_floor=round(step_ms / floor_ms, 2))


def teacher_rate(args) -> dict:
  """SmolLM2-135M-Instruct sampling instructions for --teacher-batch questions."""
  folder = zoo.fetch(TEACHER)
  tok = checkpoints.load_tokenizer(folder)
  pad = tok.pad_token_id if tok.pad_token_id is not None else 0
  meta = ("Here is a math word problem.\n\n{question}\n\nWrite one short instruction, a single "
          "sentence, that will help a student solve it correctly. Reply with the instruction only.")
  rows = [batches.user_turn_ids(tok, meta.format(question=q["question"]))
          for q in questions(args.teacher_batch)]
  ids, mask = batches.left_pad(rows, max(map(len, rows)), pad, "prompt")
  out = {}
  for name, dtype in [("f32", "float32"), ("bf16 compute, f32 weights", "bfloat16")]:
    model = checkpoints.load_decoder(folder, dtype=dtype)
    fn = jax.jit(lambda m, i, k, key: generate(
        m, i, k, key, max_new_tokens=args.instruction_len, eos_ids=(tok.eos_token_id,),
        pad_id=pad, greedy=False, temperature=1.0, top_p=0.95))
    _, first, compiling = timed(lambda: fn(model, ids, mask, jax.random.key(0)))
    runs = [timed(lambda: fn(model, ids, mask, jax.random.key(s))) for s in range(1, 4)]
    best = min(s for _, s, _ in runs)
    mean_len = float(np.mean([np.asarray(g.mask).sum(1).mean() for g, _, _ in runs]))
    out[name] = dict(rows=len(rows), prompt_len=ids.shape[1], seconds_best_of_3=round(best, 2),
                     instructions_per_min=round(60 * len(rows) / best, 1),
                     mean_instruction_tokens=round(mean_len, 1), compile_s=round(compiling, 1),
                     load_after=load())
    print(f"teacher {name}: {out[name]}", flush=True)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--student", default="qwen2.5-coder-0.5b-instruct", choices=STUDENTS)
  parser.add_argument("--questions", type=int, default=200)
  parser.add_argument("--budget", type=int, default=256)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--ways", nargs="*", default=list(WAYS), choices=WAYS,
                      help="none: only the teacher part")
  parser.add_argument("--forced", type=int, default=32, help="decode steps of the step probe")
  parser.add_argument("--teacher-batch", type=int, default=32, help="0: no teacher part")
  parser.add_argument("--instruction-len", type=int, default=40)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--out", help="default: the student's JSON beside this file")
  args = parser.parse_args()
  max_floor_factor, name = STUDENTS[args.student]
  args.out = args.out or str(Path(__file__).with_name(name))
  import torch
  torch.set_num_threads(args.threads)

  result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                device=f"{jax.devices()[0].platform}: {platform.processor() or platform.machine()}"
                       f", {os.cpu_count()} CPU cores",
                jax_version=jax.__version__, torch_version=torch.__version__, torch_threads=args.threads,
                config=vars(args), load_start=load(), ways={}, probes={})

  def write():
    result["targets"] = targets(result["ways"], result["probes"], max_floor_factor)
    result["all_targets_met"] = all(t["met"] for t in result["targets"].values())
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

  folder = zoo.fetch(args.student)
  tok = checkpoints.load_tokenizer(folder)
  pad = tok.pad_token_id if tok.pad_token_id is not None else 0
  eos = (tok.eos_token_id,)
  qs = questions(args.questions)
  rows = [batches.user_turn_ids(tok, q["question"]) for q in qs]
  parts = static_batches(rows, args.batch, pad)
  result.update(student=args.student, stop_ids=list(eos),
                mean_prompt_tokens=float(np.mean(list(map(len, rows)))))
  reference = None
  for way in args.ways:
    dtype = "float32" if way.startswith("f32") else "bfloat16"
    before = load()
    print(f"{way}: load {before}", flush=True)
    if way == "transformers bf16":
      answers, seconds, compiling = run_transformers(folder, parts, budget=args.budget, eos=eos,
                                                     pad_id=pad)
    else:
      model = checkpoints.load_decoder(folder, dtype=dtype, param_dtype=dtype)
      if dtype not in result["probes"]:
        cfg = model.cfg
        rate = dot_rate(cfg, args.batch, jnp.dtype(dtype))
        result["probes"][dtype] = speed_probe(model, *parts[0][:2], forced=args.forced,
                                              rate=rate, pad_id=pad)
        print(f"{dtype} probe: {result['probes'][dtype]}", flush=True)
      if way.endswith("queued"):
        answers, seconds, compiling = run_queued(model, rows, slots=args.batch,
                                                 budget=args.budget, eos=eos, pad_id=pad)
      else:
        answers, seconds, compiling = run_static(model, parts, budget=args.budget, eos=eos,
                                                 pad_id=pad)
      del model
    texts = [tok.decode(a, skip_special_tokens=True) for a in answers]
    correct = [verifiers.score("gsm8k", t, q["answer"]) for t, q in zip(texts, qs)]
    run_s = seconds - compiling
    lengths = [len(a) for a in answers]
    entry = dict(seconds=round(seconds, 1), compile_s=round(compiling, 1),
                 answers_per_min=round(60 * len(answers) / run_s, 2),
                 tokens_per_s=round(sum(lengths) / run_s, 1),
                 accuracy=round(float(np.mean(correct)), 4),
                 mean_answer_tokens=round(float(np.mean(lengths)), 1),
                 hit_budget=int(sum(n >= args.budget for n in lengths)),
                 load_before=before, load_after=load())
    if reference is None and way == "f32 static":
      reference = answers
    if reference is not None:
      entry["answers_differing_from_f32"] = int(sum(a != b for a, b in zip(answers, reference)))
    result["ways"][way] = entry
    print(f"{way}: {entry}", flush=True)
    write()
  if args.teacher_batch:
    result["teacher"] = teacher_rate(args)
  result["load_end"] = load()
  write()
  for key, t in result["targets"].items():
    print(f"{'met   ' if t['met'] else 'MISSED'} {key}: {t['value']} {t.get('limit', '')}")
  print(f"-> {args.out}")
  if not result["all_targets_met"]:
    sys.exit("FAIL: a target is missed (see above).")


def targets(ways: dict, probes: dict, max_floor_factor: float) -> dict:
  """Each target whose inputs were measured in this run -> dict(value, limit, met)."""
  out = {}
  fast, base, peer = (ways.get(k) for k in ("bf16 queued", "f32 static", "transformers bf16"))
  if fast and base:
    speedup = fast["answers_per_min"] / base["answers_per_min"]
    out["bf16 queued / f32 static answers per minute"] = dict(
        value=round(speedup, 2), limit=f">= {MIN_SPEEDUP}", met=speedup >= MIN_SPEEDUP)
    drop = base["accuracy"] - fast["accuracy"]
    out["accuracy drop vs f32"] = dict(value=round(drop, 4), limit=f"<= {MAX_ACC_DROP}",
                                       met=drop <= MAX_ACC_DROP)
  if fast and peer:
    ratio = fast["answers_per_min"] / peer["answers_per_min"]
    out["bf16 queued / transformers bf16"] = dict(value=round(ratio, 2), limit="> 1",
                                                  met=ratio > 1)
  if "bfloat16" in probes:
    p = probes["bfloat16"]
    out["bf16 prefill GFLOP/s"] = dict(value=p["prefill_gflop_s"], limit=f">= {MIN_PREFILL_GFLOPS}",
                                       met=p["prefill_gflop_s"] >= MIN_PREFILL_GFLOPS)
    out["bf16 step / compute floor"] = dict(value=p["step_over_floor"],
                                            limit=f"<= {max_floor_factor}",
                                            met=p["step_over_floor"] <= max_floor_factor)
  return out


if __name__ == "__main__":
  main()
