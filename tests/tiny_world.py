"""A tiny offline world for step/train tests: a shared BPE tokenizer, a teacher and a student
saved as HF folders, and arithmetic questions. Built in seconds, inside the test's tmp dir."""
from __future__ import annotations

import random
from pathlib import Path

import jax
from flax import nnx

from configs import common
from wst_jax import checkpoints
from wst_jax.models import Decoder, DecoderConfig

PHRASES = (" Use the magic word.", " Be brief.", " Answer now.", " Think hard.")


def questions(n: int, seed: int = 0) -> list[dict]:
  rng = random.Random(seed)
  out = []
  for i in range(n):
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    out.append({"id": f"q{i}", "question": f"What is {a} plus {b}?", "answer": str(a + b),
                "solution": f"{a} + {b} = {a + b}\n#### {a + b}"})
  return out


def tokenizer(folder: Path):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = decoders.ByteLevel()
  corpus = [common.TEACHER_TEMPLATE, common.STUDENT_PREFIX, common.STUDENT_SUFFIX,
            common.HUMAN_INSTRUCTION, *PHRASES, "####"]
  corpus += [q["question"] + " " + q["solution"] for q in questions(200)]
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(corpus, trainer)
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                 eos_token="</s>")
  fast.save_pretrained(folder)
  return fast


def decoder_config(family: str, vocab: int, hidden: int, layers: int) -> DecoderConfig:
  heads = 4
  return DecoderConfig(
      family=family, model_type=family, vocab_size=vocab, hidden_size=hidden, num_layers=layers,
      num_heads=heads, num_kv_heads=heads if family == "gpt2" else 2, head_dim=hidden // heads,
      intermediate_size=2 * hidden, max_position_embeddings=256,
      norm_eps=1e-5, activation="gelu_new" if family == "gpt2" else "silu",
      qkv_bias=family == "gpt2", out_bias=family == "gpt2", mlp_bias=family == "gpt2",
      tie_word_embeddings=family == "gpt2", bos_token_id=1, eos_token_id=(2,), pad_token_id=0)


def make(folder: Path, seed: int = 0) -> dict[str, Path]:
  """Random-init teacher (gpt2) and student (llama) sharing a tokenizer, saved as HF folders."""
  folder = Path(folder)
  tok = tokenizer(folder / "tokenizer")
  vocab = len(tok)
  paths = {}
  for role, family, hidden, layers in [("teacher", "gpt2", 32, 1), ("student", "llama", 64, 2)]:
    model = Decoder(decoder_config(family, vocab, hidden, layers), rngs=nnx.Rngs(seed))
    paths[role] = checkpoints.save_decoder(model, folder / role, tokenizer=tok)
  return paths


def config(paths: dict[str, Path], workdir: Path):
  c = common.base_config()
  c.workdir = str(workdir)
  c.teacher.path, c.student.path = str(paths["teacher"]), str(paths["student"])
  c.task.name = "synthetic"
  c.task.eval_size = 16
  c.data.teacher_prompt_len, c.data.student_suffix_len = 40, 24
  c.rollout.instruction_len, c.rollout.answer_len = 6, 6
  c.train.batch_size, c.train.num_steps, c.train.checkpoint_every = 8, 4, 2
  c.eval.batch_size = 16
  c.optim.learning_rate, c.optim.warmup_steps = 1e-3, 1
  return c
