r"""Evaluation: the paper's table. The student answers held-out questions with

  (a) no instruction, (b) a fixed human instruction, (c) the untrained teacher's instruction,
  (d) the trained teacher's instruction (latest checkpoint in the workdir), and optionally
  (e) a larger teacher (config.eval.teacher_path: a model reference, as the teacher's);
  config.eval.rows chooses among (a)-(d) (e.g. "ad" for a transfer row beside the student alone);

reports accuracy (or reward-model score) with a 95% bootstrap interval and the relative
improvement over (a), as Markdown, JSON and CSV (rendered and written by `wst_jax.report`). The
student is the JAX decoder, or one behind an API (`student_api`; the table then says what it
asked). Row (d)'s teacher may come from another run (--teacher_workdir): a teacher trained for
another student, the transfer row.

    python -m wst_jax.eval --config configs/gsm8k_cpu.py [--workdir runs/...]
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from wst_jax import errors, reward_model, rewards, sharding, student_api
from wst_jax.data import batches
from wst_jax.data.batches import segment_ids
from wst_jax.data.registry import load_eval_examples
from wst_jax.experiment import (Setup, checkpoint_manager, init_state, on_every_process,
                                resolve_model_ref, restore_or_init)
from wst_jax.optim import optimizer
from wst_jax.prompting import instruction_texts, strip_stop
from wst_jax.records import JsonlRecords
from wst_jax.report import (instructions_text, samples_markdown, tables_markdown,
                            top_instructions, write_tables)
from wst_jax.sampling import Generation, generate, generate_queued
from wst_jax.stats import (answer_shape, bootstrap_interval, length_controlled,
                           paired_comparison, win_rate)
from wst_jax.step import hand_over, student_prompts, write_instructions


def make_instruction_step(setup, source: str, teacher_def=None, instruction: str | None = None):
  """-> jitted fn(teacher_params, batch, rng) -> (instruction ids, mask [B, I] in teacher ids,
  student prompt ids, mask [B, Ls]); the first two alone for a student behind an API (asked in
  text, `student_api`).

  source: "none" (empty instruction), "fixed" (`instruction`, by default
  config.prompt.human_instruction) or "teacher" (the teacher `teacher_def`, by default the
  trained one's graph, samples it as in training).
  """
  rollout, roles = setup.rollout, setup.roles
  teacher_def = teacher_def or roles.teacher
  # In teacher ids, like a teacher's instruction (student_prompts re-tokenizes if needed).
  text = setup.config.prompt.human_instruction if instruction is None else instruction
  fixed = jnp.asarray(segment_ids(setup.teacher_tokenizer, text), jnp.int32)

  def step(teacher_params, batch, rng):
    b = batch["teacher_prompt"].shape[0]
    if source == "teacher":
      teacher = nnx.merge(teacher_def, teacher_params)
      gen = write_instructions(teacher.lm, batch, rng, rollout)
      ids, mask = strip_stop(gen.tokens, gen.mask, rollout.teacher_eos)
    elif source == "fixed":
      ids, mask = jnp.broadcast_to(fixed, (b, fixed.shape[0])), jnp.ones((b, fixed.shape[0]), bool)
    else:
      ids, mask = jnp.zeros((b, 0), jnp.int32), jnp.zeros((b, 0), bool)
    if setup.student_api is not None:
      return ids, mask
    return (ids, mask, *student_prompts(batch, *hand_over(ids, mask, rollout), rollout))

  # Replicated results: every process (of a multi-host run) reads the whole batch.
  return jax.jit(step, out_shardings=sharding.replicated(setup.mesh))


class SourceResult(NamedTuple):
  rewards: np.ndarray            # f32[N]
  instructions: list[str]        # the instruction the student saw, per row ("" for none)
  answers: list[str]             # the student's answer, per row
  instruction_tokens: np.ndarray  # int[N]  in teacher tokens
  answer_tokens: np.ndarray       # int[N]  in student tokens, the stop token included
  # An API student's requests for this row (`student_api.Counts`); None for a JAX student or
  # a row read back from its record.
  student_requests: dict | None = None


def _texts(tokenizer, ids: np.ndarray, masks: np.ndarray) -> list[str]:
  return [tokenizer.decode(r[m].tolist()) for r, m in zip(ids, masks)]


def without_stop(setup, answers: list[str]) -> list[str]:
  """A JAX student's recorded answers (`_texts`: the stop token's text kept at the end of an
  answer that ended) as a text reader should see them: without it. A judge adds its own eos
  (`rewards.TextRewardModel`), and an API student's answers never hold it."""
  stops = tuple(setup.tokenizer.decode([i]) for i in setup.rollout.student_eos)
  return [next((a[:-len(s)] for s in stops if s and a.endswith(s)), a) for a in answers]


def _batches(n: int, bs: int):
  """Row indices int[bs] of each static batch over n rows (the last filled up with row 0) and
  how many of them are real."""
  for start in range(0, n, bs):
    rows = np.arange(start, start + bs)
    yield np.where(rows < n, rows, 0), min(bs, n - start)


def _answers(setup, prompts: np.ndarray, masks: np.ndarray, desc: str):
  """The student's greedy answers to left-padded prompts [N, Ls]; yields (rows, Generation of
  those rows, numpy). One process: `generate_queued` with config.eval.batch_size slots (answers in
  the order they end). Several processes: static batches of that size, sharded over them (the
  queue is driven from one host's loop)."""
  config, rollout = setup.config, setup.rollout
  bs, n = config.eval.batch_size, len(prompts)
  student = nnx.merge(setup.roles.student, setup.frozen["student"])
  kw = dict(max_new_tokens=rollout.answer_len, eos_ids=rollout.student_eos,
            pad_id=rollout.student_pad)
  with tqdm(total=n, desc=desc, leave=False, disable=jax.process_index() != 0) as bar:
    if jax.process_count() == 1:
      yield from generate_queued(student, prompts, masks, slots=bs, progress=bar, **kw)
      return
    answer = jax.jit(lambda m, ids, mask: generate(m, ids, mask, jax.random.key(0), **kw),
                     out_shardings=sharding.replicated(setup.mesh))
    procs, proc = jax.process_count(), jax.process_index()
    mine = slice(proc * bs // procs, (proc + 1) * bs // procs)  # the rows this process feeds
    for rows, keep in _batches(n, bs):
      batch = sharding.put_batch({"ids": prompts[rows[mine]], "mask": masks[rows[mine]]},
                                 setup.mesh)
      gen = jax.device_get(answer(student, batch["ids"], batch["mask"]))
      bar.update(keep)
      yield rows[:keep], Generation(*(x[:keep] for x in gen[:4]))  # row_steps: not per row


def run_source(setup, arrays, source: str, teacher=(None, None), desc: str = "",
               seed: int = 0, record: Path | None = None,
               instruction: str | None = None) -> SourceResult:
  """The student's reward, instruction and answer for every row of `arrays`.

  teacher: (graphdef or None for the trained teacher's, params) when source == "teacher".
  instruction: the text of source "fixed" (default config.prompt.human_instruction).
  record: a JSONL file that gets one line per scored row as it is scored ({"index",
  "instruction", "answer", "reward", "instruction_tokens", "answer_tokens"}: `JsonlRecords`);
  rows already in it are not answered again, so a rerun after a crash continues where it
  stopped. The instructions are sampled again (the same seed gives the same ones) and must match
  the recorded ones. A record that holds every row is the result: read back, nothing sampled.
  """
  teacher_def, teacher_params = teacher
  config = setup.config
  n = len(arrays["teacher_prompt"])
  done = JsonlRecords(record, "index", writable=jax.process_index() == 0)
  try:
    if on_every_process(len(done) == n):   # (each process decodes unless all of them skip)
      return _result([done.get(i) for i in range(n)])
    bs = config.eval.batch_size
    instruct = make_instruction_step(setup, source, teacher_def, instruction)
    procs, proc = jax.process_count(), jax.process_index()
    if bs % procs:
      raise ValueError(f"config.eval.batch_size={bs} must divide over {procs} processes.")
    mine = slice(proc * bs // procs, (proc + 1) * bs // procs)  # the rows this process feeds
    # 1. Instructions (and a JAX student's prompts), in static batches sharded like training's.
    parts = []
    rng = jax.random.PRNGKey(seed)
    with tqdm(total=n, desc=f"{desc or source}: instructions", leave=False,
              disable=jax.process_index() != 0 or source != "teacher") as bar:
      for rows, keep in _batches(n, bs):
        batch = sharding.put_batch({k: v[rows[mine]] for k, v in arrays.items()}, setup.mesh)
        rng, key = jax.random.split(rng)
        parts.append([x[:keep] for x in jax.device_get(instruct(teacher_params, batch, key))])
        bar.update(keep)
    ids, masks, *prompts = (np.concatenate(x) for x in zip(*parts))
    instructions = _texts(setup.teacher_tokenizer, ids, masks)
    for i, r in done.rows.items():
      if r["instruction"] != instructions[i]:
        raise errors.ConfigError(
            f"{record}: row {i} was recorded with instruction {r['instruction']!r}, but this run "
            f"gives {instructions[i]!r}: the record belongs to another run; move it away to "
            "answer again.")
    todo = np.asarray([i for i in range(n) if i not in done], int)

    def keep(idx, answers: list[str], reward, answer_tokens):
      for j, i in enumerate(idx):
        done.append(dict(index=int(i), instruction=instructions[i], answer=answers[j],
                         reward=float(reward[j]), instruction_tokens=int(masks[i].sum()),
                         answer_tokens=int(answer_tokens[j])))

    # 2. Answers of the rows not recorded, each scored and recorded as it ends.
    counts = None
    if len(todo) and setup.student_api is not None:
      sent = instruction_texts(setup.teacher_tokenizer, ids, masks)   # special tokens left out
      counts = _answer_by_api(setup, arrays, todo, sent, desc or source, keep)
    elif len(todo):
      _answer_in_jax(setup, arrays, todo, *prompts, mine, desc or source, keep)
  finally:
    done.close()
  return _result([done.get(i) for i in range(n)], counts)


def _answer_in_jax(setup, arrays, todo, prompts, prompt_masks, mine: slice, desc: str,
                   keep) -> None:
  """The JAX student's answers to prompts[todo] (`_answers`), scored by the setup's reward in
  groups of config.eval.batch_size rows as they end (`mine`: the rows of a group this process
  feeds); keep(rows, texts, reward, tokens)."""
  bs = setup.config.eval.batch_size
  # The reward functions read the answer's tokens and mask only.
  score = jax.jit(lambda frozen, batch, tokens, mask: setup.reward_fn(
      frozen, batch, Generation(tokens, jnp.zeros(tokens.shape), mask, jnp.any(mask, 1))),
                  out_shardings=sharding.replicated(setup.mesh))
  pending = []

  def flush(final: bool):
    while len(pending) >= bs or (final and pending):
      group, pending[:] = pending[:bs], pending[bs:]
      idx = np.asarray([i for i, _, _ in group])
      tokens, mask = (np.stack(x) for x in zip(*[(t, m) for _, t, m in group]))
      rows = np.concatenate([np.arange(len(group)), np.zeros(bs - len(group), int)])
      batch = {k: v[idx][rows][mine] for k, v in arrays.items()}
      batch.update(tokens=tokens[rows][mine], mask=mask[rows][mine])
      batch = sharding.put_batch(batch, setup.mesh)
      tokens_, mask_ = batch.pop("tokens"), batch.pop("mask")
      reward = np.asarray(jax.device_get(score(setup.frozen, batch, tokens_, mask_)))
      keep(idx, _texts(setup.tokenizer, tokens, mask), reward, mask.sum(1))

  for rows, gen in _answers(setup, prompts[todo], prompt_masks[todo], desc):
    pending += [(int(todo[r]), t, m) for r, t, m in zip(rows, gen.tokens, gen.mask)]
    flush(final=False)
  flush(final=True)


def _answer_by_api(setup, arrays, todo, instructions: list[str], desc: str, keep) -> dict:
  """The API student's answers to rows `todo` (`ApiStudent.ask`: the journal first, each answer
  journaled as it arrives), scored on the host (`rewards.text_reward`); keep(rows, texts,
  reward, tokens). -> the requests' counts."""
  questions = [batches.decode_text(q) for q in arrays["question"][todo]]
  answers, counts = setup.student_api.ask(questions, [instructions[i] for i in todo],
                                          tqdm(total=len(todo), desc=desc, leave=False))
  texts = [a.text for a in answers]
  reward = setup.score_text(questions, texts, arrays["gold"][todo] if "gold" in arrays else None)
  keep(todo, texts, reward, [a.completion_tokens for a in answers])
  return counts


def _result(rows: list[dict], counts: dict | None = None) -> SourceResult:
  """Scored rows (as recorded, in question order) -> SourceResult."""
  return SourceResult(np.asarray([r["reward"] for r in rows], np.float32),
                      [r["instruction"] for r in rows], [r["answer"] for r in rows],
                      np.asarray([r["instruction_tokens"] for r in rows]),
                      np.asarray([r["answer_tokens"] for r in rows]), counts)


def content_key(setup, arrays, *extra: str) -> str:
  """16 hex digits naming what the student answers: the step inputs, the student's folder and
  `extra` (e.g. the instruction source and the settings that shape it)."""
  key = hashlib.sha256()
  for name in sorted(arrays):
    key.update(name.encode()), key.update(np.ascontiguousarray(arrays[name]).tobytes())
  for part in (setup.student_id, *extra):
    key.update(part.encode())
  return key.hexdigest()[:16]


def slug(text: str) -> str:
  return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def student_alone_rewards(setup, arrays, workdir: Path) -> np.ndarray:
  """Reward of the student with no instruction, per question: computed once, cached on disk."""
  path = Path(workdir) / f"baseline_rewards_{content_key(setup, arrays)}.npy"
  cached = path.exists()
  if jax.process_count() > 1:
    # All processes must agree (workdirs may be per-host disks): one that computes alone would
    # wait forever for the others in the step's collectives.
    from jax.experimental import multihost_utils
    cached = bool(np.all(multihost_utils.process_allgather(np.asarray(cached))))
  if cached:
    return np.load(path)
  rewards = run_source(setup, arrays, "none", desc="student alone (baseline)").rewards
  tmp = path.with_name(f"{path.stem}.{jax.process_index()}.tmp.npy")
  np.save(tmp, rewards)
  tmp.replace(path)  # atomic; every process writes the same values, shared disk or not
  return rewards


def trained_teacher_params(setup, workdir: Path):
  """-> (teacher params, step, stamp) of the newest readable checkpoint in workdir (see
  `restore_or_init`: damaged newer steps are skipped), or (None, 0, "") if there is none.

  stamp: which save of that step it is, orbax's commit time of the checkpoint restored. Row (d)'s
  records are keyed by it, so a teacher trained again to the same step is answered afresh."""
  mngr = checkpoint_manager(Path(workdir), setup.config)
  if mngr.latest_step() is None:
    return None, 0, ""
  state, shardings = init_state(setup, optimizer(setup.config))
  state = restore_or_init(mngr, state, shardings)
  step = int(state.step)  # the step restored: each checkpoint is saved under its state's step
  stamp = f"checkpoint {step}, committed at {mngr.metadata(step).commit_timestamp_nsecs} ns"
  return state.params, step, stamp


def teacher_setup(config, setup: Setup) -> Setup:
  """The setup of row (e): config.eval.teacher_path as the teacher, with its own tokenizer and
  chat template (its vocabulary may differ from the trained teacher's), and `setup`'s student,
  reward and task. Its weights are held in the teacher's compute dtype: it only samples."""
  other = config.copy_and_resolve_references()
  with other.unlocked():
    other.teacher.path, other.eval.teacher_path = config.eval.teacher_path, ""
    other.teacher.dtypes.param_dtype = config.teacher.dtypes.dtype
  return Setup(other, student_from=setup, training=False)


class TableSource(NamedTuple):
  name: str       # the row's name in the table, e.g. "(a) student alone"
  source: str     # "none" | "fixed" | "teacher" (`run_source`)
  teacher: tuple  # (graphdef or None for the trained teacher's, params) of a "teacher" row
  # Where a trained teacher's params come from, in the row's record key: the stamp of
  # `trained_teacher_params`; "" for a teacher that is the setup's own model folder, or none.
  origin: str
  setup: Setup    # the setup that answers the row (row (e)'s: `teacher_setup`)
  arrays: dict    # that setup's step inputs of the eval set


def table_rows(sources: list[TableSource], config, questions: list[str],
               records: Path | None = None, judge=None):
  """One table: a row per instruction source (mean reward, 95% CI, improvement over and win rate
  against the first row, mean lengths, how alike its answers are: `answer_shape`), each teacher
  row's most frequent instructions, and the paired comparison of the trained teacher's row
  "(d) ..." with every other row, as it is and at equal answer length (`length_controlled`).
  -> (rows, instructions, paired, samples): samples is `report.samples_markdown` of every row.

  sources: a row each; every row answers the same questions (`questions`, their text).
  records: a folder for each row's per-question JSONL (`run_source`), named by the row and a
  key of what it answers, so a rerun resumes each row and a changed setting starts afresh.
  judge: None, or `make_judge`'s judge, called with each row's setup, `questions` and its
  answers: a second reward model's scores f32[N]; each row then has judge_mean, its interval
  and win rate, and the paired comparisons are made under the judge too.
  """
  rows, instructions, results, judged = [], {}, {}, {}
  alone = sources[0].name
  for src in sources:
    name, setup = src.name, src.setup
    record = None
    if records is not None:
      fields = json.dumps([config.rollout.to_dict(), config.prompt.to_dict(), config.seed,
                           str(setup.paths["teacher"])], sort_keys=True, default=str)
      records.mkdir(parents=True, exist_ok=True)
      key = content_key(setup, src.arrays, name, fields, src.origin)
      record = records / f"{slug(name)}-{key}.jsonl"
    result = results[name] = run_source(setup, src.arrays, src.source, src.teacher, desc=name,
                                        seed=config.seed, record=record)
    first = results[alone]
    lo, hi = bootstrap_interval(result.rewards, config.eval.bootstrap_samples, config.seed)
    rows.append(dict(source=name, n=len(result.rewards), mean=float(result.rewards.mean()),
                     ci_low=lo, ci_high=hi, win_vs_alone=win_rate(result.rewards, first.rewards),
                     instruction_tokens=float(result.instruction_tokens.mean()),
                     answer_tokens=float(result.answer_tokens.mean()),
                     **answer_shape(result.answers),
                     record=None if record is None else str(record),
                     **({"student_requests": result.student_requests or {}}
                        if setup.student_api is not None else {})))
    if judge is not None:
      judged[name] = judge(setup, questions, result.answers)
      lo, hi = bootstrap_interval(judged[name], config.eval.bootstrap_samples, config.seed)
      rows[-1].update(judge_mean=float(judged[name].mean()), judge_ci_low=lo, judge_ci_high=hi,
                      judge_win_vs_alone=win_rate(judged[name], judged[alone]))
    if src.source == "teacher":
      instructions[name] = top_instructions(result.instructions, result.rewards)
  # A relative change is only meaningful against a positive baseline (a reward-model score can
  # be <= 0); the table shows "—" then.
  base = rows[0]["mean"]
  for r in rows:
    r["relative_improvement_pct"] = (None if r is rows[0] or base <= 0
                                     else 100.0 * (r["mean"] - base) / base)
  trained = next((k for k in results if k.startswith("(d)")), None)
  paired, boot = {}, config.eval.bootstrap_samples
  scored = {name: r.rewards for name, r in results.items()}
  for under, scores in [("", scored), (" (judge)", judged)]:
    for other in scores:
      if trained and other != trained:
        x, y = scores[trained], scores[other]
        paired[f"{trained} vs {other}{under}"] = dict(
            paired_comparison(x, y, boot, config.seed),
            length_controlled=length_controlled(x, y, results[trained].answer_tokens,
                                                results[other].answer_tokens, boot, config.seed))
  return rows, instructions, paired, samples_markdown(questions, results, judged)


def eval_sets(setup) -> list[tuple[str, dict, list[str]]]:
  """(title, step inputs, questions' text) of the run's task eval split and of each
  config.eval.extra_tasks entry (config overrides, e.g. {"task": {...}, "data": {...}}: another
  task's eval split scored by the same reward)."""
  config = setup.config
  sets = [(f"{config.task.name} (held out)", setup.encode(setup.task.eval),
           [e["question"] for e in setup.task.eval])]
  for overrides in config.eval.extra_tasks:
    extra = config.copy_and_resolve_references()
    with extra.unlocked():
      extra.update_from_flattened_dict(
          {f"{k}.{f}": v for k, fields in dict(overrides).items() for f, v in dict(fields).items()})
    examples = load_eval_examples(extra.task, config.seed)
    sets.append((f"{extra.task.name} ({Path(extra.task.eval_path).name})",
                 batches.encode_examples(examples, setup.teacher_tokenizer, setup.tokenizer,
                                         extra), [e["question"] for e in examples]))
  return sets


def make_judge(config):
  """config.eval.judge_path's reward model, reading answers as text in its own tokenizer
  (built first if it is "pretrained:judge"), or None when there is none.

  -> judge(setup, questions: list[str], answers: list[str]) -> f32[N] scores, where answers
  are as `setup`'s student recorded them (`without_stop` is applied here)."""
  if not config.eval.judge_path:
    return None
  # Answers of up to answer_len tokens and their stop token; a judge built here reads no more
  # than its training rows held.
  read = config.rollout.answer_len + 1
  if config.eval.judge_path == reward_model.JUDGE:
    read = min(read, config.judge_model.response_len)
  model = rewards.TextRewardModel(resolve_model_ref(config.eval.judge_path, config),
                                  config.data.question_len, read)
  return lambda setup, questions, answers: model.score(questions, without_stop(setup, answers))


def evaluate(config, workdir, setup=None, teacher_workdir=None) -> dict:
  """Runs every row of the table on each eval set; prints and writes the tables.

  teacher_workdir: the run whose newest checkpoint is row (d)'s teacher (default: workdir). A
  teacher trained for another student (its run's workdir) scored on config's student is the
  transfer row.
  -> {"metric", "tables": [{"title", "rows", "instructions", "paired"}], "markdown"}; written
  to workdir/eval/{table.md, results.json, table.csv}, the rows' answers to the same first
  questions side by side to workdir/eval/samples.md; each row's answers to
  workdir/eval/answers/<eval set>/<row>-<key>.jsonl as they are scored (a rerun resumes them).
  """
  workdir = Path(workdir)
  setup = setup or Setup(config, training=False, workdir=workdir)
  teacher_workdir = Path(teacher_workdir or workdir).resolve()
  # arrays: None until each eval set's step inputs are filled in below.
  rows = config.eval.rows
  fixed_rows = {
      "a": TableSource("(a) student alone", "none", (None, None), "", setup, None),
      "b": TableSource("(b) human instruction", "fixed", (None, None), "", setup, None),
      "c": TableSource("(c) untrained teacher", "teacher", (None, setup.teacher_params), "",
                       setup, None)}
  sources = [fixed_rows[r] for r in rows if r in fixed_rows]
  if "d" in rows:
    trained, step, stamp = trained_teacher_params(setup, teacher_workdir)
    if trained is None:
      logging.warning("no checkpoint in %s: row (d) is left out", teacher_workdir)
    else:
      origin = "" if teacher_workdir == workdir.resolve() else f", trained in {teacher_workdir}"
      sources.append(TableSource(f"(d) WST teacher (step {step}{origin})", "teacher",
                                 (None, trained), stamp, setup, None))
  others = []   # rows with a teacher of their own
  if config.eval.teacher_path:
    other = teacher_setup(config, setup)
    others.append(TableSource(f"(e) teacher {Path(config.eval.teacher_path).name}", "teacher",
                              (None, other.teacher_params), "", other, None))
  metric = "accuracy" if config.reward.kind == "verifier" else "reward-model score"
  judge = make_judge(config)
  tables, samples_md = [], []
  other_sets = [eval_sets(s.setup) for s in others]
  for i, (title, arrays, dialogues) in enumerate(eval_sets(setup)):
    table_sources = [s._replace(arrays=arrays) for s in sources]
    table_sources += [s._replace(arrays=sets[i][1]) for s, sets in zip(others, other_sets)]
    rows, instructions, paired, samples = table_rows(
        table_sources, config, dialogues, workdir / "eval" / "answers" / slug(title), judge)
    tables.append({"title": title, "rows": rows, "instructions": instructions, "paired": paired})
    samples_md.append(f"# {title}\n\n{samples}")
  markdown = tables_markdown(tables, metric)
  result = {"metric": metric, "tables": tables, "markdown": markdown}
  if jax.process_index() == 0:
    print("\n" + markdown + "\n")
    if tops := instructions_text(tables):
      print(tops)
    if config.eval.write_table:
      write_tables(workdir / "eval", result, samples_md)
  return result


def main(argv=None):
  """python -m wst_jax.eval; argv: the whole command line (default sys.argv). A user error
  prints its message alone (`errors.run_command`)."""
  import sys

  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run folder with the trained teacher's checkpoints; the "
                      "table goes to its eval/ (default: config.workdir).")
  flags.DEFINE_string("teacher_workdir", None, "Run folder of row (d)'s teacher, when it is "
                      "another run's (a teacher trained for another student: the transfer row).")

  def run(_):
    from wst_jax import distributed
    distributed.initialize()
    config = flags.FLAGS.config
    evaluate(config, flags.FLAGS.workdir or config.workdir,
             teacher_workdir=flags.FLAGS.teacher_workdir)

  errors.run_command(lambda args: app.run(run, args), sys.argv if argv is None else argv)


if __name__ == "__main__":
  main()
