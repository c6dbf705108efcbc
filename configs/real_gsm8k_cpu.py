"""WST on real GSM8K with real pretrained models, on CPU: SmolLM2-135M-Instruct writes the
instruction, Qwen2.5-Coder-0.5B-Instruct answers it (both from the model zoo, fetched on first use).

    python -m wst_jax.train --config configs/real_gsm8k_cpu.py
    python -m wst_jax.train --config configs/real_gsm8k_cpu.py:smoke   # 2 steps, tiny (CI)

Prompts are each model's own chat template (prompt.chat="system"): the teacher gets its meta-prompt
and the question as a user turn and writes the instruction as its reply; the student gets that
instruction as its system turn and the question as its user turn. "Student alone" is the student
with an empty system turn. The two models' vocabularies differ, so the instruction is handed over
as text on the host (`prompting.host_retokenizer`).

Held out: task.eval_size GSM8K *test* questions. Settings are to be chosen on the dev split
(`:dev`: 200 GSM8K *train* questions held out from training), never on the test questions.
"""
from configs import common
from wst_jax.data import assets

TEACHER = "zoo:smollm2-135m-instruct"
STUDENT = "zoo:qwen2.5-coder-0.5b-instruct"
META_PROMPT = ("Here is a math word problem.\n\n{question}\n\nWrite one short instruction, a "
               "single sentence, that will help a student solve it correctly. Reply with the "
               "instruction only.")
# The same ask with two examples of what an instruction looks like: the untrained SmolLM2 mostly
# restates the problem under META_PROMPT (`python -m wst_jax.probe` writes its samples).
META_PROMPT_EXAMPLES = (
    "A student must solve this math word problem:\n\n{question}\n\nDo not solve it. Write one "
    "short instruction for the student, such as \"Find the price of one item first, then "
    "multiply.\" or \"Convert every time to minutes before you add.\" Reply with the "
    "instruction only.")
# Row (e): an untrained teacher larger than the student (its own tokenizer and chat template).
LARGER_TEACHER = "zoo:qwen2.5-coder-1.5b-instruct"
VARIANTS = ("", "dev", "smoke")
# Hand-written instructions of different kinds for `python -m wst_jax.probe` (is there a signal
# for the teacher to find?), tried on the dev split only.
PROBE_INSTRUCTIONS = (
    "Let's think step by step.",
    "Solve it step by step, then give the final answer as a plain number on the last line.",
    "Check each calculation before you move on.",
    "Be brief: show only the key calculations, then the final answer.",
    "First list the quantities given in the problem, then solve it.",
    "End your answer with 'The answer is N.', where N is a plain number.",
    "Write the solution as a short sequence of equations.",
    "Reply with the final number only.",
    # The probe's first rows: this coder model often goes on to check its answer in Python, and
    # most answers that run past the budget are wrong (results/real_gsm8k/signal.md).
    "Do not write code: reason in plain text and end with the final number.",
)


def get_config(arg: str = ""):
  if arg not in VARIANTS:
    raise ValueError(f"configs/real_gsm8k_cpu.py:{arg}: the variants are {VARIANTS}.")
  c = common.base_config()
  c.workdir = "runs/real_gsm8k_cpu" + (f"_{arg}" if arg else "")
  c.teacher.path, c.student.path = TEACHER, STUDENT
  # Mixed precision, the fastest on this CPU too (avx512_bf16; benchmarks/answer_rate.json): the
  # frozen student held and run in bf16 with f32 accumulation; the trained teacher keeps f32
  # master weights (AdamW on bf16 weights loses small updates) and computes in bf16.
  c.teacher.dtypes = dict(dtype="bfloat16", param_dtype="float32")
  c.student.dtypes = dict(dtype="bfloat16", param_dtype="bfloat16")
  # Chosen on dev (results/real_gsm8k/signal.md): the untrained teacher's instructions scored
  # 0.23 under META_PROMPT_EXAMPLES and 0.15 under META_PROMPT; in the system turn, where the best
  # hand-written instruction gained most over the student alone.
  c.prompt.update(chat="system", teacher_template=META_PROMPT_EXAMPLES, student_prefix="",
                  student_suffix="{question}")
  c.task.update(name="gsm8k", train_path=assets.locate("gsm8k/train.jsonl"),
                eval_path=assets.locate("gsm8k/test.jsonl"), eval_size=200, verifier="gsm8k")
  # Token budgets (the longest GSM8K question is ~210 tokens in either vocabulary; the chat
  # wrapping adds ~70 teacher / ~20 student tokens). A tight answer budget: answers that run past
  # answer_len are cut and graded on their last number.
  c.data.update(teacher_prompt_len=320, student_suffix_len=256, retokenized_instruction_len=48,
                gold_len=32)
  c.rollout.update(instruction_len=40, answer_len=256, temperature=1.0, top_p=0.95)
  # GRPO-style group advantages: 4 instructions per question, each scored against its group.
  c.ppo.update(advantage="group", group_size=4, kl_coef=0.02, num_epochs=1, num_minibatches=2)
  # ~640 training answers (8 questions x 4 instructions x 20 steps): what this CPU answers in
  # about an hour beside the teacher's PPO update. The stop rule is fixed in advance: the last
  # step's teacher is the one evaluated. 1e-5 moves a 135M teacher within 40 AdamW updates; not
  # tuned (no budget for a sweep).
  c.optim.update(learning_rate=1e-5, warmup_steps=2, decay_steps=20)
  c.train.update(batch_size=8, num_steps=20, checkpoint_every=5, keep_checkpoints=2)
  # 64 decode slots (queued: each takes the next question when its answer ends): this CPU's bf16
  # matmuls reach their rate at 64 rows (benchmarks/answer_rate.json).
  c.eval.update(batch_size=64, teacher_path=LARGER_TEACHER)
  # In the user turn, four kinds (a row is ~3.5 minutes here): steps, length, format, no code.
  c.probe = dict(instructions={"system": list(PROBE_INSTRUCTIONS),
                               "user_before": [PROBE_INSTRUCTIONS[i] for i in (0, 3, 7, 8)]},
                 meta_prompts=[META_PROMPT, META_PROMPT_EXAMPLES])
  if arg == "dev":   # the split settings are chosen on: train questions, never test ones
    c.task.update(eval_path="", eval_size=200)
  if arg == "smoke":   # minutes on CPU: questions cut to their last 48 tokens, short budgets
    c.task.update(eval_size=4, max_train=16)
    c.data.update(question_len=48, teacher_prompt_len=160, student_suffix_len=96,
                  retokenized_instruction_len=16)
    c.rollout.update(instruction_len=8, answer_len=8)
    c.ppo.update(group_size=2)
    c.train.update(batch_size=4, num_steps=2, checkpoint_every=1)
    c.eval.update(batch_size=4, bootstrap_samples=100, teacher_path="")
  return c
