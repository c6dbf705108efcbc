"""The main job: WST on GSM8K-format word problems with the embedded default models, on CPU.

    python -m wst_jax.train --config configs/gsm8k_cpu.py   # 2 cores: ~16 min (first run builds
                                                            # the cached models), ~5 min after
    python -m wst_jax.train --config configs/gsm8k_cpu.py:tiny  # seconds: smoke test / notebook CI

The teacher and student are the embedded default (`configs/pretrain_cpu.py`: pretrained here,
cached). They are far too small for real GSM8K, so the teacher is trained on seeded synthetic
problems in GSM8K's format (question, worked solution, `#### N`), and the table is printed twice:
on held-out synthetic problems (where the instruction matters) and on real GSM8K test questions
(../shared/assets/gsm8k/test.jsonl), where these stand-in models score near zero whatever the
instruction. This exercises the full method; it does not reproduce the paper's numbers.
"""
from configs import common, pretrain_cpu
from wst_jax.data import assets


def get_config(arg: str = ""):
  if arg not in ("", "tiny"):
    raise ValueError(f"configs/gsm8k_cpu.py:{arg}: the variants are '' (default) and 'tiny'.")
  c = common.base_config()
  c.workdir = "runs/gsm8k_cpu" + ("_tiny" if arg else "")
  c.pretrain = pretrain_cpu.get_config(arg)
  c.prompt.update(c.pretrain.prompt.to_dict())

  c.task.update(name="synthetic", eval_size=400, max_train=4000, verifier="gsm8k")
  c.data.update(teacher_prompt_len=96, student_suffix_len=80, gold_len=16)
  c.rollout.update(instruction_len=16, answer_len=48, temperature=1.0)

  c.ppo.update(advantage="gae", gamma=1.0, lam=0.95, clip_eps=0.2, vf_coef=0.5, ent_coef=0.0,
               kl_coef=0.02, num_epochs=2, num_minibatches=2)
  c.optim.update(learning_rate=3e-4, warmup_steps=5, decay_steps=160, final_lr_fraction=0.1,
                 b2=0.99)
  c.mesh = dict(data=-1, fsdp=1, model=1)
  c.train.update(batch_size=32, num_steps=160, checkpoint_every=40, keep_checkpoints=2)
  c.eval.update(batch_size=100)
  # Also evaluate on real GSM8K test questions (the student's prompt must fit: long questions
  # need a longer student_suffix_len there).
  c.eval.extra_tasks = [dict(
      task=dict(name="gsm8k", eval_path=assets.locate("gsm8k/test.jsonl"), eval_size=100),
      data=dict(student_suffix_len=512, teacher_prompt_len=544))]
  if arg == "tiny":
    c.task.update(eval_size=16, max_train=64)
    c.train.update(batch_size=8, num_steps=4, checkpoint_every=2)
    c.eval.update(batch_size=16, bootstrap_samples=200)
    c.eval.extra_tasks[0]["task"]["eval_size"] = 16
  return c
