"""The embedded default models: synthetic problems, tokenizer, segment-wise prompts, pretraining
cache, HF folders. Pretraining runs on a TINY config (well under a minute); the real accuracies
are measured by `python -m wst_jax.pretrain --config configs/pretrain_cpu.py --check`."""
from __future__ import annotations

import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from cache_checks import assert_cache_hit
from configs import common, pretrain_cpu
from wst_jax import checkpoints, pretrain
from wst_jax import tokenizer as tokens
from wst_jax.data import synthetic
from wst_jax.data.batches import encode_examples
from wst_jax.models import positions_from_mask
from wst_jax.prompting import concat_left_padded, strip_stop



def tiny_config(cache_dir) -> ConfigDict:
  c = pretrain_cpu.get_config("tiny")
  c.cache_dir = str(cache_dir)
  return c


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  config = tiny_config(tmp_path_factory.mktemp("cache"))
  paths = pretrain.ensure_pretrained(config)
  return config, paths


# ------------------------------------------------------------------------------ problems

def _check_solution(example):
  *steps, final = example["solution"].split("\n")
  assert final == f"#### {example['answer']}"
  assert 2 <= len(steps) <= 3
  for line in steps:
    x, op, y, z = re.fullmatch(r"(\d+) ([-+*/]) (\d+) = (\d+)", line).groups()
    x, y, z = int(x), int(y), int(z)
    assert {"+": x + y, "-": x - y, "*": x * y, "/": x / y}[op] == z, line
  assert steps[-1].endswith(f"= {example['answer']}")


def test_problems_are_seeded_correct_and_split_by_question():
  train = synthetic.problems("train", 300, seed=0, stream="s")
  assert train == synthetic.problems("train", 300, seed=0, stream="s")
  assert train != synthetic.problems("train", 300, seed=1, stream="s")
  assert train != synthetic.problems("train", 300, seed=0, stream="other")
  evals = synthetic.problems("eval", 100, seed=0, stream="s")
  for example in train + evals:
    assert set(example) == {"id", "question", "answer", "solution"}
    _check_solution(example)
  # The split is a function of the question text: no eval question is ever a train question.
  assert all(synthetic.split_of(e["question"]) == "eval" for e in evals)
  other_train = synthetic.problems("train", 2000, seed=3, stream="pretrain")
  assert not {e["question"] for e in evals} & {e["question"] for e in train + other_train}
  assert len({e["id"] for e in train + evals}) == 400
  # Both 2-step and 3-step problems occur.
  assert len({re.sub(r"\d+", "N", e["solution"]).count("\n") for e in train}) == 2


def test_synthetic_task_for_the_registry():
  task = ConfigDict(dict(name="synthetic", eval_size=20, max_train=50))
  train, evals = synthetic.train_eval(task, seed=0)
  assert len(train) == 50 and len(evals) == 20
  assert not {e["question"] for e in train} & {e["question"] for e in evals}
  # Apart from the pretraining data.
  pre = synthetic.problems("train", 50, seed=0, stream=pretrain.PRETRAIN_STREAM)
  assert not {e["question"] for e in train} & {e["question"] for e in pre}


def test_instruction_pools():
  pool = synthetic.INSTRUCTION_POOL
  assert len(set(pool)) == len(pool)
  assert 16 <= len(pool) <= 24 and len(synthetic.WORKED_STEPS_PHRASES) == 4
  assert common.HUMAN_INSTRUCTION.strip() in synthetic.WORKED_STEPS_PHRASES


# ------------------------------------------------------------------------------ pretraining

def test_cache_hit_and_key(built, monkeypatch):
  config, paths = built
  assert set(paths) == {"teacher", "student", "tokenizer"}
  root = paths["student"].parent
  assert root.parent.name == "pretrained"
  assert_cache_hit(monkeypatch, pretrain, lambda: pretrain.ensure_pretrained(config), paths, root)
  # cache_dir is not part of the key; everything else is.
  moved = ConfigDict(config.to_dict())
  moved.cache_dir = "/elsewhere"
  assert pretrain.cache_key(moved) == pretrain.cache_key(config)
  changed = ConfigDict(config.to_dict())
  changed.student.num_steps += 1
  assert pretrain.cache_key(changed) != pretrain.cache_key(config)


def test_cache_key_follows_the_data_content_not_its_path(tmp_path):
  """Every clone (wherever ../shared lies) finds the same entry; other data, another entry."""
  config = pretrain_cpu.get_config()
  copy = tmp_path / "train.jsonl"
  shutil.copy(config.tokenizer.gsm8k_path, copy)
  moved = ConfigDict(config.to_dict())
  moved.tokenizer.gsm8k_path = str(copy)
  assert pretrain.cache_key(moved) == pretrain.cache_key(config)
  with open(copy, "a") as f:
    f.write('{"question": "q", "answer": "#### 1"}\n')
  assert pretrain.cache_key(moved) != pretrain.cache_key(config)


def test_bucketed_batches_use_the_shortest_bucket():
  train = ConfigDict(dict(seq_lens=(8, 4), target_len=3, batch_size=2))
  prompts = [[5] * 2, [5] * 3, [5] * 5, [5] * 6, [5] * 2]
  targets = [[7], [7], [7, 7], [7], [7]]  # lengths 3, 4, 7, 7, 3
  batches = pretrain.bucketed_batches(prompts, targets, train, 0, "student",
                                      np.random.default_rng(0))
  # Bucket 4 holds rows 0, 1, 4 (one full batch, one row dropped), bucket 8 rows 2 and 3.
  assert sorted(b["ids"].shape for b in batches) == [(2, 4), (2, 8)]
  assert sum(int(b["weight"].sum()) for b in batches) == 1 + 1 + 2 + 1
  with pytest.raises(ValueError, match="student.seq_lens"):
    pretrain.bucketed_batches([[5] * 9], [[7]], ConfigDict(dict(train.to_dict(), batch_size=1)), 0,
                              "student", np.random.default_rng(0))


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
  config = tiny_config(tmp_path)

  def crash(config, folder):
    (folder / "tokenizer").mkdir()
    raise RuntimeError("killed mid-build")
  monkeypatch.setattr(pretrain, "build", crash)
  with pytest.raises(RuntimeError):
    pretrain.ensure_pretrained(config)
  assert list((tmp_path / "pretrained").iterdir()) == []


def test_folders_load_in_ours_and_transformers(built):
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  _, paths = built
  tok = AutoTokenizer.from_pretrained(str(paths["tokenizer"]), local_files_only=True)
  assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
  assert tok.convert_ids_to_tokens(tok.encode("2024 + 7", add_special_tokens=False)) == [
      "2", "0", "2", "4", "Ġ+", "Ġ", "7"]  # one token per digit
  ids = tok.encode("Question: Tom has 3 boxes.\nAnswer: 3 * 4 = 12", add_special_tokens=False)
  for role, family in [("teacher", "gpt2"), ("student", "llama")]:
    ours = checkpoints.load_decoder(paths[role])
    assert ours.cfg.family == family
    assert checkpoints.load_tokenizer(paths[role]).get_vocab() == tok.get_vocab()
    x = jnp.asarray([ids], jnp.int32)
    mask = jnp.ones_like(x, bool)
    logits = np.asarray(ours(x, positions_from_mask(mask), mask)[0])
    hf = AutoModelForCausalLM.from_pretrained(str(paths[role]), local_files_only=True)
    with torch.no_grad():
      ref = hf(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(logits, ref, atol=2e-4, rtol=1e-4)


def test_pretraining_rows_are_the_rl_steps_segments(built):
  """What the student was trained on is bit for bit what the RL step assembles in-jit."""
  config, paths = built
  tok = checkpoints.load_tokenizer(paths["tokenizer"])
  examples = synthetic.problems("eval", 6, seed=0, stream="s")
  phrases = ["", *synthetic.INSTRUCTION_POOL[:5]]
  prompts, targets = pretrain.student_rows(tok, examples, config, np.random.default_rng(0))
  rows = pretrain.pack(prompts, targets, max(config.student.seq_lens),
                       config.student.target_len, tok.pad_token_id, "student")
  for i, (p, t) in enumerate(zip(prompts, targets)):
    assert rows["ids"][i, :len(p) + len(t)].tolist() == p + t
    assert rows["label"][i, rows["weight"][i]].tolist() == t
    assert rows["ids"][i, rows["at"][i, rows["weight"][i]] + 1].tolist() == t
  # The RL data pipeline (question segments) and the step's in-jit concatenation.
  rl = common.base_config()
  rl.prompt.update(config.prompt.to_dict())
  rl.data.update(teacher_prompt_len=96, student_suffix_len=96)
  batch = encode_examples(examples, tok, tok, rl)
  written = [tokens.target_ids(tok, p) if p else [tok.eos_token_id] for p in phrases]
  width = max(map(len, written))
  instruction = np.full((len(phrases), width), tok.pad_token_id, np.int32)
  for i, w in enumerate(written):
    instruction[i, :len(w)] = w
  ids, mask = strip_stop(jnp.asarray(instruction), jnp.asarray(instruction != tok.pad_token_id),
                         (tok.eos_token_id,))
  prompt, prompt_mask = concat_left_padded((batch["student_prefix"], batch["student_prefix_mask"]),
                                           (ids, mask), (batch["student_suffix"],
                                                         batch["student_suffix_mask"]))
  for i, (example, phrase) in enumerate(zip(examples, phrases)):
    expected = tokens.student_prompt_ids(tok, tokens.instruction_ids(tok, phrase),
                                         example["question"], config.prompt)
    assert np.asarray(prompt[i])[np.asarray(prompt_mask[i])].tolist() == expected
    teacher = batch["teacher_prompt"][i][batch["teacher_prompt_mask"][i]].tolist()
    assert teacher == tokens.teacher_prompt_ids(tok, example["question"], config.prompt)


def test_check_runs_and_teacher_writes_pool_phrases(built):
  config, paths = built
  report = pretrain.check(config, paths)
  accuracy = report["student_accuracy"]
  assert set(accuracy) == {"none", "worked", "direct"}
  assert set(accuracy["worked"]) == set(synthetic.WORKED_STEPS_PHRASES)
  assert all(0 <= a <= 1 for group in accuracy.values() for a in group.values())
  teacher = report["teacher"]
  assert teacher["samples"] == config.check.num_problems * config.check.teacher_samples
  assert teacher["in_pool"] >= 0.5, teacher
  assert sum(teacher["counts"].values()) == round(teacher["in_pool"] * teacher["samples"])
