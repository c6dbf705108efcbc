r"""What one WST training step costs on real models, phase by phase, against what the evaluation
pays per answer: `configs/real_gsm8k_cpu.py` (SmolLM2-135M-Instruct teaches
Qwen2.5-Coder-0.5B-Instruct; --config real_gsm8k_v2_cpu: the instruction after the question), its
first training batch, at each answer budget of --budgets.

    python benchmarks/train_step.py --label after [--budgets 256 512] [--phases-at 256 512]

For each budget:
  * the whole jitted step (`step.make_train_step`, as train.py jits it): its compile time (AOT,
    timed alone) and the seconds of its second call, per student answer: what each step of a
    run pays after its first (the first call, recorded beside it as first_call_s, also pays
    whatever a process pays once; labels before "after-top-p" timed that one call alone);
  * at the budgets of --phases-at, each phase of `step.Phases` jitted and timed alone (its second
    call, as the step), in the step's order on the step's own intermediate values: the teacher
    writing (its prefill timed as the same phase with a one-token budget; decode = the rest), the
    hand-over to the student's tokenizer, the student's answers (prefill the same way; with the
    decode row-steps run against the sum of the answer lengths), the reward, the old policy, the
    reference and the PPO update. Each with its FLOPs (matmuls, LM head and attention of the shapes
    it runs; `flops` below) and its compute floor: those FLOPs at the bf16 rate with f32
    accumulation measured in this run on each model's own MLP matmuls at the phase's rows;
  * the evaluation's rate beside it: `generate_queued` (config.eval.batch_size slots, bf16) on
    the first --questions training questions with no instruction, seconds per answer with its
    compile time left out.

Results go to --out (train_step.json) under --label, beside the other labels already there (the
"before" and "after" of the step-cost issue). The load average is recorded before and after each
part: run it alone on the machine, figures under load are not results.

Target (the step-cost issue): the step's seconds per answer at most 1.5x the evaluation's at each
budget. The JSON records it as met or not; the exit status is non-zero when it is missed.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from answer_rate import attention_flops, dot_rate, layer_flops_per_token, load  # noqa: E402
from wst_jax import sharding  # noqa: E402
from wst_jax.data import batches  # noqa: E402
from wst_jax.experiment import Setup, init_state  # noqa: E402
from wst_jax.optim import optimizer  # noqa: E402
from wst_jax.sampling import generate_queued  # noqa: E402
from wst_jax.step import (instructions_per_question, make_phases, make_train_step,  # noqa: E402
                          student_prompts)

MAX_RATIO = 1.5   # the step's seconds per answer over the evaluation's
PREFILL_ROWS = 4096  # rows of the matmul that measures the prefill's bf16 rate

_compile_s = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: _compile_s.append(secs) if event.startswith("/jax/core/compile/")
    else None)


def timed_call(fn, *args):
  """AOT-compiles jit(fn) for args, then runs it twice -> (output, s of the second call,
  compile s, s of the first call). The second call is what each step of a run after its first
  pays; the first one also pays whatever a process pays once."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  seconds = []
  for _ in range(2):
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    seconds.append(time.perf_counter() - t0)
  return out, seconds[1], compile_s, seconds[0]


def flops(cfg, rows: int, tokens: int, context: int, head_rows: int) -> float:
  """A forward pass of `rows` x `tokens` new tokens over a `context`-slot cache (itself
  included): the layers' matmuls, the attention (every slot, padded or not: what runs) and the LM
  head at `head_rows` positions."""
  head = 2 * cfg.hidden_size * cfg.vocab_size * head_rows
  return (layer_flops_per_token(cfg) * rows * tokens
          + attention_flops(cfg, rows, tokens, context) + head)


def decode_flops(cfg, rows: int, steps: int, context: int) -> float:
  """`steps` decode steps of `rows` rows after a `context`-slot prompt (the cache grows)."""
  return sum(flops(cfg, rows, 1, context + i + 1, rows) for i in range(steps))


def phase_entry(seconds, compile_s, gflop, rate) -> dict:
  return dict(seconds=round(seconds, 2), compile_s=round(compile_s, 1),
              floor_gflop=round(gflop / 1e9, 1), floor_s=round(gflop / rate, 2),
              vs_floor=round(seconds / (gflop / rate), 2))


def longest(batch, field: str) -> int:
  return int(np.asarray(batch[field + "_mask"]).sum(1).max())


def phases_at(setup, rollout, state, frozen, batch, tx, rates) -> dict:
  """Each phase of the step alone, in order, on the step's own values (see the module doc).

  A phase's floor is the work it cannot avoid, at the bf16 rate: each question's prompt once
  (not once per instruction) over its batch's longest prompt (not the config's maximum), each
  answer token once (not the longest answer times the rows). The same floor for any version of
  the step, so `vs_floor` shows what a version wastes."""
  config = setup.config
  tcfg, scfg = rates["teacher_cfg"], rates["student_cfg"]
  k = instructions_per_question(config)
  phases = make_phases(config, rollout, setup.roles, tx, setup.reward_fn)
  one = dataclasses.replace(rollout, instruction_len=1, answer_len=1)
  phases_one = make_phases(config, one, setup.roles, tx, setup.reward_fn)
  rng = jax.random.key(0)
  b = batch["teacher_prompt"].shape[0]
  rows = b * k
  pt = longest(batch, "teacher_prompt")
  n = rollout.instruction_len
  prefill_rate, decode_rate = rates["teacher_bf16_prefill"], rates["teacher_bf16_decode"]
  out = dict(load_before=load())

  # Teacher: prefill (a one-token budget), then the rest.
  _, pre_s, pre_c, _ = timed_call(phases_one.write, state.params, batch, rng)
  instruction, s, c, _ = timed_call(phases.write, state.params, batch, rng)
  out["teacher_prefill"] = phase_entry(pre_s, pre_c, flops(tcfg, b, pt, pt, b), prefill_rate)
  out["teacher_decode"] = phase_entry(s - pre_s, c, decode_flops(tcfg, rows, n, pt),
                                      decode_rate)

  (ids, mask), s, c, _ = timed_call(phases.hand_over, instruction)
  out["hand_over"] = dict(seconds=round(s, 3), compile_s=round(c, 1))

  # Student: prefill (a one-token budget), then the decode.
  _, pre_s, pre_c, _ = timed_call(phases_one.answer, frozen, batch, ids, mask)
  answer, s, c, _ = timed_call(phases.answer, frozen, batch, ids, mask)
  lengths = np.asarray(answer.mask).sum(1)
  prefix = longest(batch, "student_prefix") if "student_prefix" in batch else 0
  rest = int(np.asarray(mask).sum(1).max()) + longest(batch, "student_suffix") + 2  # + sep
  student_rate = rates["student_bf16_prefill"]
  out["student_prefill"] = phase_entry(
      pre_s, pre_c, flops(scfg, b, prefix, prefix, 0)
      + flops(scfg, rows, rest, prefix + rest, rows), student_rate)
  out["student_decode"] = phase_entry(
      s - pre_s, c, sum(decode_flops(scfg, 1, int(l), prefix + rest) for l in lengths),
      rates["student_bf16_decode"])
  # A static batch runs every row until its longest answer ends; `row_steps` counts what ran.
  row_steps = answer.row_steps if getattr(answer, "row_steps", None) is not None else (
      rows * lengths.max())
  out["student_decode"].update(
      row_steps=int(row_steps), sum_answer_lengths=int(lengths.sum()),
      row_steps_per_answer_token=round(int(row_steps) / max(1, int(lengths.sum())), 2),
      answers_at_budget=int(np.sum(lengths >= rollout.answer_len)))

  reward, s, c, _ = timed_call(phases.reward, frozen, batch, answer)
  out["reward"] = dict(seconds=round(s, 3), compile_s=round(c, 1),
                       mean=round(float(np.mean(reward)), 3))

  score_flops = flops(tcfg, b, pt, pt, 0) + flops(tcfg, rows, n, pt + n, rows * n)
  (old_logp, old_values, _), s, c, _ = timed_call(phases.policy, state.params, batch,
                                                  instruction)
  out["old_policy"] = phase_entry(s, c, score_flops, prefill_rate)
  _, s, c, _ = timed_call(phases.reference, frozen, batch, instruction)
  out["reference"] = phase_entry(s, c, score_flops, prefill_rate)

  # The update on stand-in advantages (their values do not change its cost), with the entries
  # this version's policy_fn reads.
  action_mask = instruction.mask.astype(jnp.float32)
  repeated = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), batch)
  experience = dict(
      sequence=jnp.concatenate([repeated["teacher_prompt"], instruction.tokens], 1),
      seq_mask=jnp.concatenate([repeated["teacher_prompt_mask"], instruction.mask], 1),
      prompt=repeated["teacher_prompt"], prompt_mask=repeated["teacher_prompt_mask"],
      instruction=instruction.tokens, instruction_mask=instruction.mask,
      mask=action_mask, old_logprobs=old_logp, advantages=action_mask * 0.1,
      old_values=old_values, returns=jnp.zeros_like(old_logp))
  _, s, c, _ = timed_call(phases.update, state.params, state.opt_state, experience, rng)
  # forward + backward: 3x the forward's FLOPs, per epoch over all rows.
  out["ppo_update"] = phase_entry(s, c, 3 * config.ppo.num_epochs * score_flops, prefill_rate)
  out["sum_of_phases_s"] = round(sum(v["seconds"] for v in out.values()
                                     if isinstance(v, dict) and "seconds" in v), 1)
  out["load_after"] = load()
  return out


def eval_rate(setup, rollout, arrays) -> dict:
  """The evaluation's way of answering: generate_queued over the questions, no instruction."""
  budget = rollout.answer_len
  n = len(arrays["teacher_prompt"])
  empty = jnp.zeros((n, 0), jnp.int32), jnp.zeros((n, 0), bool)
  prompt, mask = jax.device_get(jax.jit(student_prompts, static_argnums=3)(
      {k: jnp.asarray(v) for k, v in arrays.items()}, *empty, rollout))
  student = nnx.merge(setup.roles.student, setup.frozen["student"])
  before = load()
  _compile_s.clear()
  t0 = time.perf_counter()
  lengths = []
  for _, gen in generate_queued(student, prompt, mask, slots=setup.config.eval.batch_size,
                                max_new_tokens=budget, eos_ids=rollout.student_eos,
                                pad_id=rollout.student_pad):
    lengths += gen.mask.sum(1).tolist()
  seconds, compiling = time.perf_counter() - t0, sum(_compile_s)
  return dict(questions=n, slots=setup.config.eval.batch_size, seconds=round(seconds, 1),
              compile_s=round(compiling, 1),
              s_per_answer=round((seconds - compiling) / n, 3),
              mean_answer_tokens=round(float(np.mean(lengths)), 1),
              answers_at_budget=int(np.sum(np.asarray(lengths) >= budget)),
              load_before=before, load_after=load())


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--label", required=True, help="e.g. before / after")
  parser.add_argument("--config", default="real_gsm8k_cpu", help="a module of configs/")
  parser.add_argument("--budgets", type=int, nargs="+", default=[256, 512])
  parser.add_argument("--phases-at", type=int, nargs="*", default=[256, 512])
  parser.add_argument("--questions", type=int, default=64)
  parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
  args = parser.parse_args()

  config = importlib.import_module(f"configs.{args.config}").get_config()
  with config.unlocked():
    config.task.max_train = max(config.train.batch_size, args.questions)
  setup = Setup(config)
  arrays = setup.encode(setup.task.train)
  rows = batches.batch_indices(0, config.train.batch_size, len(arrays["teacher_prompt"]),
                               config.seed)
  batch = batches.take(arrays, rows)
  if hasattr(batches, "bucket_widths"):  # cut to what the prompts hold, as train.py does (the
    # step before the step-cost change had no buckets: "before" runs this script on that code)
    batch = batches.trim(batch, batches.bucket_widths(arrays, rows, config.data.prompt_bucket))
  batch = sharding.put_batch(batch, setup.mesh)
  tx = optimizer(config)
  frozen = setup.training_frozen()
  state, _ = init_state(setup, tx)
  k = instructions_per_question(config)
  answers = config.train.batch_size * k
  tcfg = nnx.merge(setup.roles.reference, frozen["reference"]).cfg
  scfg = nnx.merge(setup.roles.student, frozen["student"]).cfg
  # The bf16 rate (f32 accumulation) of each model's MLP matmuls: at a decode step's rows and at
  # a prefill's (rows x tokens).
  rates = dict(teacher_cfg=tcfg, student_cfg=scfg)
  for name, cfg in (("teacher", tcfg), ("student", scfg)):
    rates[f"{name}_bf16_decode"] = dot_rate(cfg, answers, jnp.bfloat16)
    rates[f"{name}_bf16_prefill"] = dot_rate(cfg, PREFILL_ROWS, jnp.bfloat16)
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).parents[1]).stdout.strip()
  result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                commit=commit, machine=platform.processor() or platform.machine(),
                jax=jax.__version__, config=f"configs/{args.config}.py",
                questions_per_step=config.train.batch_size, instructions_per_question=k,
                answers_per_step=answers,
                bf16_gflops={k: round(v / 1e9) for k, v in rates.items() if "bf16" in k},
                load_at_start=load(),
                budgets={})
  out_path = Path(args.out)

  def write():
    saved = json.loads(out_path.read_text()) if out_path.exists() else {}
    saved[args.label] = result
    out_path.write_text(json.dumps(saved, indent=2) + "\n")

  missed = []
  for budget in args.budgets:
    rollout = dataclasses.replace(setup.rollout, answer_len=budget)
    entry = result["budgets"][str(budget)] = {}
    if budget in args.phases_at:
      entry["phases"] = phases_at(setup, rollout, state, frozen, batch, tx, rates)
      write()
    step = make_train_step(config, rollout, setup.roles, tx, setup.reward_fn)
    before = load()
    _, seconds, compile_s, first_s = timed_call(step, state, frozen, batch)
    entry["step"] = dict(seconds=round(seconds, 1), first_call_s=round(first_s, 1),
                         compile_s=round(compile_s, 1),
                         s_per_answer=round(seconds / answers, 3), load_before=before,
                         load_after=load())
    write()
    entry["eval"] = eval_rate(setup, rollout, batches.take(arrays, np.arange(args.questions)))
    ratio = entry["step"]["s_per_answer"] / entry["eval"]["s_per_answer"]
    entry["step_vs_eval"] = round(ratio, 2)
    entry["target_met"] = ratio <= MAX_RATIO
    if not entry["target_met"]:
      missed.append(budget)
    write()
    print(json.dumps({budget: entry}, indent=1), flush=True)
  result["targets"] = {"max_step_vs_eval": MAX_RATIO, "missed_at_budgets": missed}
  write()
  sys.exit(1 if missed else 0)


if __name__ == "__main__":
  main()
