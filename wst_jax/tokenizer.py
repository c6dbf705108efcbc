"""The embedded default's tokenizer, and the segment-wise prompt layout both models are trained on.

Tokenizer: byte-level BPE trained with `tokenizers`, digits split one per token (so arithmetic
is over digits, not over whatever number chunks BPE happened to merge), saved as a
`PreTrainedTokenizerFast` folder that `AutoTokenizer.from_pretrained(dir, local_files_only=True)`
reads offline.

Prompts are concatenations of separately tokenized segments, because the RL step concatenates
token ids inside jit (teacher's instruction ids between the student's prefix and suffix ids).
Pretraining builds its sequences with these same functions, so what the student sees during RL
is bit for bit what it was trained on. `prompt` is the config's prompt block (fields
teacher_template, student_prefix, student_suffix).
"""
from __future__ import annotations

from typing import Iterable

from wst_jax.data.batches import segment_ids

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int):
  """Byte-level BPE over `texts` with individual digits -> PreTrainedTokenizerFast (pad/bos/eos
  set; ids 0/1/2)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                special_tokens=list(SPECIAL_TOKENS.values()),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def instruction_ids(tokenizer, instruction: str) -> list[int]:
  """An instruction as the teacher writes it after "Instruction:": ids(" " + instruction);
  the empty instruction is no tokens at all."""
  return segment_ids(tokenizer, " " + instruction) if instruction else []


def teacher_prompt_ids(tokenizer, question: str, prompt) -> list[int]:
  """The teacher's meta-prompt: ids(teacher_template.format(question))."""
  return segment_ids(tokenizer, prompt.teacher_template.format(question=question))


def student_prompt_ids(tokenizer, instruction: list[int], question: str, prompt) -> list[int]:
  """ids(student_prefix.format(question)) + instruction ids + ids(student_suffix.format(question))
  (the plain-text prompts of the embedded default models: no instruction_sep)."""
  return (segment_ids(tokenizer, prompt.student_prefix.format(question=question))
          + list(instruction)
          + segment_ids(tokenizer, prompt.student_suffix.format(question=question)))


def target_ids(tokenizer, text: str) -> list[int]:
  """What a model writes after its prompt: ids(" " + text) + [eos] (the teacher's instruction,
  the student's answer)."""
  return segment_ids(tokenizer, " " + text) + [tokenizer.eos_token_id]
