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


def tokenizer(folder: Path, vocab_size: int = 400):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = decoders.ByteLevel()
  corpus = [common.TEACHER_TEMPLATE, common.STUDENT_PREFIX, common.STUDENT_SUFFIX,
            common.HUMAN_INSTRUCTION, *PHRASES, "####"]
  corpus += [q["question"] + " " + q["solution"] for q in questions(200)]
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
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


def probe_score(task, text, gold):
  """A stand-in for `verifiers.score`: a deterministic reward in {0, .25, .5, .75, 1} that
  depends on the answer text and the gold answer. The random tiny student is never right, so the
  real verifier pays 0 everywhere and the advantages would not depend on the answers at all."""
  import zlib
  del task
  return (zlib.crc32(f"{text}|{gold}".encode()) % 5) / 4


def use_gsm8k_files(config, folder: Path, train: list[dict], evals: list[dict]):
  """Writes the examples as GSM8K JSONL ({"question", "answer": "<solution> #### N"}) to
  folder/train.jsonl and folder/eval.jsonl and points config.task (name "gsm8k") at them."""
  import json
  folder = Path(folder)
  for name, examples in [("train", train), ("eval", evals)]:
    (folder / f"{name}.jsonl").write_text("".join(
        json.dumps({"question": e["question"], "answer": e["solution"]}) + "\n"
        for e in examples))
  config.task.name = "gsm8k"
  config.task.train_path = str(folder / "train.jsonl")
  config.task.eval_path = str(folder / "eval.jsonl")
  config.task.eval_size = len(evals)
  return config


# ------------------------------------------------------------------ a world where WST can learn
# A student that answers "What is a plus b?" correctly only after the magic instruction
# PHRASES[0] (otherwise "#### 0"), and a teacher that writes each of the 4 PHRASES with
# probability 1/4. Training the teacher with PPO must find the magic phrase: reward 0.25 -> 1.

def _teacher_forced_rows(prompts, targets, pad_id):
  """[left-padded prompt][right-padded target] rows, as the WST step lays them out at inference
  (positions count real tokens only): -> ids int32[N,L], mask bool[N,L], loss_mask bool[N,L]
  where loss_mask[:, j] says that position j predicts a target token (ids[:, j + 1])."""
  import numpy as np
  p_len, t_len = max(map(len, prompts)), max(map(len, targets))
  n = len(prompts)
  ids = np.full((n, p_len + t_len), pad_id, np.int32)
  mask = np.zeros((n, p_len + t_len), bool)
  for i, (p, t) in enumerate(zip(prompts, targets)):
    ids[i, p_len - len(p):p_len], mask[i, p_len - len(p):p_len] = p, True
    ids[i, p_len:p_len + len(t)], mask[i, p_len:p_len + len(t)] = t, True
  loss_mask = np.zeros_like(mask)
  loss_mask[:, p_len - 1:-1] = mask[:, p_len:]
  return ids, mask, loss_mask


def _target_logits(model, ids, mask):
  from wst_jax.models import positions_from_mask
  logits, _, _ = model(ids, positions_from_mask(mask), mask)
  return logits


def train_decoder(model: Decoder, prompts: list[list[int]], targets: list[list[int]], *,
                  pad_id: int, steps: int, learning_rate: float = 5e-3, batch_size: int = 64,
                  seed: int = 0) -> list[float]:
  """Teacher-forced cross-entropy on `targets` after `prompts` (updates `model` in place), Adam
  with warmup + cosine decay, random minibatches; -> the loss of every step."""
  import numpy as np
  import jax.numpy as jnp
  import optax

  ids, mask, loss_mask = map(jnp.asarray, _teacher_forced_rows(prompts, targets, pad_id))
  n = ids.shape[0]
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, max(1, steps // 10), steps, learning_rate * 0.05))
  opt_state = tx.init(params)

  def loss_fn(params, ids, mask, loss_mask):
    logits = _target_logits(nnx.merge(graphdef, params), ids, mask)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    m = loss_mask[:, :-1].astype(jnp.float32)
    return jnp.sum(nll * m) / jnp.sum(m)

  @jax.jit
  def update(params, opt_state, rows):
    loss, grads = jax.value_and_grad(loss_fn)(params, ids[rows], mask[rows], loss_mask[rows])
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  losses = []
  for _ in range(steps):
    rows = jnp.asarray(rng.choice(n, size=min(batch_size, n), replace=False))
    params, opt_state, loss = update(params, opt_state, rows)
    losses.append(loss)
  nnx.update(model, params)
  return [float(x) for x in jax.device_get(losses)]


def score_targets(model: Decoder, prompts: list[list[int]], targets: list[list[int]], *,
                  pad_id: int):
  """Teacher-forced scores of each row's target: -> (exact bool[N]: the argmax reproduces every
  target token, so greedy decoding writes exactly the target; logprob f32[N]: log p(target))."""
  import numpy as np
  ids, mask, loss_mask = _teacher_forced_rows(prompts, targets, pad_id)
  graphdef, params = nnx.split(model)
  logits = jax.jit(lambda p, i, m: _target_logits(nnx.merge(graphdef, p), i, m))(params, ids, mask)
  logits = np.asarray(logits[:, :-1], np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  nxt, m = ids[:, 1:], loss_mask[:, :-1]
  exact = ((logits.argmax(-1) == nxt) | ~m).all(axis=1)
  return exact, (np.take_along_axis(logp, nxt[..., None], -1)[..., 0] * m).sum(axis=1)


def magic_questions(digits: int = 10) -> list[dict]:
  """Every "What is a plus b?" for a, b < digits with a + b > 0 (so that the student's wrong
  answer, 0, is always wrong)."""
  return [{"id": f"m{a}{b}", "question": f"What is {a} plus {b}?", "answer": str(a + b),
           "solution": f"{a} + {b} = {a + b}\n#### {a + b}"}
          for a in range(digits) for b in range(digits) if a + b]


def make_magic(folder: Path, *, digits: int = 10, student_steps: int = 220,
               teacher_steps: int = 100, learning_rate: float = 3e-3, student_hidden: int = 64,
               student_layers: int = 2, batch_size: int = 64, magic_weight: int = 20,
               seed: int = 0) -> dict:
  """Pretrained teacher and student of the magic-word world, saved as HF folders.

  Student (llama): prompt ids(prefix) + ids(instruction) + ids(suffix.format(question)), the
  segment-wise layout of `step.answer_questions`; target ids(" #### a+b") + eos after
  PHRASES[0], ids(" #### 0") + eos after any other instruction (the other phrases, none, the
  human instruction, random token strings). Teacher (gpt2): prompt
  ids(teacher_template.format(question)), target ids(phrase) + eos, each phrase equally often.
  -> {"teacher", "student": folders, "losses": per step, "checks": what the models learned:
  student_magic / student_other = share of questions answered right after PHRASES[0] / wrong
  ("#### 0") after each other phrase, none and the human instruction (greedy, teacher-forced);
  teacher_phrase_probs = mean p(phrase + eos | meta-prompt) of each of the PHRASES}.
  """
  import numpy as np
  from wst_jax.data.batches import segment_ids
  folder = Path(folder)
  tok = tokenizer(folder / "tokenizer")
  eos, pad = tok.eos_token_id, tok.pad_token_id
  ids = lambda text: segment_ids(tok, text)
  rng = np.random.default_rng(seed)
  qs = magic_questions(digits)
  prefix = ids(common.STUDENT_PREFIX)
  others = [ids(p) for p in PHRASES[1:]] + [[], ids(common.HUMAN_INSTRUCTION)]
  student_rows = {"magic": ([], []), "other": ([], []), "noise": ([], [])}
  for q in qs:
    suffix = ids(common.STUDENT_SUFFIX.format(question=q["question"]))
    right, wrong = ids(" #### " + q["answer"]) + [eos], ids(" #### 0") + [eos]
    noise = [rng.integers(3, len(tok), rng.integers(1, 7)).tolist() for _ in range(2)]
    for kind, instructions, target in [("magic", [ids(PHRASES[0])], right),
                                       ("other", others, wrong), ("noise", noise, wrong)]:
      for instruction in instructions:
        student_rows[kind][0].append(prefix + instruction + suffix)
        student_rows[kind][1].append(target)
  # Most rows teach addition (the hard part); "#### 0" after anything else is learnt at once.
  rows = [student_rows["magic"]] * magic_weight + [student_rows["other"], student_rows["noise"]]
  prompts, targets = [p for r in rows for p in r[0]], [t for r in rows for t in r[1]]
  student = Decoder(decoder_config("llama", len(tok), student_hidden, student_layers),
                    rngs=nnx.Rngs(seed))
  student_losses = train_decoder(student, prompts, targets, pad_id=pad, steps=student_steps,
                                 learning_rate=learning_rate, batch_size=batch_size, seed=seed)
  t_prompts = [ids(common.TEACHER_TEMPLATE.format(question=q["question"])) for q in qs]
  t_targets = [ids(phrase) + [eos] for phrase in PHRASES]
  teacher = Decoder(decoder_config("gpt2", len(tok), 32, 1), rngs=nnx.Rngs(seed + 1))
  teacher_losses = train_decoder(teacher, [p for p in t_prompts for _ in PHRASES],
                                 t_targets * len(t_prompts), pad_id=pad, steps=teacher_steps,
                                 seed=seed)
  # One teacher-forced pass per model (each distinct shape is a compile).
  magic_n = len(student_rows["magic"][0])
  exact, _ = score_targets(student, student_rows["magic"][0] + student_rows["other"][0],
                           student_rows["magic"][1] + student_rows["other"][1], pad_id=pad)
  _, logprob = score_targets(teacher, [p for t in t_targets for p in t_prompts],
                             [t for t in t_targets for _ in t_prompts], pad_id=pad)
  checks = {"student_magic": float(exact[:magic_n].mean()),
            "student_other": float(exact[magic_n:].mean()),
            "teacher_phrase_probs": np.exp(logprob).reshape(len(PHRASES), -1).mean(1).tolist()}
  return {"teacher": checkpoints.save_decoder(teacher, folder / "teacher", tokenizer=tok),
          "student": checkpoints.save_decoder(student, folder / "student", tokenizer=tok),
          "losses": {"student": student_losses, "teacher": teacher_losses}, "checks": checks}
