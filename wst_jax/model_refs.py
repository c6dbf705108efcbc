"""Where a config's language-model reference points (teacher.path, student.path,
eval.teacher_path): a local HF folder or .gguf file, built or fetched on first use.

  * "pretrained:teacher" / "pretrained:student": the embedded default, pretrained from
    config.pretrain and cached (`pretrain.ensure_pretrained`);
  * "zoo:NAME", a hub repo id, a local folder or .gguf file: `zoo.resolve`.

The reward model ("pretrained:reward_model") is trained from the student resolved here
(`reward_model.ensure_reward_model`); `experiment.resolve_model_ref` takes every reference.
Imports run one way: pretrain, zoo <- model_refs <- reward_model <- experiment.
"""
from __future__ import annotations

from pathlib import Path

from wst_jax import pretrain, zoo
from wst_jax.errors import ConfigError

PRETRAINED = "pretrained:"
LANGUAGE_MODELS = ("teacher", "student")


def resolve(ref, config) -> Path:
  """A language-model reference of `config` -> the local folder or .gguf file it names."""
  ref = str(ref)
  if not ref.startswith(PRETRAINED):
    return zoo.resolve(ref)
  name = ref.removeprefix(PRETRAINED)
  if name not in LANGUAGE_MODELS:
    raise ConfigError(f"model reference {ref!r}: {PRETRAINED!r} names teacher, student or (as "
                      "config.reward.model_path) reward_model.")
  return pretrain.ensure_pretrained(config.pretrain)[name]
