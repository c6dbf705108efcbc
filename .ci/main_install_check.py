"""The real-model prompt path with only the main install (`pip install -e .`, no [test] extra).

The test suite runs with the [test] extra, whose torch brings packages along: jinja2, which
transformers' `apply_chat_template` needs, was missing from the main install and no test saw it.
Here each zoo model CI fetches (tests/test_real_models.py; the 1.5B model shares the 0.5B's
tokenizer) builds a user turn in its chat template (`batches.user_turn_ids`), and
configs/real_gsm8k_cpu.py's teacher and student prompts are rendered in their models' templates
(`batches.chat_prompts`, as `experiment.Setup` does). .ci/run runs it in a venv of its own after
the tests, so the models are already in the cache:

    python .ci/main_install_check.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ is not installed

from configs import real_gsm8k_cpu  # noqa: E402
from wst_jax import checkpoints, zoo  # noqa: E402
from wst_jax.data import batches  # noqa: E402

MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m")
QUESTION = "What is 7 times 8?"
INSTRUCTION = " Think step by step."


def run_prompts(config, tokenizers: dict) -> dict[str, int]:
  """Token counts of the teacher and student prompts `config` (zoo teacher and student, chat
  prompts) builds for one question, rendered as `experiment.Setup` renders them."""
  teacher, student = (tokenizers[config[role].path.removeprefix("zoo:")]
                      for role in ("teacher", "student"))
  parts = batches.chat_prompts(config.prompt, teacher, student)
  texts = {"teacher": (teacher, parts["teacher_template"].format(question=QUESTION)),
           "student": (student, parts["student_prefix"] + INSTRUCTION
                       + parts["student_suffix"].format(question=QUESTION))}
  return {role: len(batches.segment_ids(tok, text)) for role, (tok, text) in texts.items()}


def main() -> None:
  tokenizers = {name: checkpoints.load_tokenizer(zoo.fetch(name)) for name in MODELS}
  for name, tokenizer in tokenizers.items():  # the chat template where there is one
    print(f"{name}: user turn of {len(batches.user_turn_ids(tokenizer, QUESTION))} tokens "
          f"({'chat template' if tokenizer.chat_template else 'no chat template'})")
  lengths = run_prompts(real_gsm8k_cpu.get_config("smoke"), tokenizers)
  print("configs/real_gsm8k_cpu.py prompts: " + ", ".join(f"{k} {v} tokens"
                                                          for k, v in lengths.items()))


if __name__ == "__main__":
  main()
