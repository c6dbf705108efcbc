"""The embedded default models, pretrained on a 2-core CPU in about 12 minutes (measured 11.5).

    python -m wst_jax.pretrain --config configs/pretrain_cpu.py [--check]
    python -m wst_jax.pretrain --config configs/pretrain_cpu.py:tiny   # seconds, for tests


A llama-family student that answers synthetic word problems directly (mostly wrong) unless a
worked-steps instruction makes it write one step per line (mostly right), and a gpt2-family
teacher, several times smaller, that writes a phrase of the instruction pool uniformly. RL configs
use it as their `pretrain` block (teacher.path / student.path = "pretrained:teacher|student").
Model blocks are Hugging Face config.json fields; vocab size and special ids come from the
tokenizer.
"""
import os

import ml_collections

from configs import common
from wst_jax.data import assets


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """arg "tiny": a seconds-long build of tiny models (tests, the notebook in CI)."""
  if arg not in ("", "tiny"):
    raise ValueError(f"configs/pretrain_cpu.py:{arg}: the variants are '' (default) and 'tiny'.")
  c = ml_collections.ConfigDict()
  # Where the built folders are cached; not part of the cache key.
  c.cache_dir = os.environ.get("WST_CACHE", "~/.cache/wst_jax")
  c.seed = 0
  c.prompt = dict(teacher_template=common.TEACHER_TEMPLATE, student_prefix=common.STUDENT_PREFIX,
                  student_suffix=common.STUDENT_SUFFIX)

  # BPE over synthetic training sequences, the instruction pool and GSM8K train text
  # (gsm8k_path "" = synthetic text only).
  c.tokenizer = dict(vocab_size=2000, num_problems=4000,
                     gsm8k_path=assets.locate("gsm8k/train.jsonl"))

  # Every problem is seen once: num_steps * batch_size problems, in batches of one of seq_lens
  # (the shortest that holds a row; target_len bounds the answer). Mixture: the share of rows
  # whose instruction is a worked-steps phrase (-> worked solution), a direct / neutral phrase
  # or nothing (both -> "#### N").
  c.student = dict(
      model=dict(model_type="llama", hidden_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, intermediate_size=384,
                 max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0),
      mixture=dict(worked=0.7, direct=0.15, none=0.15),
      seq_lens=(56, 72, 88, 96), target_len=40, batch_size=64, num_steps=700,
      optim=dict(learning_rate=2e-3, warmup_steps=25, final_lr_fraction=0.1, b1=0.9, b2=0.98,
                 weight_decay=0.01, max_grad_norm=1.0))
  # The teacher's target is a pool phrase drawn uniformly, whatever the question.
  c.teacher = dict(
      model=dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_inner=256,
                 n_positions=256, layer_norm_epsilon=1e-5, activation_function="gelu_new"),
      seq_lens=(56, 64, 72), target_len=16, batch_size=64, num_steps=300,
      optim=dict(learning_rate=6e-3, warmup_steps=10, final_lr_fraction=0.1, b1=0.9, b2=0.98,
                 weight_decay=0.01, max_grad_norm=1.0))

  # `--check`: greedy student accuracy on held-out problems per instruction, and the phrases the
  # teacher samples (temperature 1).
  c.check = dict(num_problems=200, direct_phrases=3, prompt_len=80, answer_len=48,
                 teacher_samples=4, instruction_len=16)
  if arg == "tiny":
    c.tokenizer.update(vocab_size=600, num_problems=400, gsm8k_path="")
    c.student.update(seq_lens=(96, 160), target_len=64, batch_size=32, num_steps=40)
    c.student.model.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=1, intermediate_size=64)
    c.student.optim.warmup_steps = 4
    c.teacher.update(seq_lens=(128,), target_len=24, batch_size=32, num_steps=200)
    c.teacher.model.update(n_embd=64, n_layer=1, n_head=2, n_inner=128)
    c.teacher.optim.update(learning_rate=1e-2, warmup_steps=10)
    c.check.update(num_problems=16, direct_phrases=1, prompt_len=128, answer_len=16,
                   teacher_samples=8, instruction_len=24)
  return c
