"""Config validation before anything is allocated: every error names the field and the fix."""
from __future__ import annotations

from wst_jax.data import assets
from wst_jax.errors import ConfigError

CHOICES = {
    "reward.kind": ("verifier", "reward_model"),
    "reward.baseline": ("none", "student"),
    "ppo.advantage": ("gae", "group"),
    "task.name": ("synthetic", "gsm8k", "math500", "hh_rlhf"),
    "prompt.chat": ("", "system", "user_before", "user_after"),
    "student.backend": ("jax", "openai"),
}
POSITIVE = ("train.batch_size", "train.num_steps", "train.checkpoint_every",
            "train.keep_checkpoints", "rollout.instruction_len", "rollout.answer_len",
            "rollout.temperature", "ppo.num_epochs", "ppo.num_minibatches", "ppo.group_size",
            "optim.learning_rate", "optim.max_grad_norm", "data.teacher_prompt_len",
            "data.student_prefix_len", "data.student_suffix_len", "data.prompt_bucket",
            "eval.batch_size")
UNIT_INTERVAL = ("ppo.gamma", "ppo.lam", "rollout.top_p")


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    if part not in node:
      raise ConfigError(f"config.{dotted} is missing; see configs/common.py for the full schema.")
    node = node[part]
  return node


def _data_sources(config) -> dict[str, str]:
  """Config field -> the data source it names, for every file a run of `config` reads."""
  sources = {"task.train_path": config.task.train_path, "task.eval_path": config.task.eval_path}
  for i, extra in enumerate(config.eval.extra_tasks):
    if "eval_path" in extra.get("task", {}):
      sources[f"eval.extra_tasks[{i}].task.eval_path"] = extra["task"]["eval_path"]
  if "tokenizer" in config.pretrain:  # the embedded default's tokenizer reads GSM8K train text
    sources["pretrain.tokenizer.gsm8k_path"] = config.pretrain.tokenizer.gsm8k_path
  return sources


def validate(config) -> None:
  """Raises ValueError naming the first bad field.

  A task data reference ("assets:<name>": no file was found when the config was built) must
  resolve now, so that missing data stops a run before any model is built. Paths and hub names
  are left to the readers: a config may name data of another machine.
  """
  for field, choices in CHOICES.items():
    if _get(config, field) not in choices:
      raise ConfigError(f"config.{field}={_get(config, field)!r}; choose one of {choices}.")
  for field in POSITIVE:
    if not _get(config, field) > 0:
      raise ConfigError(f"config.{field}={_get(config, field)!r} must be > 0.")
  for field in UNIT_INTERVAL:
    if not 0 < _get(config, field) <= 1:
      raise ConfigError(f"config.{field}={_get(config, field)!r} must be in (0, 1].")
  if _get(config, "task.dev_size") < 0 or (config.task.dev_size and
                                           config.task.name == "synthetic"):
    raise ConfigError(f"config.task.dev_size={config.task.dev_size} must be >= 0, and 0 for the "
                      "synthetic task (its eval problems are their own stream).")
  if _get(config, "prompt.dialogue") and not config.prompt.chat:
    raise ConfigError("config.prompt.dialogue=True renders a transcript's turns as chat turns: "
                      "set config.prompt.chat ('system', 'user_before' or 'user_after').")
  if _get(config, "data.question_len") < 0:
    raise ConfigError(f"config.data.question_len={config.data.question_len} must be >= 0 "
                      "(0 = never cut a question).")
  if config.rollout.top_k < 0:
    raise ConfigError(f"config.rollout.top_k={config.rollout.top_k} must be >= 0 (0 = off).")
  if config.train.batch_size % config.ppo.num_minibatches:
    raise ConfigError(f"config.ppo.num_minibatches={config.ppo.num_minibatches} must divide "
                      f"config.train.batch_size={config.train.batch_size}: a PPO minibatch holds "
                      "whole groups (the instructions for one question).")
  if config.ppo.advantage == "group" and config.ppo.group_size < 2:
    raise ConfigError("config.ppo.group_size must be >= 2 with ppo.advantage='group'.")
  if config.reward.kind == "reward_model" and not config.reward.model_path:
    raise ConfigError("config.reward.model_path is required with reward.kind='reward_model'.")
  if config.reward.kind == "verifier" and config.task.name == "hh_rlhf":
    raise ConfigError("config.reward.kind='verifier' has no gold answers for task hh_rlhf; "
                      "use reward.kind='reward_model'.")
  rows = _get(config, "eval.rows")
  if not rows.startswith("a") or rows != "".join(sorted(set(rows) & set("abcd"))):
    raise ConfigError(f"config.eval.rows={rows!r} must be letters of 'abcd' in order, starting "
                      "with 'a' (the student alone, which every row is compared with), e.g. 'ad'; "
                      "row (e) is set by config.eval.teacher_path.")
  if config.student.backend == "openai":
    _check_api_student(config)
  elif config.student.base_url or config.student.model:
    raise ConfigError(f"config.student.base_url={config.student.base_url!r} / model="
                      f"{config.student.model!r} are set, but config.student.backend='jax' "
                      "answers with the decoder at config.student.path: set backend='openai' "
                      "to ask the server.")
  for field, source in _data_sources(config).items():
    try:
      assets.resolve(source)
    except assets.MissingDataError as e:
      raise ConfigError(f"config.{field}={source!r}: {e}") from None


def _check_api_student(config) -> None:
  """A config with student.backend "openai", before anything is built: ConfigError naming the
  field."""
  student = config.student
  if not str(student.base_url).startswith(("http://", "https://")):
    raise ConfigError(f"config.student.base_url={student.base_url!r} must be an http:// or "
                      "https:// URL, e.g. 'http://127.0.0.1:8000/v1'.")
  if not student.model:
    raise ConfigError("config.student.model is empty: set the model id the server lists at "
                      f"{student.base_url.rstrip('/')}/models.")
  for field in ("max_concurrency", "timeout_s"):
    if not student[field] > 0:
      raise ConfigError(f"config.student.{field}={student[field]!r} must be > 0.")
  if student.max_retries < 0:
    raise ConfigError(f"config.student.max_retries={student.max_retries!r} must be >= 0.")
  if not config.prompt.chat:
    raise ConfigError("config.student.backend='openai' sends chat turns: set config.prompt.chat "
                      "to 'system', 'user_before' or 'user_after' (where the instruction goes).")
