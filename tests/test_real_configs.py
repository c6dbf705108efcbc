"""The real-model configs: chat-template prompts that fit every GSM8K question, the GPU config's
memory plans, and two WST steps of the GPU config's code path on CPU."""
import json
import math

import jax
import numpy as np
import pytest

from configs import real_gsm8k_cpu, real_gsm8k_gpu, real_gsm8k_v2_cpu
from wst_jax import checkpoints, plan, probe, zoo
from wst_jax.data import batches, tasks
from wst_jax.data.assets import resolve
from wst_jax.step import Rollout, student_prompts


@pytest.fixture(scope="module")
def tokenizers():
  return {ref: checkpoints.load_tokenizer(zoo.resolve(ref))
          for ref in (real_gsm8k_cpu.TEACHER, real_gsm8k_cpu.STUDENT)}


def test_chat_prompts_wrap_each_models_template(tokenizers):
  config = real_gsm8k_cpu.get_config()
  teacher, student = tokenizers[config.teacher.path], tokenizers[config.student.path]
  prompt = batches.chat_prompts(config.prompt, teacher, student)
  question = "What is 7 times 8?"
  # The teacher reads its meta-prompt and the question as a user turn and replies.
  assert prompt["teacher_template"].format(question=question) == teacher.apply_chat_template(
      [{"role": "user", "content": config.prompt.teacher_template.format(question=question)}],
      tokenize=False, add_generation_prompt=True)
  # The student reads the instruction as its system turn and the question as its user turn.
  instruction = "Add the numbers step by step."
  assert (prompt["student_prefix"] + instruction +
          prompt["student_suffix"].format(question=question)) == student.apply_chat_template(
              [{"role": "system", "content": instruction}, {"role": "user", "content": question}],
              tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("placement", sorted(batches.PLACEMENTS))
def test_student_prompt_places_the_instruction_as_the_template_says(tokenizers, placement):
  """The student prompt assembled in jit, token segment by segment, reads as the chat template
  renders the turns of each placement; with no instruction, the separator goes too, and the
  prompt is the question alone."""
  config = real_gsm8k_cpu.get_config()
  config.prompt.update(batches.PLACEMENTS[placement])
  teacher, student = tokenizers[config.teacher.path], tokenizers[config.student.path]
  config.prompt.update(batches.chat_prompts(config.prompt, teacher, student), chat="")
  rollout = Rollout.from_config(config, teacher, student)
  question, instruction = "What is 7 times 8?", "Add the numbers step by step."
  arrays = batches.encode_examples([{"question": question, "answer": "56"}] * 2, teacher,
                                   student, config)
  ids = batches.segment_ids(student, instruction)
  given = np.asarray([ids, ids], np.int32), np.asarray([[True] * len(ids), [False] * len(ids)])
  prompt, mask = jax.device_get(jax.jit(student_prompts, static_argnums=3)(
      {k: v for k, v in arrays.items() if k.startswith("student_")}, *given, rollout))
  texts = [student.decode(row[m].tolist()) for row, m in zip(prompt, mask)]
  sep = batches.PLACEMENTS[placement]["instruction_sep"]
  user = lambda text: {"role": "user", "content": text}
  turns = {"system": [{"role": "system", "content": instruction}, user(question)],
           "user_before": [user(instruction + sep + question)],
           "user_after": [user(question + sep + instruction)]}[placement]
  alone = ([{"role": "system", "content": ""}] if placement == "system" else []) + [user(question)]
  render = lambda messages: student.apply_chat_template(messages, tokenize=False,
                                                        add_generation_prompt=True)
  assert texts == [render(turns), render(alone)]


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("round_config", [real_gsm8k_cpu, real_gsm8k_v2_cpu])
def test_every_gsm8k_question_fits_the_token_budgets(tokenizers, split, round_config):
  config = round_config.get_config()
  teacher, student = tokenizers[config.teacher.path], tokenizers[config.student.path]
  config.prompt.update(batches.chat_prompts(config.prompt, teacher, student), chat="")
  path = config.task.train_path if split == "train" else config.task.eval_path
  examples = tasks.read_task("gsm8k", resolve(path), split=split)
  arrays = batches.encode_examples(examples, teacher, student, config)   # raises if one is long
  assert arrays["teacher_prompt"].shape == (len(examples), config.data.teacher_prompt_len)
  # The budgets are not wildly loose either: the longest prompt uses most of its budget.
  assert arrays["teacher_prompt_mask"].sum(1).max() > 0.6 * config.data.teacher_prompt_len


def test_gpu_config_24gb_variant_plans_to_fit_and_the_default_does_not_fit_there():
  # (The 80 GB default's own plan is checked with the other sized configs in test_configs.py.)
  small = real_gsm8k_gpu.get_config("24gb")
  fits = plan.make_plan(small, 1)
  plan.check_fits(fits)
  assert fits.models["teacher"].num_layers == 24 and fits.models["student"].num_layers == 28
  with pytest.raises(plan.PlanError):
    plan.check_fits(plan.make_plan(real_gsm8k_gpu.get_config(), 1, small.plan.device_memory_gib))


def test_gpu_config_smoke_two_steps_on_cpu(tmp_path):
  from wst_jax import train
  config = real_gsm8k_gpu.get_config("smoke")
  last = train.train(config, tmp_path)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
  assert last["instruction_len"] > 0 and last["answer_len"] > 0
  assert any(text.strip() for text in rows[0]["instructions"])   # real text from a real model
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]


def test_probe_rows_on_real_models_resume_from_their_records(tmp_path):
  """`wst_jax.probe` on SmolLM2 (both roles, the :smoke sizes): every row is scored and recorded
  per question; a rerun answers nothing again (the records are complete), also with another
  prompt.human_instruction, and gives the table."""
  config = real_gsm8k_gpu.get_config("smoke")
  texts = ["Let's think step by step.", "Reply with the number only."]
  config.probe = dict(instructions={"system": texts, "user_after": texts})
  config.task.update(eval_path="", eval_size=4)
  table = probe.probe(config, tmp_path)
  names = [r["row"] for r in table]
  assert names == [name for name, *_ in probe.probe_rows(config)] and len(names) == 5
  assert all(r["n"] == 4 and 0 < r["answer_tokens"] <= config.rollout.answer_len for r in table)
  records = sorted((tmp_path / "probe").glob("*.jsonl"))
  assert len(records) == 5 and all(len(p.read_text().splitlines()) == 4 for p in records)
  # The two placements give the student different prompts, so the answers differ somewhere.
  answers = {p.name: [json.loads(line)["answer"] for line in p.read_text().splitlines()]
             for p in records}
  assert len({tuple(a) for a in answers.values()}) > 1
  before = {p: p.read_text() for p in records}
  # Row (b)'s instruction is set from the probe's result; no probe row reads it.
  config.prompt.human_instruction = "Reply with the number only."
  assert probe.probe(config, tmp_path) == table
  assert {p: p.read_text() for p in (tmp_path / "probe").glob("*.jsonl")} == before
  signal = (tmp_path / "signal.md").read_text()
  assert sum(line.startswith("| ") for line in signal.splitlines()) == 1 + 5  # header, rows
  # The headroom and the go check: chosen on the first 2 questions, scored on the other 2.
  assert "Oracle over the 4 hand-written instructions" in signal
  assert "the untrained teacher's included" not in signal   # no teacher row: one oracle line
  assert "Chosen on the first 2 questions" in signal and "On the other 2:" in signal


def test_eval_row_e_teacher_has_its_own_tokenizer_and_chat_template(tmp_path):
  """Row (e) with a teacher whose vocabulary differs from the trained teacher's (Qwen's against
  SmolLM2's): its prompts are rendered in its own chat template and encoded by its own tokenizer,
  and the row is scored on the same questions as the others, by the same student, not loaded
  again, and with no KL reference (only training reads it)."""
  from wst_jax import eval as wst_eval
  from wst_jax.experiment import Setup
  config = real_gsm8k_cpu.get_config("smoke")
  config.eval.teacher_path = real_gsm8k_cpu.STUDENT
  config.task.update(eval_size=2)
  setup = Setup(config)
  other = wst_eval.teacher_setup(config, setup)
  assert other.frozen["student"] is setup.frozen["student"] and other.tokenizer is setup.tokenizer
  assert "reference" not in other.frozen and "reference" not in setup.frozen
  arrays = other.encode(other.task.eval)
  prompts = [other.teacher_tokenizer.decode(ids[mask].tolist())
             for ids, mask in zip(arrays["teacher_prompt"], arrays["teacher_prompt_mask"])]
  assert all(p.startswith("<|im_start|>system") and "<|im_start|>assistant" in p for p in prompts)
  assert all(ex["question"][-40:] in p for ex, p in zip(other.task.eval, prompts))
  result = wst_eval.evaluate(config, tmp_path, setup=setup)
  [table] = result["tables"]
  assert [r["source"][:3] for r in table["rows"]] == ["(a)", "(b)", "(c)", "(e)"]
  row = table["rows"][-1]
  assert row["source"] == f"(e) teacher {real_gsm8k_cpu.STUDENT}"
  assert row["n"] == 2 and row["instruction_tokens"] > 0
  assert set(table["instructions"]) == {table["rows"][2]["source"], row["source"]}
