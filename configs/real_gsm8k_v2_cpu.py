"""Round 2 of the real GSM8K table (results/real_gsm8k_v2): round 1's models and task
(`configs/real_gsm8k_cpu.py`), with what round 1 showed must change: the instruction placed after
the question in the student's user turn (the zero-shot place; in the system turn this student
barely reads it), and a 512-token answer budget (at 256, 55% of round 1's answers were cut).

    python -m wst_jax.probe --config configs/real_gsm8k_v2_cpu.py:dev --out results/real_gsm8k_v2
    python -m wst_jax.train --config configs/real_gsm8k_v2_cpu.py --noeval
    python -m wst_jax.eval --config configs/real_gsm8k_v2_cpu.py

Stage 1 (the probe, on dev) decides whether this student can be steered at all, and chooses the
meta-prompt and temperature for stage 2 (results/real_gsm8k_v2/signal.md). Until then the
training settings are round 1's.
"""
from configs import real_gsm8k_cpu
from wst_jax.data.batches import PLACEMENTS

VARIANTS = real_gsm8k_cpu.VARIANTS
# A second ask, for a tip rather than a plan: the teacher sees the question, not the student's
# answer, and a tip reads naturally after the question.
META_PROMPT_TIP = (
    "Here is a math word problem:\n\n{question}\n\nA student will solve it. Do not solve it "
    "yourself. Give the student one short tip, a single sentence, on how to approach it or what "
    "to watch out for, such as \"Work out the total cost before the discount.\" or \"Keep every "
    "time in minutes.\" Reply with the tip only.")
# Stage 1's hand-written instructions after the question, of different kinds: steps, format,
# length, no code, checking, the answer alone.
AFTER_QUESTION = (
    "Let's think step by step.",
    "Solve it step by step, then give the final answer as a plain number on the last line.",
    "Be brief: show only the key calculations, then the final answer.",
    "Do not write code: reason in plain text and end with the final number.",
    "Check each calculation before you move on.",
    "Reply with the final number only.",
)
# Round 1's best two in the system turn (results/real_gsm8k/signal.md), again at the new budget.
SYSTEM_TURN = ("Reply with the final number only.", "Let's think step by step.")


def get_config(arg: str = ""):
  c = real_gsm8k_cpu.get_config(arg)
  c.workdir = "runs/real_gsm8k_v2_cpu" + (f"_{arg}" if arg else "")
  c.prompt.update(PLACEMENTS["user_after"])
  # The question is in the part before the instruction now; after it, the chat template's turn
  # end and the assistant's header.
  c.data.update(student_prefix_len=c.data.student_suffix_len, student_suffix_len=16)
  c.rollout.update(answer_len=512)
  c.probe = dict(instructions={"user_after": list(AFTER_QUESTION), "system": list(SYSTEM_TURN)},
                 meta_prompts=[real_gsm8k_cpu.META_PROMPT_EXAMPLES, META_PROMPT_TIP],
                 temperatures=[0.7, 1.0])
  if arg == "smoke":
    c.rollout.update(answer_len=8)
  return c
