"""WST on MATH-500 with the embedded default models, on CPU: the whole MATH path (LaTeX problems,
long prompts, the math-verify verifier) in minutes.

    python -m wst_jax.train --config configs/math500_cpu.py          # ~8 min on 2 busy cores
    python -m wst_jax.train --config configs/math500_cpu.py:tiny     # ~1.5 min: smoke test

MATH-500 (../shared/assets/math500/test.jsonl) is the only MATH data offline: task.eval_size of
its 500 problems are held out for the table and the teacher trains on the others. Models,
prompts, PPO and optimizer are those of configs/gsm8k_cpu.py: the embedded default, tiny
arithmetic models that never saw LaTeX. They score ~0 on MATH whatever the instruction: the
student answers `#### N` guesses that hit only the odd small-integer answer (measured here: 2 of
the 100 held-out problems alone, 4 with the untrained or the trained teacher: noise). So the
reward gives PPO next to nothing to learn from: this shows that the MATH path runs end to end,
it does not reproduce the paper's numbers (configs/math500.py is the paper-scale run).
"""
from configs import gsm8k_cpu
from wst_jax.data import assets


def get_config(arg: str = ""):
  if arg not in ("", "tiny"):
    raise ValueError(f"configs/math500_cpu.py:{arg}: the variants are '' (default) and 'tiny'.")
  c = gsm8k_cpu.get_config(arg)
  c.workdir = "runs/math500_cpu" + ("_tiny" if arg else "")
  c.task.update(name="math500", train_path=assets.locate("math500/test.jsonl"),
                eval_path="", verifier="math")
  c.eval.extra_tasks = []
  # The embedded tokenizer spends up to 1,241 tokens on the longest problem's prompt (the tiny
  # one up to 1,495): LaTeX is far from their training text. Every prompt is padded that long,
  # which is what a step costs here; gold answers are <= 53 bytes.
  length = 1536 if arg == "tiny" else 1280
  c.data.update(teacher_prompt_len=length, student_suffix_len=length, gold_len=64)
  if arg != "tiny":  # tiny keeps gsm8k_cpu's: 64 train / 16 eval problems, 4 steps of 8
    c.task.update(eval_size=100, max_train=0)
    c.train.update(batch_size=8, num_steps=16, checkpoint_every=8)
    c.optim.update(warmup_steps=2, decay_steps=16)
    c.eval.update(batch_size=25)
  return c
