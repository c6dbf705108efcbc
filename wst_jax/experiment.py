r"""The experiment a config describes, as train.py and eval.py both start it: model references ->
local folders -> mesh -> memory check -> tokenizers, models, reward, task (`Setup`); the train
state and its checkpoints.

Imports run one way: pretrain, zoo <- model_refs <- reward_model <- experiment <- eval <- train,
optim <- plan <- experiment, and records, step <- student_api <- experiment. Nothing here imports
train or eval.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import logging
import sys
import time
import weakref
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from wst_jax import (checkpoints, model_refs, plan, reward_model, rewards, sharding,
                     student_api)
from wst_jax.config_checks import validate
from wst_jax.data import batches
from wst_jax.data.registry import load_task
from wst_jax.errors import ConfigError, UnavailableError
from wst_jax.models import ScalarHeadLM
from wst_jax.step import Roles, Rollout, TrainState

# ------------------------------------------------------------------------------ model references


def resolve_model_ref(ref: str, config) -> Path:
  """A model reference of the config -> the local HF folder (or .gguf file) it names, built on
  first use: "pretrained:reward_model" and "pretrained:judge" by
  `reward_model.ensure_reward_model` (trained and cached; the judge from config.judge_model),
  every other by `model_refs.resolve`."""
  if str(ref) == reward_model.REFERENCE:
    return reward_model.ensure_reward_model(config)
  if str(ref) == reward_model.JUDGE:
    return reward_model.ensure_reward_model(reward_model.judge_config(config))
  return model_refs.resolve(ref, config)


def resolve_model_paths(config) -> dict[str, Path]:
  """Every model folder the run reads, by role: "teacher", "student", "reward_model" (reward.kind
  "reward_model") and "eval_teacher" (eval.teacher_path set). What must be built is built here,
  before any weights are read."""
  refs = {"teacher": config.teacher.path}
  if config.student.backend == "jax":   # (a student behind an API has no folder here)
    refs["student"] = config.student.path
  if config.reward.kind == "reward_model":
    refs["reward_model"] = config.reward.model_path
  if config.eval.teacher_path:
    refs["eval_teacher"] = config.eval.teacher_path
  return {role: resolve_model_ref(ref, config) for role, ref in refs.items()}


# ------------------------------------------------------------------------------ setup


def _with_prompt(config, prompt: dict):
  """A copy of `config` with these config.prompt fields (`batches.chat_prompts`) and, when they
  include the student's, prompt.chat="" (already rendered; else the student's turns are
  rendered per example, or by its server)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.prompt.update(prompt, chat="" if "student_prefix" in prompt else config.prompt.chat)
  return config


class Setup:
  """Everything a run (train or eval) builds from a config before the first step."""

  def __init__(self, config, student_from: Setup | None = None, *, training: bool = True,
               workdir: str | Path | None = None):
    """`student_from`: a setup of the same student and reward, whose student, tokenizer and
    reward this one shares instead of loading them again (eval's row (e): another teacher for
    the same student). `training`: False for a setup that only samples (eval): the memory check
    leaves out the KL reference, and `training_frozen` refuses to make it. `workdir` (default
    config.workdir): where a student behind an API keeps its answer journal."""
    validate(config)
    if student_from is not None:
      _check_same_student(config, student_from.config)
    self.config, self.training = config, training
    # A student behind an API (student.backend "openai"): asked over HTTP on the host, with no
    # tokenizer, weights or reward function here; its server is checked before any other work.
    self.student_api = self.score_text = None   # (score_text: set below for an API student)
    if config.student.backend == "openai":
      if jax.process_count() > 1:
        raise ConfigError("config.student.backend='openai' runs on one process (its requests "
                          f"are made on the host); this run has {jax.process_count()}.")
      self.student_api = (student_from.student_api if student_from is not None else
                          student_api.make_student(config, Path(workdir or config.workdir)))
    self.mesh = sharding.make_mesh(config.mesh.to_dict())
    self.paths = resolve_model_paths(config)
    # A config that cannot fit is refused here, before any weights are read.
    memory_plan = plan.check_run(config, self.mesh, self.paths, training=training)
    if memory_plan is not None and jax.process_index() == 0:
      logging.info("%s", plan.format_plan(memory_plan))
    self.teacher_tokenizer = checkpoints.load_tokenizer(self.paths["teacher"])
    if student_from is not None:
      self.tokenizer = student_from.tokenizer
    elif self.student_api is None:
      self.tokenizer = checkpoints.load_tokenizer(self.paths["student"])  # answers, rewards
    else:
      self.tokenizer = None
    if config.prompt.chat:   # from here on the prompts are whole texts in each chat template
      config = self.config = _with_prompt(config, batches.chat_prompts(
          config.prompt, self.teacher_tokenizer, self.tokenizer))
    self.rollout = Rollout.from_config(config, self.teacher_tokenizer, self.tokenizer, self.mesh)
    # Each weight is read straight into its sharding: no device holds a whole sharded weight.
    teacher_lm = checkpoints.load_decoder(self.paths["teacher"], mesh=self.mesh,
                                          **config.teacher.dtypes)
    teacher = ScalarHeadLM(teacher_lm.cfg, rngs=nnx.Rngs(config.seed), lm=teacher_lm)
    teacher_def, self.teacher_params = nnx.split(teacher, nnx.Param)
    reference_def = nnx.graphdef(teacher_lm)
    if student_from is None and self.student_api is not None:
      # Answers arrive as text: the reward reads them on the host (`rewards.text_reward`).
      student_def, self.frozen, self.reward_fn = None, {}, None
      self.score_text = rewards.text_reward(config, self.paths.get("reward_model"))
    elif student_from is None:
      student = checkpoints.load_decoder(self.paths["student"], mesh=self.mesh,
                                         **config.student.dtypes)
      student_def, student_params = nnx.split(student, nnx.Param)
      self.frozen = {"student": student_params}
      self.reward_fn = self._reward_fn()
    else:
      student_def, self.reward_fn = student_from.roles.student, student_from.reward_fn
      self.score_text = student_from.score_text
      self.frozen = dict(student_from.frozen)
    self.roles = Roles(teacher_def, reference_def, student_def)
    self.task = load_task(config.task, config.seed)

  def _reward_fn(self):
    if self.config.reward.kind == "verifier":
      return rewards.verifier_reward(self.config.task.verifier, self.tokenizer, self.mesh)
    judge = checkpoints.load_tokenizer(self.paths["reward_model"])
    if judge.get_vocab() != self.tokenizer.get_vocab():
      raise ConfigError(f"config.reward.model_path={self.config.reward.model_path!r} has another "
                        "tokenizer than the student's, but the step's reward model reads the "
                        "student's ids: build it on the student (config.reward_model.backbone='').")
    model = checkpoints.load_reward_model(self.paths["reward_model"], mesh=self.mesh)
    rm_def, rm_params = nnx.split(model, nnx.Param)
    self.frozen["reward_model"] = rm_params
    return rewards.reward_model_reward(rm_def)

  @property
  def student_id(self) -> str:
    """What names the student in record keys: its folder; behind an API, its model id (as the
    journal: any server of it), settings and chat placement, which its prompts depend on (the
    step inputs hold the bare questions)."""
    if self.student_api is not None:
      student = self.student_api
      return json.dumps([student.endpoint.model, student.settings, student.prompt.to_dict()],
                        sort_keys=True)
    return str(self.paths["student"].resolve())

  def encode(self, examples):
    return batches.encode_examples(examples, self.teacher_tokenizer, self.tokenizer, self.config)

  def training_frozen(self) -> dict:
    """self.frozen and, as "reference", the KL penalty's frozen teacher LM: a copy of the
    initial teacher's LM params, taken before the first step (the step donates the teacher's
    buffers and updates them). Only training makes it: sampling never reads it."""
    if not self.training:
      raise ValueError("this Setup was built with training=False, so its memory check left out "
                       "the KL reference; build it with Setup(config) to train.")
    return {**self.frozen, "reference": jax.tree.map(jnp.copy, self.teacher_params["lm"])}


def _check_same_student(config, other) -> None:
  """Raises ValueError, naming the field, unless `config` has `other`'s student and reward."""
  for field in ("student", "reward"):
    if config[field].to_dict() != other[field].to_dict():
      raise ValueError(f"config.{field} differs from the setup whose student is shared: "
                       f"{config[field].to_dict()} vs {other[field].to_dict()}")


# ------------------------------------------------------------------------------ train state


def init_state(setup: Setup, tx: optax.GradientTransformation) -> tuple[TrainState, TrainState]:
  """-> (state, shardings): the sharded initial state (params like their logical axes, optimizer
  state like the params) and the sharding of each of its leaves."""
  mesh, config = setup.mesh, setup.config
  param_sh = sharding.state_shardings(setup.teacher_params, mesh)
  params = jax.device_put(setup.teacher_params, param_sh)
  abstract_opt = jax.eval_shape(tx.init, params)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_sh,
                                 transform_non_params=lambda _: sharding.replicated(mesh),
                                 is_leaf=lambda x: isinstance(x, nnx.Variable))
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
  rep = sharding.replicated(mesh)
  state = TrainState(jax.device_put(jnp.int32(0), rep), params, opt_state,
                     jax.device_put(jnp.float32(config.ppo.kl_coef), rep),
                     jax.device_put(jax.random.PRNGKey(config.seed), rep))
  shardings = TrainState(rep, param_sh, opt_sh, rep, rep)
  return state, shardings


# ------------------------------------------------------------------------------ checkpoints


def checkpoint_manager(workdir: Path, config) -> ocp.CheckpointManager:
  # Orbax writes each step to a temporary folder and renames it when complete: a crash never
  # leaves a half-written checkpoint that restore would pick up.
  return ocp.CheckpointManager(
      (workdir / "checkpoints").absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints,
                                           enable_async_checkpointing=True))


def on_every_process(ok: bool) -> bool:
  """True when `ok` holds on every process (each reads only its own shards of a checkpoint)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def gist(err: Exception, limit: int = 300) -> str:
  """An error for one log line: its root cause (orbax wraps tensorstore's error in a bare
  Exception that names no file), first line without tensorstore's spec dump, cut to its last
  `limit` characters (the file and what is wrong with it)."""
  while err.__cause__ is not None:
    err = err.__cause__
  text = (str(err).splitlines() or [""])[0].split(" [tensorstore_spec")[0]
  return f"{type(err).__name__}: {'...' if len(text) > limit else ''}{text[-limit:]}"


def set_aside(folder: Path) -> Path:
  """Renames `folder` to the first free `<name>.damaged[.N]` beside it (orbax lists only
  step-number names) -> the new path."""
  for n in itertools.count():
    aside = folder.with_name(f"{folder.name}.damaged" + (f".{n}" if n else ""))
    if not aside.exists():
      return folder.rename(aside)


ORBAX_SOURCE = str(Path(ocp.__file__).parent)


def _raised_in_orbax(err: BaseException | None) -> bool:
  """Whether `err` was raised (or passed through) in orbax-checkpoint's own code."""
  tb = getattr(err, "__traceback__", None)
  while tb is not None:
    if tb.tb_frame.f_code.co_filename.startswith(ORBAX_SOURCE):
      return True
    tb = tb.tb_next
  return False


@contextlib.contextmanager
def abandoned_reads_quiet():
  """Silences the reads a failed orbax restore abandons, and nothing else.

  Orbax reads every array in one event loop and closes it at the first error, with the other
  reads still in flight: each of those then fails in tensorstore's thread ("RuntimeError: Event
  loop is closed", printed by sys.unraisablehook), and its coroutine or task prints the read
  error again when it is garbage-collected (sys.unraisablehook, or the "asyncio" logger's "...
  exception was never retrieved"). These are copies that no one can catch: the error itself
  still reaches the caller. Other unraisable exceptions and asyncio logs pass through.
  """
  hook, asyncio_log = sys.unraisablehook, logging.getLogger("asyncio")

  def noise(err, obj=None) -> bool:
    closed = isinstance(err, RuntimeError) and str(err) == "Event loop is closed"
    return (closed and obj is None) or _raised_in_orbax(err)

  def unraisable(u):
    if not noise(u.exc_value, u.object):
      hook(u)

  def records(record):
    return not (record.exc_info and noise(record.exc_info[1]))

  sys.unraisablehook = unraisable
  asyncio_log.addFilter(records)
  try:
    yield
  finally:
    sys.unraisablehook = hook
    asyncio_log.removeFilter(records)


def settle_abandoned_tasks(timeout_s: float = 10.0) -> None:
  """Waits (at most timeout_s) until the tasks of closed event loops are garbage-collected.

  A failed orbax restore leaves the reads of the other arrays behind as such tasks: tensorstore
  holds each until its read ends, then they are a cycle that only the collector frees, and their
  noise comes out when it does. Collecting them here puts that inside `abandoned_reads_quiet`."""
  # type(), not isinstance(): isinstance reads __class__, which some lazy module proxies (torch's)
  # answer with a deprecation warning.
  left = [weakref.ref(t) for t in gc.get_objects()
          if issubclass(type(t), asyncio.Task) and t.get_loop().is_closed()]
  deadline = time.monotonic() + timeout_s
  gc.collect()
  while any(r() is not None for r in left) and time.monotonic() < deadline:
    time.sleep(0.05)
    gc.collect()


def try_restore(mngr: ocp.CheckpointManager, step: int, abstract) -> tuple[object, str]:
  """-> (the state of `step`, "") or (None, why it cannot be read: `gist`), with the reads that
  orbax abandons on a failure silenced and settled."""
  with abandoned_reads_quiet():
    try:
      return mngr.restore(step, args=ocp.args.StandardRestore(abstract)), ""
    except Exception as err:  # noqa: BLE001  see restore_or_init; KeyboardInterrupt still stops
      why = gist(err)
    settle_abandoned_tasks()   # only now: the error's traceback held them until the except ended
    return None, why


def restore_or_init(mngr: ocp.CheckpointManager, state: TrainState,
                    shardings: TrainState) -> TrainState:
  """The newest checkpoint of `mngr` that can be read, restored with the shapes of `state` onto
  `shardings`; `state` itself when there is none.

  Newer checkpoints that cannot be read are skipped, each with one warning naming its folder and
  the cause, and renamed <step>.damaged (orbax never saves a step whose folder exists; nothing is
  deleted). Any exception from restoring a step counts: orbax raises bare Exceptions, ValueErrors
  and OSErrors for damaged files, depending on which file and how. Raises UnavailableError (a
  RuntimeError), renaming nothing, when none can be read.
  """
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          state, shardings)
  unreadable = {}  # step -> why
  for step in reversed(mngr.all_steps()):
    restored, why = try_restore(mngr, step, abstract)
    if on_every_process(not why):
      break
    unreadable[step] = why or "unreadable on another process"
  else:
    if unreadable:
      raise UnavailableError(
          f"no checkpoint in {mngr.directory} can be read; nothing was deleted or renamed. "
          + "; ".join(f"step {s}: {why}" for s, why in unreadable.items())
          + ". Restore them from a copy, or move them away to start afresh. (A config whose "
          "model or optimizer differs from the run that wrote them fails the same way.)")
    return state
  if unreadable:
    if jax.process_index() == 0:
      for bad, why in unreadable.items():
        folder = Path(mngr.directory) / str(bad)
        logging.warning("checkpoint %s cannot be read (%s); renamed it %s and resume from step "
                        "%d", folder, why, set_aside(folder).name, step)
    multihost_utils.sync_global_devices("wst: damaged checkpoints set aside")
    mngr.reload()  # forget the renamed steps: their numbers are saved again
  logging.info("resuming from checkpoint step %d", step)
  return restored
