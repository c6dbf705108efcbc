r"""How fast a student behind an OpenAI-compatible server answers, beside our JAX decoder: the
zoo's Qwen2.5-Coder-0.5B-Instruct answers the first --questions GSM8K test questions (chat
template, no instruction, greedy, a --budget-token answer budget), on this machine, in one run:

  * "jax queued": our `generate_queued` in bf16 (f32 accumulation) with --slots slots, as the
    evaluation answers (compile time left out, reported beside);
  * "server, concurrency C" for each C of --concurrency: `transformers serve` of the same model
    folder (--dtype, CPU), asked through `student_api.ApiStudent.ask` (the path a WST run takes, a
    fresh in-memory journal each time) with C requests in flight; with --continuous-batching,
    the same again on a server started with `--continuous-batching`.

Each way: answers per minute, GSM8K accuracy (the run's verifier), completion tokens, and how
many answers are identical to the JAX ones. The load average is recorded before and after each
part: run it alone on the machine (no tests, no training), figures under load are not results.

    python benchmarks/api_student.py [--questions 64] [--budget 256] [--concurrency 1 8 32]

There is no speed target: this is the price of asking a student over HTTP on the same machine
(a hosted or GPU server is another machine). --out is rewritten as each way ends ("complete":
false until the last one has): a run stopped midway keeps the ways it finished. A way that cannot
answer every question stops the run with its error (non-zero exit status) and adds nothing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))   # serving.py: start and stop `transformers serve`
import serving  # noqa: E402
from answer_rate import load  # noqa: E402 (the load average, as every benchmark records it)
from ml_collections import ConfigDict  # noqa: E402

from wst_jax import checkpoints, rewards, zoo  # noqa: E402
from wst_jax.data import assets, batches  # noqa: E402
from wst_jax.data.tasks import read_gsm8k  # noqa: E402
from wst_jax.records import AnswerJournal  # noqa: E402
from wst_jax.sampling import generate_queued  # noqa: E402
from wst_jax.student_api import ApiStudent, Endpoint  # noqa: E402

STUDENT = "qwen2.5-coder-0.5b-instruct"
PROMPT = ConfigDict(dict(batches.PLACEMENTS["user_after"], dialogue=False))  # a question, not turns


def scored(texts: list[str], gold: list[str], reference: list[str] | None) -> dict:
  right = rewards.verifier_scores("gsm8k", texts, gold)
  out = dict(accuracy=float(right.mean()))
  if reference is not None:
    out["identical_to_jax"] = int(sum(a == b for a, b in zip(texts, reference)))
  return out


def run_jax(folder, questions, args) -> tuple[list[str], dict]:
  tokenizer = checkpoints.load_tokenizer(folder)
  model = checkpoints.load_decoder(folder, dtype="bfloat16", param_dtype="bfloat16")
  rows = [tokenizer.apply_chat_template(batches.student_messages(PROMPT, q["question"], ""),
                                        tokenize=True, add_generation_prompt=True,
                                        return_dict=False) for q in questions]
  ids, mask = batches.left_pad(rows, max(map(len, rows)), tokenizer.pad_token_id, "prompt")
  texts, tokens = [None] * len(rows), 0
  compile_s = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **kw: compile_s.append(secs)
      if event.startswith("/jax/core/compile/") else None)
  before, t0 = load(), time.perf_counter()
  with tqdm(total=len(rows), desc="jax queued", leave=False) as bar:
    for done, gen in generate_queued(model, ids, mask, slots=args.slots,
                                     max_new_tokens=args.budget,
                                     eos_ids=(tokenizer.eos_token_id,),
                                     pad_id=tokenizer.pad_token_id, progress=bar):
      for i, t, m in zip(done, np.asarray(gen.tokens), np.asarray(gen.mask, bool)):
        texts[i] = tokenizer.decode(t[m].tolist(), skip_special_tokens=True)
        tokens += int(m.sum())
  seconds = time.perf_counter() - t0 - sum(compile_s)
  return texts, dict(seconds=seconds, compile_s=sum(compile_s), completion_tokens=tokens,
                     answers_per_minute=60 * len(rows) / seconds, slots=args.slots,
                     load_before=before, load_after=load())


def run_server(server, questions, concurrency: int, args) -> tuple[list[str], dict]:
  endpoint = Endpoint(server.base_url, server.model, "", concurrency, 3600.0, 2)
  student = ApiStudent(endpoint, AnswerJournal(None), args.budget, PROMPT)
  before, t0 = load(), time.perf_counter()
  with tqdm(total=len(questions), desc=f"server, concurrency {concurrency}", leave=False) as bar:
    answers, counts = student.ask([q["question"] for q in questions], [""] * len(questions), bar)
  seconds = time.perf_counter() - t0
  return [a.text for a in answers], dict(
      seconds=seconds, answers_per_minute=60 * len(questions) / seconds, concurrency=concurrency,
      completion_tokens=counts["completion_tokens"], prompt_tokens=counts["prompt_tokens"],
      retries=counts["retries"], load_before=before, load_after=load())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--questions", type=int, default=64)
  parser.add_argument("--budget", type=int, default=256)
  parser.add_argument("--slots", type=int, default=64)
  parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
  parser.add_argument("--dtype", default="bfloat16", help="the server's torch dtype")
  parser.add_argument("--continuous-batching", action="store_true")
  parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
  args = parser.parse_args()
  folder = zoo.fetch(STUDENT)
  questions = read_gsm8k(assets.locate("gsm8k/test.jsonl"), split="test")[:args.questions]
  gold = [q["answer"] for q in questions]
  result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                model=STUDENT, questions=len(questions), budget=args.budget,
                server_dtype=args.dtype, load_at_start=load(), complete=False, ways={})

  def write():
    args.out.write_text(json.dumps(result, indent=2) + "\n")

  reference, stats = run_jax(folder, questions, args)
  result["ways"]["jax queued"] = dict(stats, **scored(reference, gold, None))
  write()
  servers = [("server", ())] + ([("server, continuous batching", ("--continuous-batching",))]
                                if args.continuous_batching else [])
  for name, extra in servers:
    with serving.serve(folder, dtype=args.dtype, extra_args=extra) as server:
      for c in args.concurrency:
        texts, stats = run_server(server, questions, c, args)
        result["ways"][f"{name}, concurrency {c}"] = dict(stats, **scored(texts, gold, reference))
        write()
  result["complete"] = True
  write()
  for name, way in result["ways"].items():
    print(f"{name:42s} {way['answers_per_minute']:7.2f} answers/min  accuracy "
          f"{way['accuracy']:.3f}  identical to jax {way.get('identical_to_jax', '-')}")


if __name__ == "__main__":
  main()
