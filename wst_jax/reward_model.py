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

Recipes (reward_model.recipe): "full" trains every weight; "head" freezes the backbone and fits
a linear head on its features, computed once; "top" fits a head on the frozen backbone too, then
trains the backbone's last reward_model.top_layers layers, its final norm and the head, on the
residual stream below those layers, computed once. "head" and "top" make their choices (the
head's L2; the epoch, or the head alone) on a dev split of the training pairs.

`ensure_reward_model(config)` caches the HF `*ForSequenceClassification` folder (our
`checkpoints.load_reward_model` and transformers' AutoModelForSequenceClassification read it)
under reward_model.cache_dir, keyed by a hash of what it depends on (`cache_key`);
reward_model.json in it holds the accuracies, losses and times. A build that is stopped (recipe
"top", whose stream costs hours on a real backbone) keeps the stream batches it computed beside
the entry, and the same command resumes from them. A config names it
reward.model_path "pretrained:reward_model" (`REFERENCE`); the student it is trained from is
config.student.path, resolved by `model_refs.resolve`.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from wst_jax import cache, checkpoints, model_refs, pretrain
from wst_jax.data import batches as data_batches
from wst_jax.data.registry import Task, load_task
from wst_jax.errors import ConfigError, run_command
from wst_jax.models import Decoder, ScalarHeadLM, positions_from_mask
from wst_jax.sampling import prefill
from wst_jax.stats import bootstrap_interval

REPORT = "reward_model.json"
# The version of what a training row holds (`pairs`, `pair_parts`): a change of it is a new key.
ROW_FORMAT = 2
INITS = ("student", "fresh")
# "full": every weight trained (init from the backbone or fresh); "head": the backbone frozen,
# its features computed once per row, a linear head fitted on them (`fit_head`); "top": the
# backbone below its last reward_model.top_layers layers frozen and run once per row, a head
# fitted on the frozen top, then those layers, the final norm and the head trained together
# (`train_top`).
RECIPES = ("full", "head", "top")
REFERENCE = model_refs.PRETRAINED + "reward_model"  # how a config names the model built here
JUDGE = model_refs.PRETRAINED + "judge"   # eval.judge_path: built from config.judge_model


def judge_config(config):
  """`config` with config.judge_model as its reward_model block: the judge is built by the same
  recipe code, on its own backbone (judge_model.backbone), cached under its own key."""
  if "judge_model" not in config:
    raise ConfigError(f"config.eval.judge_path={JUDGE!r} builds the judge from config.judge_model, "
                      "which is missing: add it (the reward_model block's fields).")
  judge = config.copy_and_resolve_references()
  with judge.unlocked():
    judge.reward_model = judge.judge_model
  return judge


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
  recipe = rm.get("recipe", "full")
  if recipe not in RECIPES:
    raise ConfigError(f"config.reward_model.recipe={recipe!r}; choose one of {RECIPES}.")
  # Each recipe reads its own fields: "full" num_epochs and optim, "head" the head block, "top"
  # all of them and top_layers.
  positive = {f: rm[f] for f in ("batch_size", "response_len", "num_buckets")}
  if rm.get("max_pairs", 0) < 0:
    raise ConfigError(f"config.reward_model.max_pairs={rm.max_pairs!r} must be >= 0 (0: every "
                      "training pair).")
  if recipe in ("head", "top"):
    if rm.init != "student":
      raise ConfigError(f"config.reward_model.recipe={recipe!r} starts from the backbone's own "
                        "weights: set config.reward_model.init='student'.")
    head = rm.get("head")
    fields = ("dev_fraction", "l2", "steps", "learning_rate")
    if (head is None or any(f not in head for f in fields) or not 0 < head.dev_fraction < 1
        or not head.l2):
      raise ConfigError("config.reward_model.head needs dev_fraction in (0, 1), a non-empty l2 "
                        "list (the candidates chosen on dev), steps and learning_rate; got "
                        f"{head.to_dict() if head is not None else None}.")
    positive.update({f"head.{f}": rm.head[f] for f in ("steps", "learning_rate")})
  if recipe == "top" and not isinstance(rm.get("top_layers"), int):
    raise ConfigError(f"config.reward_model.top_layers={rm.get('top_layers')!r}: recipe 'top' "
                      "needs the number of last layers to train, an int (e.g. 2).")
  if recipe == "top":
    positive["top_layers"] = rm.top_layers
  if recipe in ("full", "top"):
    positive["num_epochs"] = rm.num_epochs
    positive.update({f"optim.{f}": rm.optim[f] for f in ("learning_rate", "max_grad_norm")})
    for field in ("b1", "b2", "final_lr_fraction", "weight_decay"):
      if not 0 <= rm.optim[field] <= 1:
        raise ConfigError(f"config.reward_model.optim.{field}={rm.optim[field]!r} must be in "
                          "[0, 1].")
  for field, value in positive.items():
    if not value > 0:
      raise ConfigError(f"config.reward_model.{field}={value!r} must be > 0.")


def _data_key(path: str) -> str:
  """A local file by its contents; a hub name (or "") by itself."""
  return cache.file_hash(path) if path and Path(path).expanduser().is_file() else path


def cache_key(config, student_key: str) -> str:
  """Hash of everything the reward model depends on: config.reward_model (cache_dir aside), the
  task's pairs (a local file's contents, not its path; a hub name; the split), data.question_len,
  the seed, the backbone, as `student_key` says what it is (`student_identity`), and the rows'
  format (ROW_FORMAT; chat responses without their leading space)."""
  task = config.task
  return cache.content_key({
      "reward_model": {k: v for k, v in config.reward_model.to_dict().items() if k != "cache_dir"},
      "task": {k: task[k] for k in ("name", "eval_size", "skip_malformed")},
      "data": {"train": _data_key(task.train_path), "eval": _data_key(task.eval_path)},
      "question_len": config.data.question_len, "seed": config.seed, "student": student_key,
      "rows": ROW_FORMAT, "chat_responses": bool(config.prompt.chat)})


# ------------------------------------------------------------------------------ data


def pairs(config) -> Task:
  """The task's train / eval split of the pairs: every train pair (task.max_train only limits
  the WST training prompts), or a seeded reward_model.max_pairs of them (a :smoke config's
  minutes); the eval split is the table's held-out pairs, also for a config whose task.dev_size
  makes its own eval split a dev one: one reward model for both."""
  task_cfg = ConfigDict(dict(config.task.to_dict(), dev_size=0,
                             max_train=config.reward_model.get("max_pairs", 0)))
  task = load_task(task_cfg, config.seed)
  if not config.prompt.chat:
    return task
  # A chat student's answer starts its own turn, with no space after "Assistant:" as HH's
  # responses have: trained on those, the model would score rows unlike the ones it reads.
  chat = lambda examples: [dict(e, chosen=e["chosen"].lstrip(), rejected=e["rejected"].lstrip())
                           for e in examples]
  return Task(chat(task.train), chat(task.eval))


def pair_parts(examples: list[dict], tokenizer, question_len: int, response_len: int):
  """-> (dialogues, chosen responses, rejected responses: lists of ids, each response with its
  eos and cut to its first response_len tokens; see the module doc), and the counts of cut
  dialogues and cut responses."""
  examples, cut_questions = data_batches.truncate_questions(examples, tokenizer, question_len)
  parts, cut_responses = {"chosen": [], "rejected": []}, 0
  for e in examples:
    for side, out in parts.items():
      response = data_batches.segment_ids(tokenizer, e[side]) + [tokenizer.eos_token_id]
      cut_responses += len(response) > response_len
      out.append(response[:response_len])
  if cut_responses:
    logging.info("%d of %d responses are longer than config.reward_model.response_len=%d tokens "
                 "(eos included): each keeps its first ones.", cut_responses, 2 * len(examples),
                 response_len)
  dialogues = [data_batches.segment_ids(tokenizer, e["question"]) for e in examples]
  return (dialogues, parts["chosen"], parts["rejected"],
          {"questions": cut_questions, "responses": cut_responses})


def pair_rows(examples: list[dict], tokenizer, question_len: int, response_len: int):
  """-> (chosen rows, rejected rows: [dialogue][response] lists of ids, `pair_parts`), and the
  counts of cut dialogues and cut responses."""
  *parts, cut = pair_parts(examples, tokenizer, question_len, response_len)
  return (*joined(*parts), cut)


def joined(dialogues, chosen, rejected) -> tuple[list, list]:
  """`pair_parts`' lists -> (chosen rows, rejected rows), each [dialogue][response]."""
  return ([d + c for d, c in zip(dialogues, chosen)], [d + r for d, r in zip(dialogues, rejected)])


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
  return weighted_bt(*pair_scores(nnx.merge(graphdef, params), batch), batch["weight"])


def weighted_bt(chosen, rejected, weight) -> jax.Array:
  """The Bradley-Terry loss of scores f32[B], weighted by f32[B] (0: a filler pair): f32[]."""
  return jnp.sum(weight * jax.nn.softplus(rejected - chosen)) / jnp.maximum(jnp.sum(weight), 1.0)


def margin_metrics(margin: np.ndarray) -> dict:
  """Margins r_chosen - r_rejected f32[N] -> {"accuracy" (ties count one half), "ci" (its 95%
  bootstrap interval over the pairs), "loss", "n"}."""
  right = (margin > 0) + 0.5 * (margin == 0)
  return {"accuracy": float(np.mean(right)), "ci": bootstrap_interval(right, 1000),
          "loss": float(np.mean(np.logaddexp(0.0, -margin))), "n": int(margin.size)}


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


def pair_margins(score, batches: list[dict], desc: str = "") -> dict:
  """-> {"accuracy", "loss", "n"} over the real pairs of `batches` (ties count one half).
  `score(batch)` -> (chosen, rejected) scores, each f32 [rows]; padding rows (weight 0) are dropped."""
  margins = []
  for batch in tqdm(batches, desc=desc or "score pairs", leave=False):
    chosen, rejected = jax.device_get(score(batch))
    margins.append((chosen - rejected)[batch["weight"] > 0])
  return margin_metrics(np.concatenate(margins))


def evaluate_pairs(model: ScalarHeadLM, batches: list[dict], desc: str = "") -> dict:
  """`pair_margins` of the whole model on `pair_batches`."""
  graphdef, params = nnx.split(model, nnx.Param)
  return pair_margins(
      lambda b: _jit_pair_scores(graphdef, params, {k: b[k] for k in ("ids", "mask")}),
      batches, desc)


# ------------------------------------------------------------------------------ recipe "head"


@functools.partial(jax.jit, static_argnums=0)
def _pair_features(graphdef, state, dialogue, dialogue_mask, responses, response_mask):
  lm = nnx.merge(graphdef, state)
  hidden = prefill(lm, dialogue, dialogue_mask, repeats=2, rest=responses,
                   rest_mask=response_mask).hidden
  last = jnp.sum(response_mask, axis=1)   # hidden[:, j] is at the response's j-th token
  return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def pair_features(lm: Decoder, dialogues, chosen, rejected, batch_size: int, num_buckets: int,
                  pad_id: int) -> np.ndarray:
  """The frozen backbone's features of every pair -> f32[N, 2, D] (chosen, rejected): each row's
  final hidden state at its last token, where a reward model reads its score. The dialogue runs
  once for its two responses (`sampling.prefill`), in batches of batch_size pairs, each in the
  shortest of `bucket_lengths` that holds its dialogues; responses right-padded to the longest.
  """
  graphdef, state = nnx.split(lm)
  lengths = np.array([len(d) for d in dialogues])
  bucket_of = np.searchsorted(bucket_lengths(int(lengths.max()), num_buckets), lengths)
  width = max(map(len, chosen + rejected))
  out = np.zeros((len(dialogues), 2, lm.cfg.hidden_size), np.float32)
  with tqdm(total=len(dialogues), desc="backbone features", leave=False) as bar:
    for b, length in enumerate(bucket_lengths(int(lengths.max()), num_buckets)):
      members = np.flatnonzero(bucket_of == b)
      for start in range(0, len(members), batch_size):
        chunk = members[start:start + batch_size]
        rows = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[0])])
        ids, mask = data_batches.left_pad([dialogues[i] for i in rows], length, pad_id,
                                          "reward_model bucket")
        responses = [r for i in rows for r in (chosen[i], rejected[i])]
        r_ids = np.full((len(responses), width), pad_id, np.int32)
        r_mask = np.zeros((len(responses), width), bool)
        for j, r in enumerate(responses):
          r_ids[j, :len(r)], r_mask[j, :len(r)] = r, True
        features = jax.device_get(_pair_features(graphdef, state, ids, mask, r_ids, r_mask))
        out[chunk] = np.asarray(features).reshape(batch_size, 2, -1)[:len(chunk)]
        bar.update(len(chunk))
  return out


@functools.partial(jax.jit, static_argnums=(2, 3))
def fit_head(features, l2, steps: int, learning_rate: float):
  """A Bradley-Terry head on frozen features f32[N, 2, D]: w f32[D] minimizing
  mean softplus(-(f_chosen - f_rejected) . w) + l2 |w|^2, full batch, `steps` Adam steps from 0."""
  diff = features[:, 0] - features[:, 1]
  tx = optax.adam(learning_rate)

  def loss(w):
    return jnp.mean(jax.nn.softplus(-diff @ w)) + l2 * jnp.sum(w * w)

  def step(carry, _):
    w, opt_state = carry
    updates, opt_state = tx.update(jax.grad(loss)(w), opt_state)
    return (optax.apply_updates(w, updates), opt_state), None

  w = jnp.zeros(features.shape[-1], jnp.float32)
  (w, _), _ = jax.lax.scan(step, (w, tx.init(w)), None, length=steps)
  return w


def feature_pairs(features: np.ndarray, w: np.ndarray) -> dict:
  """-> {"accuracy", "loss", "n"} of head w f32[D] on features f32[N, 2, D], as `evaluate_pairs`."""
  return margin_metrics((features[:, 0] - features[:, 1]) @ np.asarray(w, np.float32))


def dev_split(n: int, config) -> tuple[np.ndarray, np.ndarray]:
  """The training pairs' indices -> (dev, fit): reward_model.head.dev_fraction of them, drawn by
  the seed. The recipes make every choice (the head's L2; the epoch, head or top) on dev: no
  held-out pair's score enters one."""
  order = np.random.default_rng(config.seed).permutation(n)
  n_dev = max(1, round(config.reward_model.head.dev_fraction * n))
  return order[:n_dev], order[n_dev:]


def dev_rank(scores: dict) -> tuple[float, float]:
  """How a dev choice ranks `margin_metrics` scores: accuracy, then (among ties) the lower loss."""
  return scores["accuracy"], -scores["loss"]


def choose_head(fit: np.ndarray, dev: np.ndarray, head) -> tuple[float, dict]:
  """The L2 strength of reward_model.head that ranks best on dev (`dev_rank`), for a head fitted
  on features `fit` and scored on `dev` f32[N, 2, D]. -> (that l2, {str(l2): its dev scores})."""
  on_dev = {str(l2): feature_pairs(dev, _fitted(fit, l2, head)) for l2 in head.l2}
  return max(head.l2, key=lambda l2: dev_rank(on_dev[str(l2)])), on_dev


def _fitted(features: np.ndarray, l2: float, head) -> np.ndarray:
  return np.asarray(fit_head(jnp.asarray(features), l2, head.steps, head.learning_rate))


def set_head(model: ScalarHeadLM, w: np.ndarray) -> None:
  """Writes the Bradley-Terry head w f32[D] into model.head."""
  model.head.kernel.set_value(jnp.asarray(w[:, None], model.head.kernel.get_value().dtype))


def train_head(model: ScalarHeadLM, parts: dict, config, pad_id: int) -> dict:
  """Recipe "head": the backbone frozen, a linear head fitted on its features. The L2 strength is
  chosen on a dev split (`dev_split`) of the training pairs, never on the held-out ones; the
  head is then fitted on every training pair and written into `model.head`.
  parts: split -> (dialogues, chosen, rejected) (`pair_parts`). -> the report's entries."""
  rm, head = config.reward_model, config.reward_model.head
  start = time.time()
  features = {name: pair_features(model.lm, *p, rm.batch_size, rm.num_buckets, pad_id)
              for name, p in parts.items()}
  feature_s = time.time() - start
  dev, fit = dev_split(len(features["train"]), config)
  chosen, on_dev = choose_head(features["train"][fit], features["train"][dev], head)
  before = model.head.kernel.get_value()[:, 0]
  w = _fitted(features["train"], chosen, head)
  set_head(model, w)
  return {"before": {name: feature_pairs(f, before) for name, f in features.items()},
          "after": {name: feature_pairs(f, w) for name, f in features.items()},
          "dev": on_dev, "chosen_l2": chosen, "feature_seconds": feature_s}


# ------------------------------------------------------------------------------ recipe "top"


@functools.partial(jax.jit, static_argnums=(0, 3))
def _lower_stream(graphdef, state, batch, split: int):
  """The residual stream of left-padded rows below layer `split`: [R, L, D], compute dtype."""
  lm = nnx.merge(graphdef, state).lm
  positions = positions_from_mask(batch["mask"])
  x, _ = lm.blocks(lm.embed_tokens(batch["ids"], positions), positions, batch["mask"],
                   slice(0, split))
  return x


def _top_hidden(lm: Decoder, batch, split: int) -> jax.Array:
  """A stream batch (x [2B, L, D] below layer `split`, mask) -> the final hidden state at the
  last column, where a left-padded row's score is read (`pair_scores`): [2B, D]."""
  mask = batch["mask"]
  x, _ = lm.blocks(batch["x"], positions_from_mask(mask), mask, slice(split, None))
  return lm.final_norm(x[:, -1])


def _top_scores(model: ScalarHeadLM, batch, split: int) -> tuple[jax.Array, jax.Array]:
  """-> r_chosen, r_rejected f32[B] of a stream batch (`_top_hidden`)."""
  hidden = _top_hidden(model.lm, batch, split).astype(jnp.float32)
  return tuple(jnp.split(model.head(hidden)[:, 0], 2))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _top_features(graphdef, state, batch, split: int):
  return _top_hidden(nnx.merge(graphdef, state).lm, batch, split).astype(jnp.float32)


def _top_loss(split: int, graphdef, trainable, frozen, batch) -> jax.Array:
  return weighted_bt(*_top_scores(nnx.merge(graphdef, trainable, frozen), batch, split),
                     batch["weight"])


@functools.partial(jax.jit, static_argnums=(0, 3))
def _jit_top_scores(graphdef, state, batch, split: int):
  return _top_scores(nnx.merge(graphdef, state), batch, split)


def stream_batches(model: ScalarHeadLM, chosen, rejected, split: int, config, pad_id: int,
                   desc: str, store: Path) -> tuple[list[dict], int]:
  """`pair_batches` (input order) with each batch's rows run once through the frozen layers below
  `split`: {"x" [2B, L, D] in the compute dtype, "mask", "weight"}, kept in host memory, and each
  batch's x saved in `store` as it is computed. A batch already there (from a build of the same
  cache entry that was stopped) is read back instead: the stream is most of a real backbone's
  build, hours here, so a stopped build resumes where it was. -> (batches, how many were read
  back)."""
  rm = config.reward_model
  graphdef, state = nnx.split(model)
  dtype = jnp.dtype(model.lm.cfg.dtype)
  raw = np.dtype(f"u{dtype.itemsize}")   # np.save cannot keep ml_dtypes' bfloat16: its bits can
  out, resumed = [], 0
  for i, batch in enumerate(tqdm(pair_batches(chosen, rejected, rm.batch_size, rm.num_buckets,
                                              pad_id), desc=desc, leave=False)):
    path = store / f"{i:05d}.npy"
    if path.is_file():
      x, resumed = np.load(path).view(dtype), resumed + 1
    else:
      x = np.asarray(jax.device_get(
          _lower_stream(graphdef, state, {k: batch[k] for k in ("ids", "mask")}, split)))
      # Whole or absent, also when processes of one run build the same entry at once (each
      # writes its own temporary file; the first to finish removes the folder: made again here).
      store.mkdir(parents=True, exist_ok=True)
      tmp = store / f".{i:05d}.{os.getpid()}.tmp.npy"
      np.save(tmp, x.view(raw))
      os.replace(tmp, path)
    out.append({"x": x, "mask": batch["mask"], "weight": batch["weight"]})
  return out, resumed


def stream_pairs(model: ScalarHeadLM, batches: list[dict], split: int) -> dict:
  """`pair_margins` of `model` on stream batches (the lower layers' hidden states)."""
  graphdef, state = nnx.split(model)
  return pair_margins(lambda b: _jit_top_scores(graphdef, state, b, split), batches,
                      "score stream pairs")


def stream_features(model: ScalarHeadLM, batches: list[dict], split: int) -> np.ndarray:
  """Stream batches -> the frozen top's features of their real pairs, f32[N, 2, D]."""
  graphdef, state = nnx.split(model)
  out = []
  for batch in batches:
    f = np.asarray(jax.device_get(_top_features(graphdef, state, batch, split)))
    half = len(f) // 2
    out.append(np.stack([f[:half], f[half:]], axis=1)[batch["weight"] > 0])
  return np.concatenate(out)


def train_top(model: ScalarHeadLM, parts: dict, config, pad_id: int, work: Path) -> dict:
  """Recipe "top": the layers below the last reward_model.top_layers frozen, their output (the
  residual stream) computed once per row and kept; a head fitted on the frozen top's features
  (its L2 chosen on dev); then the top layers, the final norm and the head trained together from
  there with AdamW (reward_model.optim) for num_epochs epochs on the fit split (its batches
  fixed, their order shuffled each epoch). Of the head alone and the epochs, the best on dev
  (`dev_rank`) is kept: both candidates trained on the same fit pairs, every choice on dev.
  parts: split -> (dialogues, chosen, rejected) (`pair_parts`); work: where the stream is kept
  until the build ends (`stream_batches`). -> the report's entries: scores
  on "fit", "dev" and "held_out" before (the initial head), of the head alone, of the best epoch
  and of what is kept; the seconds of each stage (the stream's are shared by both candidates)."""
  rm, head = config.reward_model, config.reward_model.head
  frozen_layers = model.lm.cfg.num_layers - rm.top_layers
  if frozen_layers < 1:
    raise ConfigError(f"config.reward_model.top_layers={rm.top_layers} must be below the "
                      f"backbone's {model.lm.cfg.num_layers} layers.")
  dev, fit = dev_split(len(parts["train"][0]), config)
  subsets = {"fit": ("train", fit), "dev": ("train", dev),
             "held_out": ("held_out", np.arange(len(parts["held_out"][0])))}
  rows = {name: joined(*([seq[i] for i in idx] for seq in parts[source]))
          for name, (source, idx) in subsets.items()}
  steps_per_epoch = len(pair_batches(*rows["fit"], rm.batch_size, rm.num_buckets, pad_id))
  check_warmup(rm, rm.num_epochs * steps_per_epoch)  # before the costly stream, not after it

  start = time.time()
  streams, resumed = {}, {}
  for name, r in rows.items():
    streams[name], resumed[name] = stream_batches(
        model, *r, frozen_layers, config, pad_id, f"frozen layers 0-{frozen_layers - 1} ({name})",
        work / f"stream-{name}")
  scores = lambda m: {name: stream_pairs(m, b, frozen_layers) for name, b in streams.items()}
  # stream_seconds is this process's: the batches read back were paid for by a stopped build.
  report = {"frozen_layers": frozen_layers, "stream_seconds": time.time() - start,
            "stream_batches_read_back": resumed, "before": scores(model)}

  start = time.time()
  features = {name: stream_features(model, streams[name], frozen_layers) for name in ("fit", "dev")}
  l2, on_dev = choose_head(features["fit"], features["dev"], head)
  set_head(model, _fitted(features["fit"], l2, head))
  report["head"] = {"dev": on_dev, "chosen_l2": l2, "scores": scores(model),
                    "fit_seconds": time.time() - start, "peak_rss_gib": peak_rss_gib()}

  start = time.time()
  trains = lambda path, value: isinstance(value, nnx.Param) and (
      path[0] == "head" or path[:2] == ("lm", "final_norm")
      or (path[:2] == ("lm", "layers") and path[2] >= frozen_layers))
  graphdef, trainable, frozen = nnx.split(model, trains, ...)
  tx = pretrain.optimizer(rm.optim, rm.num_epochs * steps_per_epoch)
  # The parameters are not donated: the model keeps the head alone's until an epoch beats it.
  step = jax.jit(functools.partial(_top_step, frozen_layers, graphdef, tx), donate_argnums=1)
  opt_state = tx.init(trainable)
  rng = np.random.default_rng(config.seed)
  epochs, best = [], None
  for epoch in range(rm.num_epochs):
    losses = []
    for i in tqdm(rng.permutation(len(streams["fit"])), desc=f"train top, epoch {epoch + 1}",
                  leave=False):
      trainable, opt_state, loss = step(trainable, opt_state, frozen, streams["fit"][i])
      losses.append(float(loss))
    on_dev_epoch = stream_pairs(nnx.merge(graphdef, trainable, frozen), streams["dev"],
                                frozen_layers)
    epochs.append({"loss": float(np.mean(losses)), "dev": on_dev_epoch})
    if best is None or dev_rank(on_dev_epoch) > dev_rank(epochs[best[0]]["dev"]):
      best = (epoch, trainable)
  report["top"] = {"epochs": epochs, "best_epoch": best[0] + 1,
                   "scores": scores(nnx.merge(graphdef, best[1], frozen)),
                   "train_seconds": time.time() - start, "peak_rss_gib": peak_rss_gib()}
  if dev_rank(report["top"]["scores"]["dev"]) > dev_rank(report["head"]["scores"]["dev"]):
    nnx.update(model, best[1])
    report.update(kept=f"top, epoch {best[0] + 1}", after=report["top"]["scores"])
  else:
    report.update(kept="head", after=report["head"]["scores"])
  return report


def _top_step(split: int, graphdef, tx, trainable, opt_state, frozen, batch):
  """One AdamW step of the top layers and the head on a stream batch."""
  loss, grads = jax.value_and_grad(functools.partial(_top_loss, split, graphdef))(
      trainable, frozen, batch)
  updates, opt_state = tx.update(grads, opt_state, trainable)
  return optax.apply_updates(trainable, updates), opt_state, loss


def check_warmup(rm, steps: int) -> None:
  """Refuses reward_model.optim.warmup_steps outside [0, steps) (the AdamW steps of a run)."""
  if not 0 <= rm.optim.warmup_steps < steps:
    raise ConfigError(f"config.reward_model.optim.warmup_steps={rm.optim.warmup_steps} must be in "
                      f"[0, {steps}) (the training steps).")


# ------------------------------------------------------------------------------ recipe "full"


def train_full(model: ScalarHeadLM, parts: dict, config, pad_id: int) -> dict:
  """Recipe "full": every weight trained with AdamW (reward_model.optim) for num_epochs epochs on
  the training pairs, shuffled. parts as in `train_head`. -> the report's entries."""
  rm = config.reward_model
  rows = {name: (*joined(*p), rm.batch_size, rm.num_buckets, pad_id) for name, p in parts.items()}
  rng = np.random.default_rng(config.seed)
  train_batches = [b for _ in range(rm.num_epochs) for b in pair_batches(*rows["train"], rng)]
  check_warmup(rm, len(train_batches))
  evals = {name: pair_batches(*r) for name, r in rows.items()}
  before = {name: evaluate_pairs(model, b, f"score {name} (before)") for name, b in evals.items()}
  losses = pretrain.fit(model, train_batches, rm.optim, "train reward model", bradley_terry_loss)
  after = {name: evaluate_pairs(model, b, f"score {name}") for name, b in evals.items()}
  steps_per_epoch = len(train_batches) // rm.num_epochs
  return {"before": before, "after": after,
          "epoch_loss": [float(np.mean(losses[i:i + steps_per_epoch]))
                         for i in range(0, len(losses), steps_per_epoch)]}


# ------------------------------------------------------------------------------ build

TRAIN = {"full": train_full, "head": train_head}


def build(config, student_path: Path, folder: Path, work: Path) -> None:
  """Trains the reward model from the backbone's folder (`student_path`: the student's, or
  reward_model.backbone) by reward_model.recipe; writes it (HF folder + tokenizer) and REPORT
  into `folder`. `work` keeps what a stopped build computed (recipe "top": `stream_batches`)."""
  start = time.time()
  rm = config.reward_model
  tokenizer = checkpoints.load_tokenizer(student_path)
  task = pairs(config)
  parts, cut = {}, {}
  for name, examples in [("train", task.train), ("held_out", task.eval)]:
    *parts[name], cut[name] = pair_parts(examples, tokenizer, config.data.question_len,
                                         rm.response_len)
  model = initial_model(student_path, rm.init, config.seed)
  recipe = rm.get("recipe", "full")
  if recipe == "top":   # the one recipe that keeps work between builds: its stream takes hours
    report = train_top(model, parts, config, tokenizer.pad_token_id, work)
  else:
    report = TRAIN[recipe](model, parts, config, tokenizer.pad_token_id)
  checkpoints.save_reward_model(model, folder, tokenizer)
  report.update(config=rm.to_dict(), backbone=str(student_path),
                question_len=config.data.question_len, truncated=cut,
                seconds=time.time() - start, peak_rss_gib=peak_rss_gib())
  (folder / REPORT).write_text(json.dumps(report, indent=2))


def peak_rss_gib() -> float:
  """This process's peak resident memory so far, GiB (Linux: ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def backbone_ref(config) -> str:
  """The model reference the reward model is built from: config.reward_model.backbone, or (unset
  or "") the student's, config.student.path."""
  return str(config.reward_model.get("backbone") or config.student.path)


def student_identity(config, student: Path) -> str:
  """What the backbone (`backbone_ref`, resolved to `student`) is, for `cache_key`: a
  "pretrained:" one by its pretraining config (any clone and cache_dir finds the entry), any
  other by its resolved path."""
  ref = backbone_ref(config)
  if ref.startswith(model_refs.PRETRAINED):
    return f"{ref}@{pretrain.cache_key(config.pretrain)}"
  return str(student.expanduser().resolve())


def ensure_reward_model(config) -> Path:
  """-> the reward model's HF folder under config.reward_model.cache_dir, built once from the
  student's folder (atomically: `cache.build_once`)."""
  validate(config)
  student = model_refs.resolve(backbone_ref(config), config)
  final = (Path(config.reward_model.cache_dir).expanduser() / "reward_model"
           / cache_key(config, student_identity(config, student)))
  # Beside the entry and keyed like it: a rerun of a stopped build reads what it had computed.
  work = final.parent / f".{final.name}.work"
  folder = cache.build_once(final, REPORT, lambda folder: build(config, student, folder, work))
  shutil.rmtree(work, ignore_errors=True)
  return folder


BUILDS = ("both", "reward_model", "judge")


def print_report(name: str, folder: Path, seconds: float) -> None:
  """One built (or found) model's held-out accuracy, its recipe's candidates and its build time."""
  report = json.loads((folder / REPORT).read_text())
  after = report["after"]
  trained_on = "train" if "train" in after else "fit"   # recipe "top": the fit split
  print(f"{name}: {folder}")
  print(f"held-out pairwise accuracy {after['held_out']['accuracy']:.3f} "
        f"(n={after['held_out']['n']}, before training "
        f"{report['before']['held_out']['accuracy']:.3f}); {trained_on} "
        f"{after[trained_on]['accuracy']:.3f} (n={after[trained_on]['n']})")
  if "kept" in report:   # recipe "top": the head alone or the trained top, chosen on dev
    for candidate in ("head", "top"):
      scores = report[candidate]["scores"]
      print(f"  {candidate}: dev {scores['dev']['accuracy']:.3f}, held-out "
            f"{scores['held_out']['accuracy']:.3f}")
    print(f"kept: {report['kept']}")
  print(f"build wall time {report['seconds']:.0f} s; this call {seconds:.1f} s")


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  config, build_which = _CONFIG.value, _BUILD.value
  # "both": the reward model, then the judge when the config has one (config.judge_model).
  which = {"both": ["reward_model"] + (["judge"] if "judge_model" in config else []),
           "reward_model": ["reward_model"], "judge": ["judge"]}[build_which]
  for name in which:
    start = time.time()
    folder = ensure_reward_model(config if name == "reward_model" else judge_config(config))
    print_report(name, folder, time.time() - start)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", "configs/hh_rlhf_cpu.py",
                                            "A config with a reward_model block.")
  _BUILD = flags.DEFINE_enum("build", "both", BUILDS,
                             "Which to build or find: the reward model, the judge "
                             "(config.judge_model), or both (the judge only if the config has it).")
  run_command(lambda args: app.run(main, args), sys.argv)
