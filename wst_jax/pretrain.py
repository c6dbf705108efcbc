r"""Pretrains the embedded default teacher and student (no pretrained LM exists offline).

    python -m wst_jax.pretrain --config configs/pretrain_cpu.py          # build (or find) them
    python -m wst_jax.pretrain --config configs/pretrain_cpu.py --check  # + evaluate them

The student gets a latent capability that the right instruction unlocks: after a worked-steps
phrase it writes the solution one step per line (each step one small fact, mostly right); after
any other phrase, or none, it answers "#### N" at once (2-3 steps composed in one go, mostly
wrong for a model this small). The teacher writes a phrase of the whole pool uniformly, so it asks
for worked steps only ~20% of the time before RL.

`ensure_pretrained(config)` caches the HF folders under config.cache_dir, keyed by a hash of the
config, the problem generator's version and the data files read; a second call returns at once.
"""
from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from wst_jax import cache, checkpoints
from wst_jax import tokenizer as tokens
from wst_jax.data import assets, synthetic
from wst_jax.data.batches import left_pad
from wst_jax.errors import ConfigError, NotFoundError, run_command
from wst_jax.models import Decoder, DecoderConfig, positions_from_mask
from wst_jax.sampling import generate
from wst_jax.verifiers import gsm8k_correct

PRETRAIN_STREAM = "pretrain"   # synthetic problems of pretraining (the RL task uses its own)
TOKENIZER_STREAM = "tokenizer"
_CALCULATOR_NOTE = re.compile(r"<<[^>]*>>")  # GSM8K's "<<3*4=12>>": never written by our models


# ------------------------------------------------------------------------------ data

def read_gsm8k_text(path: str) -> list[str]:
  """GSM8K train questions and solutions (calculator notes dropped), for the tokenizer."""
  if not path:
    return []
  path = assets.resolve(path)   # an "assets:" reference: one line naming the ways to get it
  if not Path(path).is_file():
    raise NotFoundError(f"config.tokenizer.gsm8k_path={path!r} does not exist; point it at "
                        "GSM8K train.jsonl (the CPU configs look in ../shared/assets/gsm8k/ or "
                        "$WST_ASSETS/gsm8k/), or set it to '' to train the tokenizer on "
                        "synthetic text only (another cache entry, other models).")
  from wst_jax.data.tasks import read_gsm8k
  return [e["question"] + "\n" + _CALCULATOR_NOTE.sub("", e["solution"]) for e in read_gsm8k(path)]


def student_texts(problems: list[dict], config, rng: np.random.Generator) -> list[tuple[str, str]]:
  """(instruction, answer text) per problem, the kind drawn from config.student.mixture:
  a worked-steps phrase -> the worked solution; a direct / neutral phrase or none ("") ->
  "#### N"."""
  mixture = config.student.mixture.to_dict()
  out = []
  for problem, kind in zip(problems, rng.choice(list(mixture), size=len(problems),
                                                p=list(mixture.values()))):
    if kind == "worked":
      out.append((rng.choice(synthetic.WORKED_STEPS_PHRASES), problem["solution"]))
    else:
      phrase = rng.choice(synthetic.DIRECT_PHRASES) if kind == "direct" else ""
      out.append((phrase, synthetic.direct_solution(problem["answer"])))
  return out


def student_rows(tokenizer, problems: list[dict], config, rng: np.random.Generator):
  """(prompt ids, target ids) per problem: student_prompt_ids(instruction), ids(" " + answer)
  + [eos], with `student_texts`."""
  prompts, targets = [], []
  for problem, (instruction, answer) in zip(problems, student_texts(problems, config, rng)):
    prompts.append(tokens.student_prompt_ids(
        tokenizer, tokens.instruction_ids(tokenizer, instruction), problem["question"],
        config.prompt))
    targets.append(tokens.target_ids(tokenizer, answer))
  return prompts, targets


def teacher_rows(tokenizer, problems: list[dict], config, rng: np.random.Generator):
  """(teacher meta-prompt ids, ids(" " + phrase) + [eos]), the phrase uniform over the pool."""
  phrases = rng.choice(synthetic.INSTRUCTION_POOL, size=len(problems))
  return ([tokens.teacher_prompt_ids(tokenizer, p["question"], config.prompt) for p in problems],
          [tokens.target_ids(tokenizer, phrase) for phrase in phrases])


def tokenizer_corpus(config, gsm8k_text: list[str]) -> list[str]:
  """Text as the models will see it (student sequences of each instruction kind, teacher
  prompts with a phrase, the pool itself), and GSM8K train text."""
  rng = np.random.default_rng(config.seed)
  problems = synthetic.problems("train", config.tokenizer.num_problems, seed=config.seed,
                                stream=TOKENIZER_STREAM)
  prompt = config.prompt
  texts = list(synthetic.INSTRUCTION_POOL)
  for problem, (instruction, answer) in zip(problems, student_texts(problems, config, rng)):
    question = problem["question"]
    texts.append(prompt.student_prefix + (" " + instruction if instruction else "")
                 + prompt.student_suffix.format(question=question) + " " + answer)
    texts.append(prompt.teacher_template.format(question=question) + " "
                 + rng.choice(synthetic.INSTRUCTION_POOL))
  return texts + gsm8k_text


def pack(prompts: list[list[int]], targets: list[list[int]], seq_len: int, target_len: int,
         pad_id: int, field: str) -> dict[str, np.ndarray]:
  """Teacher-forced rows [prompt][target][pad...], right-padded:

  ids int32[N, seq_len], mask bool[N, seq_len] (real tokens); for the loss, per target token k:
  at int32[N, target_len] (the position whose output predicts it), label int32[N, target_len],
  weight bool[N, target_len]. A longer row is an error naming config.<field>.seq_lens/target_len.
  """
  n = len(prompts)
  ids = np.full((n, seq_len), pad_id, np.int32)
  mask = np.zeros((n, seq_len), bool)
  at = np.zeros((n, target_len), np.int32)
  label = np.full((n, target_len), pad_id, np.int32)
  weight = np.zeros((n, target_len), bool)
  for i, (p, t) in enumerate(zip(prompts, targets)):
    for name, length, limit in [("seq_lens", len(p) + len(t), seq_len),
                                ("target_len", len(t), target_len)]:
      if length > limit:
        raise ConfigError(f"a training row has {length} tokens but config.{field}.{name}={limit}; "
                          "raise it.")
    ids[i, :len(p) + len(t)] = p + t
    mask[i, :len(p) + len(t)] = True
    at[i, :len(t)] = np.arange(len(p) - 1, len(p) + len(t) - 1)
    label[i, :len(t)] = t
    weight[i, :len(t)] = True
  return {"ids": ids, "mask": mask, "at": at, "label": label, "weight": weight}


def bucketed_batches(prompts: list[list[int]], targets: list[list[int]], train, pad_id: int,
                     field: str, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
  """Rows in batches of train.batch_size, each row in the shortest of train.seq_lens that holds
  it (rows differ in length, and padding costs as much as tokens); a bucket's last partial batch
  is dropped. -> `pack` dicts of the static shapes [batch_size, seq_len], in a seeded order."""
  seq_lens = sorted(train.seq_lens)
  lengths = np.array([len(p) + len(t) for p, t in zip(prompts, targets)])
  # Too long for every bucket: the last one, where `pack` raises.
  bucket = np.minimum(np.searchsorted(seq_lens, lengths), len(seq_lens) - 1)
  out = []
  for b, seq_len in enumerate(seq_lens):
    rows = np.flatnonzero(bucket == b)
    for start in range(0, len(rows) - train.batch_size + 1, train.batch_size):
      chunk = rows[start:start + train.batch_size]
      out.append(pack([prompts[i] for i in chunk], [targets[i] for i in chunk], seq_len,
                      train.target_len, pad_id, field))
  return [out[i] for i in rng.permutation(len(out))]


# ------------------------------------------------------------------------------ training

def decoder_config(model_cfg, tokenizer) -> DecoderConfig:
  """config.<role>.model (HF config.json fields) + the tokenizer's vocabulary and special ids."""
  return DecoderConfig.from_hf(dict(model_cfg.to_dict(), vocab_size=len(tokenizer),
                                    bos_token_id=tokenizer.bos_token_id,
                                    eos_token_id=tokenizer.eos_token_id,
                                    pad_token_id=tokenizer.pad_token_id),
                               source="config.model")


def optimizer(optim, num_steps: int) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay; no weight decay on vectors (norms, biases)."""
  if not 0 <= optim.warmup_steps < num_steps:
    raise ConfigError(f"optim.warmup_steps={optim.warmup_steps} must be in [0, num_steps="
                      f"{num_steps}).")
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, optim.learning_rate, optim.warmup_steps, num_steps,
      end_value=optim.learning_rate * optim.final_lr_fraction)
  return optax.chain(
      optax.clip_by_global_norm(optim.max_grad_norm),
      optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay,
                  mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params)))


def target_loss(graphdef, params, batch) -> jax.Array:
  """Mean next-token cross-entropy over the target tokens of `batch` (see `pack`).

  Only the target positions go through the output head: the prompt is most of every row, and
  the unused full-sequence logits are dropped by jit.
  """
  model = nnx.merge(graphdef, params)
  ids, mask = batch["ids"], batch["mask"]
  _, hidden, _ = model(ids, positions_from_mask(mask), mask)
  hidden = jnp.take_along_axis(hidden, batch["at"][..., None], axis=1)        # [B, K, D]
  logp = jax.nn.log_softmax(model.logits(hidden), axis=-1)
  nll = -jnp.take_along_axis(logp, batch["label"][..., None], axis=-1)[..., 0]
  weight = batch["weight"].astype(jnp.float32)
  return jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def train_step(loss_fn, graphdef, tx, params, opt_state, batch):
  """One AdamW step on loss_fn(graphdef, params, batch): -> (params, opt_state, loss)."""
  loss, grads = jax.value_and_grad(functools.partial(loss_fn, graphdef))(params, batch)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def fit(model: nnx.Module, batches: list[dict[str, np.ndarray]], optim, desc: str,
        loss_fn=target_loss) -> list[float]:
  """Trains `model` in place, one AdamW step of `loss_fn(graphdef, params, batch) -> f32[]` per
  batch (one compilation per batch shape); -> the loss of every step."""
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optimizer(optim, len(batches))
  step = jax.jit(functools.partial(train_step, loss_fn, graphdef, tx), donate_argnums=(0, 1))
  opt_state = tx.init(params)
  losses = []
  bar = tqdm(batches, desc=desc)
  for batch in bar:
    params, opt_state, loss = step(params, opt_state, batch)
    losses.append(float(loss))
    bar.set_postfix(loss=f"{losses[-1]:.3f}")
  nnx.update(model, params)
  return losses


def _train_role(role: str, tokenizer, rows_fn, config, seed: int):
  """Builds, trains and returns (model, losses) for config.<role>, on num_steps x batch_size
  fresh problems (each seen once)."""
  train = config[role]
  rng = np.random.default_rng(seed)
  problems = synthetic.problems("train", train.num_steps * train.batch_size, seed=config.seed,
                                stream=PRETRAIN_STREAM)
  prompts, targets = rows_fn(tokenizer, problems, config, rng)
  batches = bucketed_batches(prompts, targets, train, tokenizer.pad_token_id, role, rng)
  model = Decoder(decoder_config(train.model, tokenizer), rngs=nnx.Rngs(seed))
  return model, fit(model, batches, train.optim, desc=f"pretrain {role}")


def _cpu_seconds() -> float:
  return sum(os.times()[:2])


def build(config, folder: Path) -> None:
  """Trains the tokenizer, teacher and student; writes tokenizer/, teacher/, student/ (HF
  folders) and pretrain.json (losses, wall and CPU times) into `folder`."""
  wall, cpu = time.time(), _cpu_seconds()
  tokenizer = tokens.train_tokenizer(
      tokenizer_corpus(config, read_gsm8k_text(config.tokenizer.gsm8k_path)),
      config.tokenizer.vocab_size)
  tokenizer.save_pretrained(folder / "tokenizer")
  report = {"config": config.to_dict(), "seconds": {}, "cpu_seconds": {}, "final_loss": {}}
  report["seconds"]["tokenizer"] = time.time() - wall
  for role, rows_fn, seed in [("teacher", teacher_rows, config.seed + 1),
                              ("student", student_rows, config.seed)]:
    start = time.time()
    model, losses = _train_role(role, tokenizer, rows_fn, config, seed)
    checkpoints.save_decoder(model, folder / role, tokenizer)
    report["seconds"][role] = time.time() - start
    report["final_loss"][role] = float(np.mean(losses[-10:]))
  report["seconds"]["total"] = time.time() - wall
  report["cpu_seconds"]["total"] = _cpu_seconds() - cpu
  (folder / "pretrain.json").write_text(json.dumps(report, indent=2))


def cache_key(config) -> str:
  """Hash of everything the built models depend on: the config (cache_dir aside), the problem
  generator's version and the contents of the data files read (not their paths: every clone of
  the repository finds the same entry)."""
  content = {k: v for k, v in config.to_dict().items() if k != "cache_dir"}
  content["tokenizer"] = {k: v for k, v in content["tokenizer"].items() if k != "gsm8k_path"}
  return cache.content_key({"config": content, "generator": synthetic.GENERATOR_VERSION,
                            "gsm8k": cache.file_hash(assets.resolve(config.tokenizer.gsm8k_path))})


def ensure_pretrained(config) -> dict[str, Path]:
  """-> {"teacher", "student", "tokenizer"}: HF folders under config.cache_dir, built once
  (atomically: see `cache.build_once`)."""
  final = Path(config.cache_dir).expanduser() / "pretrained" / cache_key(config)
  cache.build_once(final, "pretrain.json", lambda folder: build(config, folder))
  return {role: final / role for role in ("teacher", "student", "tokenizer")}


# ------------------------------------------------------------------------------ check

def _jitted_generate(model: Decoder, **kwargs):
  """generate() for `model` as a jitted function of (prompt, prompt_mask, rng)."""
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda state, *args: generate(nnx.merge(graphdef, state), *args, **kwargs))
  return functools.partial(fn, state)


def _texts(tokenizer, generation) -> list[str | None]:
  """Generated text of each row without its stop token; None for a row that never stopped."""
  eos = tokenizer.eos_token_id
  return [tokenizer.decode([t for t in row[m] if t != eos]) if done else None
          for row, m, done in zip(np.asarray(generation.tokens), np.asarray(generation.mask),
                                  np.asarray(generation.done))]


def student_accuracy(answer, tokenizer, problems, instruction: str, config) -> float:
  """Share of `problems` answered right after `instruction` ("" = none); `answer` is the
  student's jitted greedy generate (prompt, prompt_mask, rng)."""
  rows = [tokens.student_prompt_ids(tokenizer, tokens.instruction_ids(tokenizer, instruction),
                                    p["question"], config.prompt) for p in problems]
  prompt, mask = left_pad(rows, config.check.prompt_len, tokenizer.pad_token_id,
                          "check.prompt_len")
  answers = _texts(tokenizer, answer(prompt, mask, jax.random.PRNGKey(0)))
  return float(np.mean([a is not None and gsm8k_correct(a, p["answer"])
                        for a, p in zip(answers, problems)]))


def teacher_phrases(teacher, tokenizer, problems, config) -> list[str | None]:
  """Instructions the teacher samples (temperature 1), check.teacher_samples per problem;
  None where it wrote no stop token within check.instruction_len tokens."""
  check = config.check
  rows = [tokens.teacher_prompt_ids(tokenizer, p["question"], config.prompt) for p in problems]
  prompt, mask = left_pad(rows * check.teacher_samples, check.prompt_len,
                          tokenizer.pad_token_id, "check.prompt_len")
  run = _jitted_generate(teacher, max_new_tokens=check.instruction_len,
                         eos_ids=(tokenizer.eos_token_id,), pad_id=tokenizer.pad_token_id,
                         greedy=False)
  texts = _texts(tokenizer, run(prompt, mask, jax.random.PRNGKey(config.seed)))
  return [t.removeprefix(" ") if t is not None else None for t in texts]


def check(config, paths: dict[str, Path]) -> dict:
  """Student accuracy (greedy) on check.num_problems held-out problems with no instruction, each
  worked-steps phrase and the first check.direct_phrases direct phrases (and the mean of each
  kind); the teacher's phrase distribution (share exactly in the pool, share worked-steps)."""
  tokenizer = checkpoints.load_tokenizer(paths["tokenizer"])
  student = checkpoints.load_decoder(paths["student"])
  teacher = checkpoints.load_decoder(paths["teacher"])
  problems = synthetic.problems("eval", config.check.num_problems, seed=config.seed,
                                stream=PRETRAIN_STREAM)
  instructions = {"none": [""], "worked": list(synthetic.WORKED_STEPS_PHRASES),
                  "direct": list(synthetic.DIRECT_PHRASES[:config.check.direct_phrases])}
  answer = _jitted_generate(student, max_new_tokens=config.check.answer_len,
                            eos_ids=(tokenizer.eos_token_id,), pad_id=tokenizer.pad_token_id)
  accuracy = {kind: {i: student_accuracy(answer, tokenizer, problems, i, config) for i in group}
              for kind, group in instructions.items()}
  phrases = teacher_phrases(teacher, tokenizer, problems, config)
  counts = {p: phrases.count(p) for p in synthetic.INSTRUCTION_POOL}
  return {
      "student_accuracy": accuracy,
      "student_mean_accuracy": {kind: float(np.mean(list(group.values())))
                                for kind, group in accuracy.items()},
      "teacher": {"samples": len(phrases),
                  "in_pool": sum(counts.values()) / len(phrases),
                  "worked_steps": sum(counts[p] for p in synthetic.WORKED_STEPS_PHRASES)
                                  / len(phrases),
                  "counts": counts}}


def main(argv):
  del argv
  config = _CONFIG.value
  paths = ensure_pretrained(config)
  print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
  report = json.loads((paths["student"].parent / "pretrain.json").read_text())
  print(json.dumps({k: report[k] for k in ("seconds", "cpu_seconds", "final_loss")}))
  if _CHECK.value:
    print(json.dumps(check(config, paths), indent=2))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", "configs/pretrain_cpu.py",
                                            "Pretraining config file.")
  _CHECK = flags.DEFINE_bool("check", False, "Evaluate the pretrained teacher and student.")
  run_command(lambda args: app.run(main, args), sys.argv)
