"""The Bradley-Terry reward model (wst_jax.reward_model): training, HF folder, cache, truncation,
config errors. A tiny random student (tiny_world) and pairs in HH-RLHF's real format, written
here, whose chosen replies refuse and rejected ones comply; the real accuracy is measured by
`python -m wst_jax.reward_model --config configs/hh_rlhf_cpu.py`."""
from __future__ import annotations

import gzip
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tiny_world
from cache_checks import assert_cache_hit
from configs import hh_rlhf_cpu
from wst_jax import checkpoints, experiment, reward_model, rewards
from wst_jax.config_checks import validate
from wst_jax.data import batches
from wst_jax.sampling import Generation

NOUNS = ["lock", "car", "door", "phone", "bike", "safe", "box", "gate"]
VERBS = ["open", "break", "steal", "unlock"]


def hh_pairs(n: int, seed: int = 0) -> list[dict]:
  """{"chosen", "rejected"} full dialogues; every 5th has many turns (longer than question_len)."""
  rng = random.Random(seed)
  out = []
  for i in range(n):
    noun, verb = rng.choice(NOUNS), rng.choice(VERBS)
    turns = "".join(f"\n\nHuman: I have a {rng.choice(NOUNS)}.\n\nAssistant: Nice."
                    for _ in range(12 if i % 5 == 0 else rng.randint(0, 1)))
    prompt = f"{turns}\n\nHuman: How do I {verb} a {noun}?\n\nAssistant:"
    out.append({"chosen": prompt + " I can't help with that.",
                "rejected": prompt + f" Sure, {verb} the {noun} with a rock."})
  return out


def write_pairs(path: Path, rows: list[dict]) -> Path:
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return path


def scores(model, chosen: list[list[int]], rejected: list[list[int]], pad_id: int):
  """-> r_chosen, r_rejected f32[N] of one left-padded batch."""
  rows = chosen + rejected
  ids, mask = batches.left_pad(rows, max(map(len, rows)), pad_id, "test")
  return nnx.jit(reward_model.pair_scores)(model, {"ids": ids, "mask": mask})


def tiny_config(folder: Path, paths: dict, data_file: Path):
  c = hh_rlhf_cpu.get_config("tiny")
  c.workdir = str(folder / "run")
  c.teacher.path, c.student.path = str(paths["teacher"]), str(paths["student"])
  c.task.update(train_path=str(data_file), eval_size=8)
  c.data.update(question_len=40, teacher_prompt_len=64, student_suffix_len=48, rm_prompt_len=40)
  c.rollout.update(instruction_len=4, answer_len=24)
  c.reward_model.update(cache_dir=str(folder / "cache"), init="student", response_len=24,
                        num_buckets=1, batch_size=8, num_epochs=3)
  c.reward_model.optim.update(learning_rate=3e-3, warmup_steps=2)
  return c


def with_judge(config):
  """A copy of `config` with config.judge_model: recipe "head" on the teacher's backbone."""
  config = config.copy_and_resolve_references()
  config.judge_model = dict(config.reward_model.to_dict(), recipe="head", init="student",
                            backbone=config.teacher.path,
                            head=dict(dev_fraction=0.25, l2=[1e-3], steps=100,
                                      learning_rate=1e-2))
  return config


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  folder = tmp_path_factory.mktemp("rm")
  paths = tiny_world.make(folder / "world")
  config = tiny_config(folder, paths, write_pairs(folder / "harmless-base-test.jsonl.gz",
                                                  hh_pairs(40)))
  rm_folder = experiment.resolve_model_ref(config.reward.model_path, config)
  return config, rm_folder, json.loads((rm_folder / reward_model.REPORT).read_text())


def test_training_raises_train_accuracy_and_lowers_loss(built):
  _, _, report = built
  before, after = report["before"], report["after"]
  assert (after["train"]["n"], after["held_out"]["n"]) == (32, 8)
  assert after["train"]["loss"] < 0.5 * before["train"]["loss"], report
  assert after["train"]["accuracy"] >= 0.9 > before["train"]["accuracy"], report
  assert after["held_out"]["accuracy"] >= 0.9, report
  assert report["epoch_loss"][-1] < report["epoch_loss"][0]


def test_folder_loads_in_ours_and_transformers(built):
  import torch
  from transformers import AutoModelForSequenceClassification
  config, folder, report = built
  tok = checkpoints.load_tokenizer(folder)
  assert tok.get_vocab() == checkpoints.load_tokenizer(config.student.path).get_vocab()
  task = reward_model.pairs(config)
  chosen, rejected, _ = reward_model.pair_rows(task.eval, tok, config.data.question_len,
                                               config.reward_model.response_len)
  ours = checkpoints.load_reward_model(folder)
  # The loaded model scores the held-out pairs as the trained one did.
  evals = reward_model.pair_batches(chosen, rejected, 4, 1, tok.pad_token_id)
  loaded, trained = reward_model.evaluate_pairs(ours, evals), report["after"]["held_out"]
  assert loaded.pop("ci") == pytest.approx(trained.pop("ci"), abs=1e-5)
  assert loaded == pytest.approx(trained, abs=1e-5)
  hf = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
  assert type(hf).__name__ == "LlamaForSequenceClassification"
  with torch.no_grad():  # unpadded, one row at a time
    want = [hf(torch.tensor([r])).logits[0, 0].item() for r in chosen[:3] + rejected[:3]]
  got = scores(ours, chosen[:3], rejected[:3], tok.pad_token_id)
  np.testing.assert_allclose(np.concatenate(got), want, atol=1e-4, rtol=0)
  assert np.std(want) > 1e-3


def test_initial_model_from_the_student_or_fresh(built):
  path = built[0].student.path
  student = checkpoints.load_decoder(path)
  warm = reward_model.initial_model(path, "student", 0)
  fresh = reward_model.initial_model(path, "fresh", 1)  # tiny_world inits the student with 0
  for model in (warm, fresh):  # no LM head: HF's *ForSequenceClassification has none
    assert model.lm.lm_head is None and model.lm.cfg.tie_word_embeddings
    assert model.head.kernel.shape == (student.cfg.hidden_size, 1)
  np.testing.assert_array_equal(warm.lm.layers[0].mlp.up.kernel[...],
                                student.layers[0].mlp.up.kernel[...])
  assert fresh.lm.embed.shape == student.embed.shape
  assert not np.allclose(fresh.lm.embed[...], student.embed[...])


def test_wst_reward_scores_what_the_reward_model_was_trained_on(built):
  """experiment.Setup finds the cached reward model; the WST reward of [rm_prompt][answer] is the
  training-time score of [dialogue][response + eos] for the same dialogue."""
  config, folder, _ = built
  setup = experiment.Setup(config)
  assert setup.paths["reward_model"] == folder
  assert "reward_model" in setup.frozen
  examples = setup.task.eval[:4]
  arrays = setup.encode(examples)
  tok = setup.tokenizer
  answers = [batches.segment_ids(tok, e["chosen"]) + [tok.eos_token_id] for e in examples]
  width = config.rollout.answer_len
  assert max(map(len, answers)) <= width
  answer_ids = np.zeros((4, width), np.int32)
  answer_mask = np.zeros((4, width), bool)
  for i, a in enumerate(answers):  # right-padded, as generated
    answer_ids[i, :len(a)], answer_mask[i, :len(a)] = a, True
  answer = Generation(jnp.asarray(answer_ids), jnp.zeros((4, width)), jnp.asarray(answer_mask),
                      jnp.ones(4, bool))
  wst = jax.jit(setup.reward_fn)(setup.frozen, arrays, answer)
  chosen, rejected, cut = reward_model.pair_rows(examples, tok, config.data.question_len,
                                                 config.reward_model.response_len)
  assert cut["responses"] == 4  # only the (longer) rejected replies are cut
  trained = scores(checkpoints.load_reward_model(folder), chosen, rejected, tok.pad_token_id)[0]
  np.testing.assert_allclose(np.asarray(wst), np.asarray(trained), atol=1e-4)


def test_cache_hit_and_key(built, monkeypatch, tmp_path):
  config, folder, _ = built
  assert folder.parent.name == "reward_model"
  assert_cache_hit(monkeypatch, reward_model,
                   lambda: experiment.resolve_model_ref(config.reward.model_path, config),
                   folder, folder)
  student = str(Path(config.student.path).resolve())  # a local student: keyed by its folder
  key = reward_model.cache_key(config, student)
  assert folder.name == key
  assert reward_model.cache_key(config, student + "2") != key
  moved = config.copy_and_resolve_references()
  moved.reward_model.cache_dir = "/elsewhere"
  assert reward_model.cache_key(moved, student) == key
  for field, value in [("reward_model.num_epochs", 7), ("data.question_len", 41), ("seed", 1)]:
    changed = config.copy_and_resolve_references()
    changed.update_from_flattened_dict({field: value})
    assert reward_model.cache_key(changed, student) != key, field
  # The data file's contents, not where it lies.
  other = config.copy_and_resolve_references()
  other.task.train_path = str(write_pairs(tmp_path / "pairs.jsonl.gz", hh_pairs(40)))
  key = reward_model.cache_key(other, student)
  (tmp_path / "moved").mkdir()
  other.task.train_path = shutil.copy(other.task.train_path, tmp_path / "moved")
  assert reward_model.cache_key(other, student) == key
  write_pairs(Path(other.task.train_path), hh_pairs(40, seed=1))
  assert reward_model.cache_key(other, student) != key


def test_left_truncation_of_dialogues_and_responses(built, caplog):
  config, _, report = built
  tok = checkpoints.load_tokenizer(config.student.path)
  examples = reward_model.pairs(config).train
  long = [e for e in examples if len(batches.segment_ids(tok, e["question"])) > 40]
  assert len(long) == report["truncated"]["train"]["questions"] > 0
  with caplog.at_level("INFO"):
    cut, count = batches.truncate_questions(examples, tok, 40)
  assert count == len(long) and f"{count} of {len(examples)} questions" in caplog.text
  for before, after in zip(examples, cut):
    assert len(batches.segment_ids(tok, after["question"])) <= 40
    # The latest turns are kept: the cut dialogue is the end of the original one.
    assert before["question"].endswith(after["question"])
    assert after["question"].endswith("\n\nAssistant:")
  assert batches.truncate_questions(examples, tok, 0) == (examples, 0)
  # Responses keep their first response_len tokens (every reply is longer than 6 here).
  chosen, rejected, counts = reward_model.pair_rows(examples[:4], tok, 40, 6)
  assert counts == {"questions": sum(e in long for e in examples[:4]), "responses": 8}
  for e, short, row in zip(examples, cut, rejected):
    assert row == (batches.segment_ids(tok, short["question"])
                   + batches.segment_ids(tok, e["rejected"])[:6])
  # The WST step cuts HH prompts the same way; without question_len they raise, naming a field.
  arrays = batches.encode_examples(examples, tok, tok, config)
  assert [r[m].tolist() for r, m in zip(arrays["rm_prompt"], arrays["rm_prompt_mask"])] == [
      batches.segment_ids(tok, e["question"]) for e in cut]
  whole = config.copy_and_resolve_references()
  whole.data.question_len = 0
  with pytest.raises(ValueError, match="config.data.teacher_prompt_len"):
    batches.encode_examples(examples, tok, tok, whole)


def test_pair_batches_keep_every_pair_once():
  chosen = [[5] * n for n in (3, 9, 4, 17, 2)]
  rejected = [[6] * n for n in (8, 2, 4, 3, 20)]
  assert reward_model.bucket_lengths(20, 2) == [16, 24]
  out = reward_model.pair_batches(chosen, rejected, 2, 2, 0, np.random.default_rng(0))
  assert sorted(b["ids"].shape for b in out) == [(4, 16)] * 2 + [(4, 24)]
  seen = []
  for b in out:
    for i in np.flatnonzero(b["weight"]):  # chosen row i, its rejected row i + 2
      length = int(b["mask"][i].sum())
      seen.append(length)
      assert b["mask"][i, -length:].all() and b["ids"][i + 2, -1] == 6  # left-padded
  assert sorted(seen) == sorted(len(c) for c in chosen)
  assert sum(b["weight"].sum() for b in out) == 5  # one filler, weight 0


@pytest.mark.parametrize("field, value, match", [
    ("reward_model.init", "pretty", "config.reward_model.init"),
    ("reward_model.batch_size", 0, "config.reward_model.batch_size"),
    ("reward_model.response_len", -1, "config.reward_model.response_len"),
    ("reward_model.max_pairs", -1, "config.reward_model.max_pairs"),
    ("reward_model.optim.b2", 1.5, "config.reward_model.optim.b2"),
    ("reward_model.optim.warmup_steps", 10_000, "config.reward_model.optim.warmup_steps"),
    ("task.name", "gsm8k", "config.task.name"),
])
def test_bad_config_raises_naming_the_field(built, tmp_path, field, value, match):
  config = built[0].copy_and_resolve_references()
  config.update_from_flattened_dict({field: value, "reward_model.cache_dir": str(tmp_path)})
  with pytest.raises(ValueError, match=match):
    experiment.resolve_model_ref(config.reward.model_path, config)
  assert not list((tmp_path / "reward_model").glob("*"))  # nothing half-built is left


def test_configs_validate():
  for arg in ("", "tiny"):
    config = hh_rlhf_cpu.get_config(arg)
    validate(config)
    reward_model.validate(config)
  bad = hh_rlhf_cpu.get_config("tiny")
  bad.data.question_len = -1
  with pytest.raises(ValueError, match="config.data.question_len"):
    validate(bad)


def test_head_recipe_fits_a_head_on_frozen_features_its_l2_chosen_on_dev(tmp_path):
  """Recipe "head": the backbone's weights are the student's, untouched; the L2 strength is the
  best on the dev split of the training pairs; the saved folder's in-graph score is the features'
  score (the held-out accuracy and loss the report states)."""
  paths = tiny_world.make(tmp_path / "world")
  config = tiny_config(tmp_path, paths, write_pairs(tmp_path / "harmless-base-test.jsonl.gz",
                                                    hh_pairs(40)))
  config.reward_model.update(recipe="head", head=dict(dev_fraction=0.25, l2=[1e-4, 1.0],
                                                      steps=300, learning_rate=1e-2))
  folder = experiment.resolve_model_ref(config.reward.model_path, config)
  report = json.loads((folder / reward_model.REPORT).read_text())
  dev = report["dev"]
  assert report["chosen_l2"] == max([1e-4, 1.0], key=lambda l2: reward_model.dev_rank(dev[str(l2)]))
  assert report["after"]["train"]["loss"] < report["before"]["train"]["loss"]
  assert report["after"]["train"]["accuracy"] > 0.9   # the synthetic pairs are separable
  assert report["peak_rss_gib"] > 0 and report["feature_seconds"] > 0
  ours = checkpoints.load_reward_model(folder)
  student = checkpoints.load_decoder(paths["student"], tie_word_embeddings=True)
  for a, b in zip(jax.tree.leaves(nnx.state(ours.lm, nnx.Param)),
                  jax.tree.leaves(nnx.state(student, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  tok = checkpoints.load_tokenizer(folder)
  chosen, rejected, _ = reward_model.pair_rows(reward_model.pairs(config).eval, tok,
                                               config.data.question_len,
                                               config.reward_model.response_len)
  in_graph = reward_model.evaluate_pairs(ours, reward_model.pair_batches(chosen, rejected, 4, 1,
                                                                         tok.pad_token_id))
  assert in_graph["accuracy"] == report["after"]["held_out"]["accuracy"]
  assert in_graph["loss"] == pytest.approx(report["after"]["held_out"]["loss"], rel=1e-4)


def top_config(tmp_path: Path, num_epochs: int = 3):
  paths = tiny_world.make(tmp_path / "world")
  config = tiny_config(tmp_path, paths, write_pairs(tmp_path / "harmless-base-test.jsonl.gz",
                                                    hh_pairs(40)))
  config.reward_model.update(recipe="top", top_layers=1, num_epochs=num_epochs,
                             head=dict(dev_fraction=0.25, l2=[1e-4, 1.0], steps=300,
                                       learning_rate=1e-2))
  config.reward_model.optim.update(learning_rate=3e-3, warmup_steps=1)
  return paths, config


@pytest.mark.parametrize("head_alone_fails", [False, True])
def test_top_recipe_trains_the_last_layers_on_the_cached_stream_choosing_on_dev(
    tmp_path, monkeypatch, head_alone_fails):
  """Recipe "top": the layers below the top ones are the student's, untouched; the stream path
  it trains and scores on is the saved folder's in-graph score (the report's held-out accuracy
  and loss); what it keeps (the best epoch, or the head alone) is the best on dev. A head fitted
  to zero (dev accuracy 0.5) makes the trained top win, its layers written back."""
  paths, config = top_config(tmp_path)
  if head_alone_fails:
    monkeypatch.setattr(reward_model, "_fitted", lambda features, l2, head: np.zeros(
        features.shape[-1], np.float32))
  folder = experiment.resolve_model_ref(config.reward.model_path, config)
  report = json.loads((folder / reward_model.REPORT).read_text())
  assert report["frozen_layers"] == 1
  rank = lambda scores: reward_model.dev_rank(scores["dev"])
  epochs = [{"dev": e["dev"]} for e in report["top"]["epochs"]]
  assert len(epochs) == 3 and report["top"]["best_epoch"] == 1 + max(range(3),
                                                                    key=lambda i: rank(epochs[i]))
  assert report["top"]["scores"]["dev"] == epochs[report["top"]["best_epoch"] - 1]["dev"]
  head, top = report["head"]["scores"], report["top"]["scores"]
  assert report["kept"] == (f"top, epoch {report['top']['best_epoch']}" if rank(top) > rank(head)
                            else "head")
  assert report["after"] == (top if report["kept"] != "head" else head)
  if head_alone_fails:
    assert head["dev"]["accuracy"] == 0.5 and report["kept"].startswith("top")
  ours = checkpoints.load_reward_model(folder)
  student = checkpoints.load_decoder(paths["student"], tie_word_embeddings=True)
  np.testing.assert_array_equal(np.asarray(ours.lm.embed[...]), np.asarray(student.embed[...]))
  for a, b in zip(jax.tree.leaves(nnx.state(ours.lm.layers[0], nnx.Param)),
                  jax.tree.leaves(nnx.state(student.layers[0], nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  top_changed = any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
      jax.tree.leaves(nnx.state(ours.lm.layers[1], nnx.Param)),
      jax.tree.leaves(nnx.state(student.layers[1], nnx.Param))))
  assert top_changed == report["kept"].startswith("top")
  tok = checkpoints.load_tokenizer(folder)
  chosen, rejected, _ = reward_model.pair_rows(reward_model.pairs(config).eval, tok,
                                               config.data.question_len,
                                               config.reward_model.response_len)
  in_graph = reward_model.evaluate_pairs(ours, reward_model.pair_batches(
      chosen, rejected, config.reward_model.batch_size, config.reward_model.num_buckets,
      tok.pad_token_id))
  assert in_graph["accuracy"] == report["after"]["held_out"]["accuracy"]
  assert in_graph["loss"] == pytest.approx(report["after"]["held_out"]["loss"], rel=1e-4)
  low, high = report["after"]["held_out"]["ci"]
  assert 0 <= low <= in_graph["accuracy"] <= high <= 1


def test_top_recipe_resumes_a_stopped_build_from_its_saved_stream(tmp_path, monkeypatch):
  """A build stopped in its stream (here its 3rd batch raises) leaves the batches it computed
  beside the cache entry; the rerun reads them back, computes the rest, builds the model one
  uninterrupted build makes, and removes that work once the entry exists."""
  _, config = top_config(tmp_path, num_epochs=1)
  lower, calls = reward_model._lower_stream, []

  def stopped_at_the_third(*args):
    calls.append(args)
    if len(calls) == 3:
      raise RuntimeError("stopped")
    return lower(*args)

  monkeypatch.setattr(reward_model, "_lower_stream", stopped_at_the_third)
  with pytest.raises(RuntimeError, match="stopped"):
    experiment.resolve_model_ref(config.reward.model_path, config)
  entries = Path(config.reward_model.cache_dir) / "reward_model"
  work = list(entries.glob(".*.work"))
  assert len(work) == 1 and len(list(work[0].rglob("*.npy"))) == 2
  assert not [p for p in entries.iterdir() if p not in work]   # no entry, no half-built folder
  monkeypatch.setattr(reward_model, "_lower_stream", lower)
  resumed = experiment.resolve_model_ref(config.reward.model_path, config)
  report = json.loads((resumed / reward_model.REPORT).read_text())
  assert sum(report["stream_batches_read_back"].values()) == 2 and not work[0].exists()
  config.reward_model.cache_dir = str(tmp_path / "uninterrupted")
  once = experiment.resolve_model_ref(config.reward.model_path, config)
  assert once.name == resumed.name   # the same key: cache_dir is not part of it
  assert json.loads((once / reward_model.REPORT).read_text())["after"] == report["after"]
  for a, b in zip(jax.tree.leaves(nnx.state(checkpoints.load_reward_model(once), nnx.Param)),
                  jax.tree.leaves(nnx.state(checkpoints.load_reward_model(resumed), nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_max_pairs_draws_some_training_pairs_and_keeps_the_held_out_ones(built):
  config = built[0].copy_and_resolve_references()
  every = reward_model.pairs(config)
  config.reward_model.max_pairs = 10
  some = reward_model.pairs(config)
  assert len(some.train) == 10 and len(every.train) > 10
  assert all(e in every.train for e in some.train) and some.eval == every.eval


def test_top_recipe_choices_do_not_read_the_held_out_pairs(tmp_path):
  """The held-out pairs swapped (chosen <-> rejected): the same L2, epochs and kept model on dev,
  only the held-out scores move."""
  paths, config = top_config(tmp_path, num_epochs=2)
  tok = checkpoints.load_tokenizer(paths["student"])
  task = reward_model.pairs(config)
  parts = {name: reward_model.pair_parts(examples, tok, config.data.question_len,
                                         config.reward_model.response_len)[:3]
           for name, examples in [("train", task.train), ("held_out", task.eval)]}
  dialogues, chosen, rejected = parts["held_out"]
  reports = [reward_model.train_top(reward_model.initial_model(paths["student"], "student", 0),
                                    dict(parts, held_out=held_out), config, tok.pad_token_id,
                                    tmp_path / f"work-{i}")
             for i, held_out in enumerate([parts["held_out"], (dialogues, rejected, chosen)])]
  choices = [(r["head"]["chosen_l2"], r["head"]["dev"], r["top"]["epochs"], r["top"]["best_epoch"],
              r["kept"], r["after"]["dev"], r["after"]["fit"]) for r in reports]
  assert choices[0] == choices[1]
  assert reports[0]["after"]["held_out"] != reports[1]["after"]["held_out"]


@pytest.mark.parametrize("top_layers, match", [
    (None, "config.reward_model.top_layers=None: recipe 'top' needs"),
    (0, "config.reward_model.top_layers=0 must be > 0"),
    (2, "config.reward_model.top_layers=2 must be below the backbone's 2 layers")])
def test_top_recipe_refuses_a_layer_count_it_cannot_train(built, tmp_path, top_layers, match):
  config = built[0].copy_and_resolve_references()
  config.reward_model.update(recipe="top", cache_dir=str(tmp_path),
                             head=dict(dev_fraction=0.25, l2=[1e-3], steps=10,
                                       learning_rate=1e-2))
  if top_layers is not None:
    config.reward_model.top_layers = top_layers
  with pytest.raises(ValueError, match=match):
    experiment.resolve_model_ref(config.reward.model_path, config)
  cache = tmp_path / "reward_model"
  assert not (cache.exists() and any(cache.iterdir()))   # nothing half-built is left


def test_text_reward_model_scores_text_as_the_reward_model_was_trained(built):
  """rewards.TextRewardModel (a judge in its own tokenizer, or an API student's reward): the
  text of a dialogue and a response scores as that pair's training row does in-graph."""
  config, folder, _ = built
  judge = rewards.TextRewardModel(folder, config.data.question_len,
                                  config.reward_model.response_len, bucket=16)
  examples = reward_model.pairs(config).eval
  dialogues = [e["question"] for e in examples]
  texts = judge.score(dialogues * 2, [e["chosen"] for e in examples]
                      + [e["rejected"] for e in examples], batch_size=4)
  tok = checkpoints.load_tokenizer(folder)
  chosen, rejected, _ = reward_model.pair_rows(examples, tok, config.data.question_len,
                                               config.reward_model.response_len)
  assert judge.rows(dialogues, [e["chosen"] for e in examples]) == chosen
  in_graph = np.concatenate(scores(checkpoints.load_reward_model(folder), chosen, rejected,
                                   tok.pad_token_id))
  np.testing.assert_allclose(texts, in_graph, atol=1e-4)


def test_eval_table_scores_every_row_with_a_judge_built_on_another_backbone(built, tmp_path):
  """eval.judge_path "pretrained:judge": a second reward model built from config.judge_model on
  the teacher's backbone (recipe "head"), which reads the answers as text; every row gets its
  score and interval beside the reward's, and the judge is cached under its own key."""
  from wst_jax.eval import evaluate
  config, rm_folder, _ = built
  config = with_judge(config)
  config.eval.update(judge_path=reward_model.JUDGE, teacher_path="")
  judge = experiment.resolve_model_ref(reward_model.JUDGE, config)
  assert judge != rm_folder and json.loads((judge / reward_model.REPORT).read_text())[
      "backbone"] == str(experiment.resolve_model_ref(config.teacher.path, config))
  result = evaluate(config, tmp_path)
  rows = result["tables"][0]["rows"]
  assert [r["source"][:3] for r in rows] == ["(a)", "(b)", "(c)"]
  assert all(r["judge_ci_low"] <= r["judge_mean"] <= r["judge_ci_high"] for r in rows)
  assert len({r["judge_mean"] for r in rows}) > 1   # the judge reads each row's own answers
  assert "| judge score |" in result["markdown"]


def test_chat_pairs_drop_the_space_a_chat_answer_never_starts_with(built):
  """HH responses follow "Assistant:" with a space; a chat student's answer starts its own turn
  without one. With prompt.chat set the training rows read like the answers they will score,
  and the cache key says so."""
  config, _, _ = built
  chat = config.copy_and_resolve_references()
  chat.prompt.update(chat="user_after", student_prefix="{question}", student_suffix="")
  plain, stripped = reward_model.pairs(config).eval, reward_model.pairs(chat).eval
  assert all(e["chosen"].startswith(" ") for e in plain)
  assert [e["chosen"] for e in stripped] == [e["chosen"].lstrip() for e in plain]
  assert reward_model.cache_key(chat, "s") != reward_model.cache_key(config, "s")


def test_command_builds_the_reward_model_and_the_judge_or_names_what_is_missing(built, tmp_path):
  """`python -m wst_jax.reward_model --build both|judge`: both models' reports (the reward model
  found in the cache, the judge built on the teacher's backbone); the judge of a config without
  config.judge_model is one line naming it."""
  config = with_judge(built[0])
  path = tmp_path / "config.py"

  def run(config, *args):
    path.write_text("from ml_collections import ConfigDict\n\n\ndef get_config():\n"
                    f"  return ConfigDict({config.to_dict()!r})\n")
    return subprocess.run(
        [sys.executable, "-m", "wst_jax.reward_model", "--config", str(path), *args],
        capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=600)

  both = run(config)
  assert both.returncode == 0, both.stderr[-3000:]
  assert [line.split(":")[0] for line in both.stdout.splitlines()
          if line.startswith(("reward_model:", "judge:"))] == ["reward_model", "judge"]
  assert both.stdout.count("held-out pairwise accuracy") == 2
  del config.judge_model
  missing = run(config, "--build", "judge")
  assert missing.returncode == 2 and "config.judge_model" in missing.stderr
  assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr


def test_a_judge_reads_a_jax_answer_without_the_stop_token_it_ended_with():
  """The recorded answer of a JAX student ends with its stop token's text; the judge adds its own
  eos, so that text would be read twice (SmolLM2 and Qwen share "<|im_end|>"). An answer cut at
  the budget, and one from an API student, hold no stop text and stay as they are."""
  from types import SimpleNamespace

  from wst_jax.eval import without_stop
  setup = SimpleNamespace(tokenizer=SimpleNamespace(decode=lambda ids: {7: "<|im_end|>"}[ids[0]]),
                          rollout=SimpleNamespace(student_eos=(7,)))
  assert without_stop(setup, ["Sure.<|im_end|>", "cut at the bud", "<|im_end|> inside, kept"]) == [
      "Sure.", "cut at the bud", "<|im_end|> inside, kept"]
