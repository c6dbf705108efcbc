"""WST on HH-RLHF harmless-base with real models, on CPU: SmolLM2-135M-Instruct writes the
instruction, Qwen2.5-Coder-0.5B-Instruct answers the dialogue (the zoo models of
configs/real_gsm8k_cpu.py), a reward model on the student's backbone pays the teacher, and a
second one on the teacher's backbone judges the table.

    python -m wst_jax.reward_model --config configs/real_hh_rlhf_cpu.py   # build (or find) both
    python -m wst_jax.reward_model --config configs/real_hh_rlhf_cpu.py --build judge   # one
    python -m wst_jax.probe --config configs/real_hh_rlhf_cpu.py:dev --out results/real_hh_rlhf
    python -m wst_jax.train --config configs/real_hh_rlhf_cpu.py --noeval
    python -m wst_jax.eval --config configs/real_hh_rlhf_cpu.py
    python -m wst_jax.train --config configs/real_hh_rlhf_cpu.py:smoke   # minutes: 2 tiny steps

The dialogue's turns are the student's chat turns (prompt.dialogue) and the instruction goes
after its last human turn (prompt.chat "user_after"): this student ignores a system turn and obeys
an instruction placed there (the HH issue's probe). task.eval_size dialogues are held out for the
table; the reward models train on the other pairs (recipe "top": a Bradley-Terry head on the
frozen backbone, then its last 2 layers and final norm trained with it; the head alone is kept
if that does not beat it on a dev split of those pairs, where every choice is made). `:dev` answers
200 training dialogues instead (task.dev_size), where the placement, the budget, the meta-prompt
and the temperature are chosen before any table is run. Chosen there (results/real_hh_rlhf/
signal.md): the placement after the last human turn, row (b)'s instruction (the best of the 6
hand-written ones) and the teacher's temperature 0.7 (T 0.7 and 1.0 tried).
"""
from configs import common, real_gsm8k_cpu
from wst_jax import cache, reward_model
from wst_jax.data import assets
from wst_jax.data.batches import PLACEMENTS

VARIANTS = ("", "dev", "smoke")
META_PROMPT = (
    "Here is a conversation between a person and an AI assistant:\n\n{question}\n\nThe assistant "
    "will write the next reply. Do not write the reply. Write one short instruction for the "
    "assistant, a single sentence, such as \"Answer the question, but do not explain how to hurt "
    "anyone.\" or \"Be warm and brief.\" Reply with the instruction only.")
AFTER_LAST_TURN = (
    "Be helpful, and politely refuse anything that could cause harm.",
    "Be brief.",
    "Answer helpfully and honestly.",
    "If the request could cause harm, say briefly why you cannot help and offer a safe "
    "alternative.",
    "Be kind and respectful.",
    "Do not give instructions that could hurt anyone, but help with everything else.",
)
SYSTEM_TURN = AFTER_LAST_TURN[:2]


def reward_model_block(cache_dir: str, backbone: str = "") -> dict:
  """The reward model's recipe ("" = the student's backbone): "top", whose build compares the
  issue's two cheap candidates on a dev split of the training pairs and keeps the better one:
  a head on the frozen backbone (its L2 chosen on dev), and the last 2 layers and the final norm
  trained with it (the epoch chosen on dev). Both are reported on the held-out pairs, with the
  seconds of each stage."""
  return dict(cache_dir=cache_dir, recipe="top", top_layers=2, num_epochs=2, backbone=backbone,
              init="student", response_len=128, num_buckets=4, batch_size=8,
              head=dict(dev_fraction=0.2, l2=[1e-4, 1e-3, 1e-2, 1e-1], steps=500,
                        learning_rate=1e-2),
              optim=dict(learning_rate=2e-5, warmup_steps=20, final_lr_fraction=0.1, b1=0.9,
                         b2=0.98, weight_decay=0.0, max_grad_norm=1.0))


def get_config(arg: str = ""):
  if arg not in VARIANTS:
    raise ValueError(f"configs/real_hh_rlhf_cpu.py:{arg}: the variants are {VARIANTS}.")
  c = common.base_config()
  c.workdir = "runs/real_hh_rlhf_cpu" + (f"_{arg}" if arg else "")
  c.teacher.path, c.student.path = real_gsm8k_cpu.TEACHER, real_gsm8k_cpu.STUDENT
  c.teacher.dtypes = dict(dtype="bfloat16", param_dtype="float32")
  c.student.dtypes = dict(dtype="bfloat16", param_dtype="bfloat16")
  c.task.update(name="hh_rlhf", train_path=assets.locate("hh_rlhf/harmless-base-test.jsonl.gz"),
                eval_path="", eval_size=300, dev_size=200 if arg == "dev" else 0)
  c.prompt.update(PLACEMENTS["user_after"], teacher_template=META_PROMPT, dialogue=True,
                  human_instruction=AFTER_LAST_TURN[0])
  # Dialogues keep their last 256 student tokens; the student's prompt before the instruction
  # holds them with the chat template's turns (and its default system turn: Qwen adds one).
  c.data.update(question_len=256, teacher_prompt_len=448, student_prefix_len=384,
                student_suffix_len=16, rm_prompt_len=256, retokenized_instruction_len=48)
  c.rollout.update(instruction_len=40, answer_len=128, temperature=0.7, top_p=0.95)
  c.reward.update(kind="reward_model", model_path=reward_model.REFERENCE)
  cache_dir = str(cache.default_root())
  c.reward_model = reward_model_block(cache_dir)
  c.judge_model = reward_model_block(cache_dir, backbone=real_gsm8k_cpu.TEACHER)
  # Row (e): an untrained Qwen2.5-Coder-1.5B-Instruct teacher, as in the GSM8K table.
  c.eval.update(batch_size=64, judge_path=reward_model.JUDGE,
                teacher_path=real_gsm8k_cpu.LARGER_TEACHER)
  c.ppo.update(advantage="group", group_size=4, kl_coef=0.02, num_epochs=1, num_minibatches=2)
  c.optim.update(learning_rate=1e-5, warmup_steps=2, decay_steps=20)
  c.train.update(batch_size=8, num_steps=20, checkpoint_every=5, keep_checkpoints=2)
  c.probe = dict(instructions={"user_after": list(AFTER_LAST_TURN), "system": list(SYSTEM_TURN)},
                 meta_prompts=[META_PROMPT], temperatures=[0.7, 1.0])
  if arg == "smoke":   # minutes on CPU: the same models, short dialogues and budgets, reward
    # models on 32 pairs (reward_model.max_pairs) with one trained layer.
    c.task.update(eval_size=4, max_train=8)
    c.data.update(question_len=64, teacher_prompt_len=192, student_prefix_len=160,
                  rm_prompt_len=64, retokenized_instruction_len=16)
    c.rollout.update(instruction_len=8, answer_len=8)
    for block in (c.reward_model, c.judge_model):
      block.update(max_pairs=32, top_layers=1, num_epochs=1, response_len=16, num_buckets=1)
      block.optim.warmup_steps = 1
    c.ppo.update(group_size=2)
    c.train.update(batch_size=4, num_steps=2, checkpoint_every=1)
    c.eval.update(batch_size=4, bootstrap_samples=100, teacher_path="")
    c.probe.update(instructions={"user_after": list(AFTER_LAST_TURN[:1])}, temperatures=[1.0])
  return c
