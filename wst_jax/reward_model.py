r"""The HH-RLHF reward model, trained here: no pretrained preference model exists offline.

    python -m wst_jax.reward_model --config configs/hh_rlhf_cpu.py   # build (or find) it

Our decoder + scalar head (`ScalarHeadLM`) in the STUDENT's tokenizer, since the WST step scores
the student's [dialogue][answer] in student ids (`rewards.reward_model_reward`). Initialised from
the student's weights (config.reward_model.init "student") or at random ("fresh", same shape),
then trained with the Bradley-Terry loss -log sigmoid(r(dialogue, chosen) - r(dialogue, rejected))
on the task's train split of the pairs. Pairwise accuracy (the share of pairs with
r_chosen > r_rejected, ties counting one half) is measured on the task's eval split: the
dialogues the WST table is evaluated on, never seen by the reward model.

A row is [dialogue][response][eos], as the WST step scores [rm_prompt][answer + stop token]:
  * the dialogue keeps its last data.question_len tokens, cut by `batches.truncate_questions`
    exactly as the WST step cuts it (left truncation: the latest turns stay);
  * the response with its eos keeps its first reward_model.response_len tokens, as the student's
    answer stops at rollout.answer_len tokens.
Both counts are logged and reported, no pair is dropped. Rows are left-padded, so the score is
read at the last column, to the shortest of reward_model.num_buckets lengths that holds both rows
of a pair (more buckets: less padding, one more compilation each).

`ensure_reward_model(config)` caches the HF `*ForSequenceClassification` folder (our
`checkpoints.load_reward_model` and transformers' AutoModelForSequenceClassification read it)
under reward_model.cache_dir, keyed by a hash of what it depends on (`cache_key`);
reward_model.json in it holds the accuracies, losses and times. A config names it
reward.model_path "pretrained:reward_model" (`REFERENCE`); the student it is trained from is
config.student.path, resolved by `model_refs.resolve`.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from wst_jax import cache, checkpoints, model_refs, pretrain
from wst_jax.data import batches as data_batches
from wst_jax.data.registry import Task, load_task
from wst_jax.errors import ConfigError, run_command
from wst_jax.models import Decoder, ScalarHeadLM, positions_from_mask

REPORT = "reward_model.json"
INITS = ("student", "fresh")
REFERENCE = model_refs.PRETRAINED + "reward_model"  # how a config names the model built here

# ------------------------------------------------------------------------------ config


def validate(config) -> None:
  """Raises ValueError naming the first bad config.reward_model / task field."""
  if "reward_model" not in config:
    raise ConfigError("config.reward_model is missing: reward.model_path='pretrained:reward_model' "
                      "trains one from it; see configs/hh_rlhf_cpu.py.")
  rm = config.reward_model
  if config.task.name != "hh_rlhf":
    raise ConfigError(f"config.task.name={config.task.name!r}: the reward model trains on "
                      "preference pairs; use task 'hh_rlhf'.")
  if rm.init not in INITS:
    raise ConfigError(f"config.reward_model.init={rm.init!r}; choose one of {INITS}.")
  positive = {f: rm[f] for f in ("num_epochs", "batch_size", "response_len", "num_buckets")}
  positive.update({f"optim.{f}": rm.optim[f] for f in ("learning_rate", "max_grad_norm")})
  for field, value in positive.items():
    if not value > 0:
      raise ConfigError(f"config.reward_model.{field}={value!r} must be > 0.")
  for field in ("b1", "b2", "final_lr_fraction", "weight_decay"):
    if not 0 <= rm.optim[field] <= 1:
      raise ConfigError(f"config.reward_model.optim.{field}={rm.optim[field]!r} must be in [0, 1].")


def _data_key(path: str) -> str:
  """A local file by its contents; a hub name (or "") by itself."""
  return cache.file_hash(path) if path and Path(path).expanduser().is_file() else path


def cache_key(config, student_key: str) -> str:
  """Hash of everything the reward model depends on: config.reward_model (cache_dir aside), the
  task's pairs (a local file's contents, not its path; a hub name; the split), data.question_len,
  the seed and the student, as `student_key` says what it is (`student_identity`)."""
  task = config.task
  return cache.content_key({
      "reward_model": {k: v for k, v in config.reward_model.to_dict().items() if k != "cache_dir"},
      "task": {k: task[k] for k in ("name", "eval_size", "skip_malformed")},
      "data": {"train": _data_key(task.train_path), "eval": _data_key(task.eval_path)},
      "question_len": config.data.question_len, "seed": config.seed, "student": student_key})


# ------------------------------------------------------------------------------ data


def pairs(config) -> Task:
  """The task's train / eval split of the pairs (every train pair: task.max_train only limits
  the WST training prompts)."""
  task_cfg = ConfigDict(dict(config.task.to_dict(), max_train=0))
  return load_task(task_cfg, config.seed)


def pair_rows(examples: list[dict], tokenizer, question_len: int, response_len: int):
  """-> (chosen rows, rejected rows: lists of student ids, see the module doc), and the counts of
  cut dialogues and cut responses."""
  examples, cut_questions = data_batches.truncate_questions(examples, tokenizer, question_len)
  rows, cut_responses = {"chosen": [], "rejected": []}, 0
  for e in examples:
    dialogue = data_batches.segment_ids(tokenizer, e["question"])
    for side, out in rows.items():
      response = data_batches.segment_ids(tokenizer, e[side]) + [tokenizer.eos_token_id]
      cut_responses += len(response) > response_len
      out.append(dialogue + response[:response_len])
  if cut_responses:
    logging.info("%d of %d responses are longer than config.reward_model.response_len=%d tokens "
                 "(eos included): each keeps its first ones.", cut_responses, 2 * len(examples),
                 response_len)
  return rows["chosen"], rows["rejected"], {"questions": cut_questions, "responses": cut_responses}


def bucket_lengths(longest: int, num_buckets: int) -> list[int]:
  """Static row lengths k / num_buckets of `longest` (k = 1..num_buckets), multiples of 8."""
  return sorted({8 * math.ceil(longest * k / num_buckets / 8) for k in range(1, num_buckets + 1)})


def pair_batches(chosen: list[list[int]], rejected: list[list[int]], batch_size: int,
                 num_buckets: int, pad_id: int,
                 rng: np.random.Generator | None = None) -> list[dict[str, np.ndarray]]:
  """Pairs in batches of `batch_size`, each in the shortest of `bucket_lengths` that holds both
  its rows:

  ids int32[2 * batch_size, L], mask bool[2 * batch_size, L] (left-padded chosen rows, then the
  rejected rows in the same order), weight f32[batch_size] (0 on the copies of the batch's first
  pair that fill a bucket's last batch: no pair is dropped, shapes stay static).
  With `rng`, pairs are shuffled within buckets and batches across them; else in input order.
  """
  lengths = np.array([max(len(c), len(r)) for c, r in zip(chosen, rejected)])
  buckets = bucket_lengths(int(lengths.max()), num_buckets)
  bucket = np.searchsorted(buckets, lengths)
  out = []
  for b, length in enumerate(buckets):
    members = np.flatnonzero(bucket == b)
    if rng is not None:
      members = rng.permutation(members)
    for start in range(0, len(members), batch_size):
      chunk = members[start:start + batch_size]
      rows = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[0])])
      ids, mask = data_batches.left_pad([chosen[i] for i in rows] + [rejected[i] for i in rows],
                                        length, pad_id, "reward_model bucket")
      weight = (np.arange(batch_size) < len(chunk)).astype(np.float32)
      out.append({"ids": ids, "mask": mask, "weight": weight})
  return out if rng is None else [out[i] for i in rng.permutation(len(out))]


# ------------------------------------------------------------------------------ model, loss


def pair_scores(model: ScalarHeadLM, batch) -> tuple[jax.Array, jax.Array]:
  """-> r_chosen, r_rejected f32[B]: each row's score at its last (real) token."""
  ids, mask = batch["ids"], batch["mask"]
  _, scores = model(ids, positions_from_mask(mask), mask)
  return tuple(jnp.split(scores[:, -1], 2))


@functools.partial(jax.jit, static_argnums=0)
def _jit_pair_scores(graphdef, params, batch):
  return pair_scores(nnx.merge(graphdef, params), batch)


def bradley_terry_loss(graphdef, params, batch) -> jax.Array:
  """Weighted mean of -log sigmoid(r_chosen - r_rejected) over the batch's pairs: f32[]."""
  chosen, rejected = pair_scores(nnx.merge(graphdef, params), batch)
  weight = batch["weight"]
  return jnp.sum(weight * jax.nn.softplus(rejected - chosen)) / jnp.maximum(jnp.sum(weight), 1.0)


def initial_model(student_path: Path, init: str, seed: int) -> ScalarHeadLM:
  """Decoder + scalar head shaped like the student; with init "student" its weights too. The LM
  head is tied to the embeddings (never used by a reward model, and HF's
  *ForSequenceClassification has none)."""
  rngs = nnx.Rngs(seed)
  if init == "student":
    lm = checkpoints.load_decoder(student_path, tie_word_embeddings=True)
  else:
    lm = Decoder(checkpoints.load_config(student_path, tie_word_embeddings=True), rngs=rngs)
  return ScalarHeadLM(lm.cfg, rngs=rngs, lm=lm)


def evaluate_pairs(model: ScalarHeadLM, batches: list[dict], desc: str = "") -> dict:
  """-> {"accuracy", "loss", "n"} over the real pairs of `batches` (ties count one half)."""
  graphdef, params = nnx.split(model, nnx.Param)
  margins = []
  for batch in tqdm(batches, desc=desc or "score pairs", leave=False):
    chosen, rejected = jax.device_get(
        _jit_pair_scores(graphdef, params, {k: batch[k] for k in ("ids", "mask")}))
    margins.append((chosen - rejected)[batch["weight"] > 0])
  margin = np.concatenate(margins)
  return {"accuracy": float(np.mean((margin > 0) + 0.5 * (margin == 0))),
          "loss": float(np.mean(np.logaddexp(0.0, -margin))), "n": int(margin.size)}


# ------------------------------------------------------------------------------ build


def build(config, student_path: Path, folder: Path) -> None:
  """Trains the reward model from the student's folder; writes it (HF folder + tokenizer) and
  REPORT into `folder`."""
  start = time.time()
  rm = config.reward_model
  tokenizer = checkpoints.load_tokenizer(student_path)
  task = pairs(config)
  rows, cut = {}, {}
  for name, examples in [("train", task.train), ("held_out", task.eval)]:
    chosen, rejected, cut[name] = pair_rows(examples, tokenizer, config.data.question_len,
                                            rm.response_len)
    rows[name] = (chosen, rejected, rm.batch_size, rm.num_buckets, tokenizer.pad_token_id)
  rng = np.random.default_rng(config.seed)
  train_batches = [b for _ in range(rm.num_epochs) for b in pair_batches(*rows["train"], rng)]
  if not 0 <= rm.optim.warmup_steps < len(train_batches):
    raise ConfigError(f"config.reward_model.optim.warmup_steps={rm.optim.warmup_steps} must be in "
                      f"[0, {len(train_batches)}) (the training steps).")
  model = initial_model(student_path, rm.init, config.seed)
  evals = {name: pair_batches(*r) for name, r in rows.items()}
  before = {name: evaluate_pairs(model, b, f"score {name} (before)") for name, b in evals.items()}
  losses = pretrain.fit(model, train_batches, rm.optim, "train reward model", bradley_terry_loss)
  after = {name: evaluate_pairs(model, b, f"score {name}") for name, b in evals.items()}
  checkpoints.save_reward_model(model, folder, tokenizer)
  steps_per_epoch = len(train_batches) // rm.num_epochs
  report = {"config": config.reward_model.to_dict(), "student": str(student_path),
            "question_len": config.data.question_len, "truncated": cut,
            "before": before, "after": after,
            "epoch_loss": [float(np.mean(losses[i:i + steps_per_epoch]))
                           for i in range(0, len(losses), steps_per_epoch)],
            "seconds": time.time() - start}
  (folder / REPORT).write_text(json.dumps(report, indent=2))


def student_identity(config, student: Path) -> str:
  """What the student (config.student.path, resolved to `student`) is, for `cache_key`: a
  "pretrained:" one by its pretraining config (any clone and cache_dir finds the entry), any
  other by its resolved path."""
  ref = str(config.student.path)
  if ref.startswith(model_refs.PRETRAINED):
    return f"{ref}@{pretrain.cache_key(config.pretrain)}"
  return str(student.expanduser().resolve())


def ensure_reward_model(config) -> Path:
  """-> the reward model's HF folder under config.reward_model.cache_dir, built once from the
  student's folder (atomically: `cache.build_once`)."""
  validate(config)
  student = model_refs.resolve(config.student.path, config)
  final = (Path(config.reward_model.cache_dir).expanduser() / "reward_model"
           / cache_key(config, student_identity(config, student)))
  return cache.build_once(final, REPORT, lambda folder: build(config, student, folder))


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  start = time.time()
  folder = ensure_reward_model(_CONFIG.value)
  report = json.loads((folder / REPORT).read_text())
  held_out, train = report["after"]["held_out"], report["after"]["train"]
  print(f"reward model: {folder}")
  print(f"held-out pairwise accuracy {held_out['accuracy']:.3f} (n={held_out['n']}, before "
        f"training {report['before']['held_out']['accuracy']:.3f}); train "
        f"{train['accuracy']:.3f} (n={train['n']})")
  print(f"build wall time {report['seconds']:.0f} s; this call {time.time() - start:.1f} s")


if __name__ == "__main__":
  from absl import app
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", "configs/hh_rlhf_cpu.py",
                                            "A config with a reward_model block.")
  run_command(lambda args: app.run(main, args), sys.argv)
