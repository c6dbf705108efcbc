"""Cost of the teacher->student instruction hand-off: in-graph (shared vocabulary) vs the host
round trip (`prompting.host_retokenizer`, different vocabularies).

Times the jitted student-answer function (prompt assembly + greedy decode) both ways on the same
tiny models, median of several runs after warm-up, and writes benchmarks/handoff.json.

    python benchmarks/handoff.py [--batch 32] [--out benchmarks/handoff.json]
"""
import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path[:0] = [str(Path(__file__).parents[1]), str(Path(__file__).parents[1] / "tests")]
import tiny_world  # noqa: E402

from wst_jax import checkpoints  # noqa: E402
from wst_jax.step import Rollout, answer_questions, hand_over  # noqa: E402
from wst_jax.data.batches import encode_examples  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
  args = parser.parse_args()
  tmp = Path(tempfile.mkdtemp())
  paths = tiny_world.make(tmp)
  config = tiny_world.config(paths, tmp / "run")
  student_tok = checkpoints.load_tokenizer(paths["student"])
  # A second vocabulary: the same corpus with fewer merges, so ids differ.
  other_tok = tiny_world.tokenizer(tmp / "other", vocab_size=330)
  student = checkpoints.load_decoder(paths["student"])
  examples = tiny_world.questions(args.batch)
  instruction_text = tiny_world.PHRASES[0]
  results = {}
  for name, teacher_tok in [("shared_vocab", student_tok), ("host_retokenize", other_tok)]:
    rollout = Rollout.from_config(config, teacher_tok, student_tok)
    arrays = encode_examples(examples, teacher_tok, student_tok, config)
    ids = np.asarray([teacher_tok.encode(instruction_text, add_special_tokens=False)] * args.batch,
                     np.int32)
    mask = np.ones_like(ids, bool)
    fn = jax.jit(lambda m, b, i, k: answer_questions(m, b, *hand_over(i, k, rollout),
                                                      rollout).tokens)
    batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    jax.block_until_ready(fn(student, batch, ids, mask))
    times = []
    for _ in range(args.runs):
      t0 = time.perf_counter()
      out = jax.block_until_ready(fn(student, batch, ids, mask))
      times.append(time.perf_counter() - t0)
    results[name] = {"median_s": statistics.median(times), "tokens": np.asarray(out).tolist()[0]}
  same = results["shared_vocab"]["tokens"] == results["host_retokenize"]["tokens"]
  record = {
      "shared_vocab_s": results["shared_vocab"]["median_s"],
      "host_retokenize_s": results["host_retokenize"]["median_s"],
      "overhead_s": results["host_retokenize"]["median_s"] - results["shared_vocab"]["median_s"],
      "same_answers": same, "batch": args.batch, "device": jax.devices()[0].device_kind,
      "date": datetime.date.today().isoformat(),
  }
  print(json.dumps(record, indent=2))
  Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
  if not same:
    sys.exit("the re-tokenized hand-off gave different student answers than the shared one")


if __name__ == "__main__":
  main()
