r"""Memory plan of a WST run, per device, before anything is allocated.

    python -m wst_jax.plan --config configs/pod_gsm8k.py [--devices 32] [--device-memory-gib 16]

For the config's mesh (sizes from `--devices N`, or from config.mesh when no axis is -1, so a pod
can be planned from a laptop) it prints the bytes each device holds: the teacher (+ value head),
its frozen reference copy (a training run only), the student, the reward model (reward.kind ==
"reward_model"), the AdamW state and the gradients, the KV caches of teacher sampling and
student decoding, the largest transient of a prompt's forward pass, and an estimate of the PPO
forward/backward activations. Parameters and optimizer state are divided exactly as the run
places them: `sharding.spec_for` on the logical axes of abstract models from `nnx.eval_shape` (no
weights are read or allocated). Caches, logits and activations use the same rules for their
batch / heads / kv_heads / mlp / vocab axes.

Model shapes come from config.json in the model folders, or, when a checkpoint is not on this
machine (paper scale), from `config.plan.teacher` / `.student` / `.reward_model`: dicts of the HF
config.json fields. `config.plan.device_memory_gib` is the default device memory.

A config whose peak does not fit in USABLE_FRACTION of the device memory is refused: the error
names the config fields that shrink the largest items, and the CLI exits with code 2. A run
(experiment.Setup, through `check_run`) is refused the same way before any weights are read,
planned on its real devices' memory.

Peak = resident (params, optimizer state) + the largest phase of the step:
  sampling  teacher KV cache + one layer's transient over the prompt (attention scores, MLP);
  answering student KV cache + the same for its prompt (+ the reward model's forward);
  scoring   old-policy and reference logits over the whole batch (no gradients);
  update    gradients + the activations kept for one minibatch's backward pass.
It is an estimate: XLA's buffer assignment may overlap or keep more than this model says.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh

from wst_jax import checkpoints, errors, sharding
from wst_jax.config_checks import validate
from wst_jax.models import Decoder, DecoderConfig, ScalarHeadLM
from wst_jax.optim import optimizer  # the run's AdamW: its state's shapes and dtypes

GIB = 1024 ** 3
USABLE_FRACTION = 0.9  # the rest: XLA workspace, fragmentation, the runtime itself
DEFAULT_DEVICE_MEMORY_GIB = 16.0  # TPU v5e

FIX_MESH = ("config.mesh.fsdp / config.mesh.model (split parameters and optimizer state over "
            "more devices)")
FIX_ROWS = ("config.train.batch_size, config.mesh.data / config.mesh.fsdp (fewer rows per device), "
            "{lengths}")
FIX_ACTIVATIONS = ("config.ppo.num_minibatches (fewer rows per backward pass), "
                   "config.train.batch_size, config.data.teacher_prompt_len, "
                   "config.rollout.instruction_len")


class PlanError(errors.ConfigError):
  """The config cannot be planned or does not fit; the message names the fields to change."""


@dataclasses.dataclass(frozen=True)
class Item:
  name: str
  phase: str        # "resident" | "sampling" | "answering" | "scoring" | "update"
  total: int        # bytes over all devices' distinct data (one copy)
  per_device: int   # bytes on the most loaded device
  detail: str = ""
  fix: str = ""     # config fields that shrink it


@dataclasses.dataclass(frozen=True)
class Plan:
  mesh: dict[str, int]
  device_memory_gib: float
  items: tuple[Item, ...]
  models: dict[str, DecoderConfig]
  memory_source: str = "--device-memory-gib"  # where device_memory_gib came from, for errors
  # A student behind an API (`student_requests`): what the run will ask of it; None otherwise.
  student_requests: dict | None = None

  def phase(self, name: str) -> int:
    return sum(i.per_device for i in self.items if i.phase == name)

  @property
  def phases(self) -> dict[str, int]:
    return {p: self.phase(p) for p in ("sampling", "answering", "scoring", "update")}

  @property
  def peak(self) -> int:
    return self.phase("resident") + max(self.phases.values())

  @property
  def usable(self) -> int:
    return int(self.device_memory_gib * GIB * USABLE_FRACTION)

  @property
  def fits(self) -> bool:
    return self.peak <= self.usable


# ----------------------------------------------------------------------------- model shapes

def fix_params(config, role: str) -> str:
  """Fields that shrink a model's weights: the mesh, and bf16 weights where they are f32."""
  dtypes = config[role].dtypes
  return FIX_MESH + (f", config.{role}.dtypes.param_dtype='bfloat16'"
                     if dtypes.get("param_dtype", "float32") == "float32" else "")


def model_config(config, role: str, paths: dict | None = None) -> DecoderConfig:
  """role: "teacher" | "student" | "reward_model"; from the folder's config.json or config.plan.

  paths: the run's resolved folders by role (`experiment.resolve_model_paths`), used in place of
  the config's model references (e.g. "pretrained:student" -> its cached folder)."""
  path, overrides = {
      "teacher": (config.teacher.path, config.teacher.dtypes.to_dict()),
      "student": (config.student.path, config.student.dtypes.to_dict()),
      # Setup loads the reward model without dtype overrides; a *ForSequenceClassification
      # checkpoint has no LM head, so checkpoints.load_reward_model ties it to the embeddings.
      "reward_model": (config.reward.model_path, dict(tie_word_embeddings=True))}[role]
  path = (paths or {}).get(role, path)
  if path and (Path(path) / "config.json").is_file() or checkpoints.is_gguf(path) and Path(
      path).is_file():
    return checkpoints.load_config(path, **overrides)
  plan = config.get("plan") or {}
  plan = plan.to_dict() if hasattr(plan, "to_dict") else dict(plan)
  if role in plan:
    return DecoderConfig.from_hf(dict(plan[role]), source=f"config.plan.{role}", **overrides)
  field = "reward.model_path" if role == "reward_model" else f"{role}.path"
  raise PlanError(f"config.{field}={str(path)!r} has no config.json on this machine; add "
                  f"config.plan.{role} = dict(model_type=..., hidden_size=..., ...) with the HF "
                  "config.json fields of that model.")


def abstract_params(cls, cfg: DecoderConfig) -> nnx.State:
  """The model's nnx.Param state as ShapeDtypeStructs with their `axes` (nothing allocated)."""
  return nnx.state(nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0))), nnx.Param)


# ----------------------------------------------------------------------------- bytes per device

def shard_shape(shape, spec, mesh) -> tuple[int, ...]:
  """The per-device block of an array of `shape` placed with PartitionSpec `spec`."""
  out = []
  for size, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    out.append(-(-size // math.prod(mesh.shape[a] for a in axes)))
  return tuple(out)


def array_bytes(shape, dtype, axes, mesh) -> tuple[int, int]:
  """(total, per-device) bytes of an array with logical `axes` under the sharding rules."""
  itemsize = np.dtype(dtype).itemsize
  local = shard_shape(shape, sharding.spec_for(shape, axes, mesh), mesh)
  return math.prod(shape) * itemsize, math.prod(local) * itemsize


def tree_bytes(tree, mesh) -> tuple[int, int]:
  """Sums array_bytes over a tree of nnx.Variables (axes from their metadata) and bare arrays
  (replicated)."""
  total = per = 0
  for leaf in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nnx.Variable)):
    if isinstance(leaf, nnx.Variable):
      t, p = array_bytes(leaf.shape, leaf.dtype, leaf.get_metadata().get("axes"), mesh)
    else:
      t = p = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
    total, per = total + t, per + p
  return total, per


def divisor(size: int, axis: str | None, mesh) -> int:
  """How many ways the rules split a dimension of `size` with logical `axis` (1: not split)."""
  if axis is None:
    return 1
  entry = sharding.spec_for((size,), (axis,), mesh)[0]
  axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  return math.prod(mesh.shape[a] for a in axes)


def kv_cache_bytes(cfg: DecoderConfig, rows: int, length: int, mesh) -> tuple[int, int]:
  """K and V of every layer, [rows, kv_heads, length, head_dim] each, in the compute dtype."""
  t, p = array_bytes((rows, cfg.num_kv_heads, length, cfg.head_dim), cfg.compute_dtype,
                     ("batch", "kv_heads", None, None), mesh)
  return 2 * cfg.num_layers * t, 2 * cfg.num_layers * p


def prefill_bytes(cfg: DecoderConfig, rows: int, prompt_len: int, cache_len: int, mesh):
  """One layer's transient while a prompt goes through: f32 attention scores and probabilities
  [rows, heads, prompt_len, cache_len], and the MLP's hidden activations [rows, prompt_len, mlp]
  (gate, up, their product). Only the last position's logits are computed (sampling.generate)."""
  dt = np.dtype(cfg.compute_dtype).itemsize
  scores = (rows, cfg.num_heads, prompt_len, cache_len)
  heads = divisor(cfg.num_heads * cfg.head_dim, "heads", mesh)
  mlp = divisor(cfg.intermediate_size, "mlp", mesh)
  batch = math.prod(mesh.shape[a] for a in sharding.batch_axes(mesh))
  k = 3 if cfg.family == "llama" else 2
  total = math.prod(scores) * (4 + dt) + rows * prompt_len * cfg.intermediate_size * k * dt
  local_rows = -(-rows // batch)
  per = (local_rows * -(-cfg.num_heads // heads) * prompt_len * cache_len * (4 + dt)
         + local_rows * prompt_len * -(-cfg.intermediate_size // mlp) * k * dt)
  return total, per


def logits_bytes(cfg: DecoderConfig, rows: int, length: int, mesh, copies: int = 1):
  """`copies` f32 [rows, length, vocab] arrays (logits are f32 whatever the compute dtype)."""
  t, p = array_bytes((rows, length, cfg.vocab_size), np.float32, ("batch", None, "vocab"), mesh)
  return copies * t, copies * p


def ppo_activation_bytes(cfg: DecoderConfig, rows: int, prompt_len: int, new_len: int, mesh):
  """Activations kept for the backward pass of the teacher over rows x [prompt_len + new_len].

  No rematerialization. Per layer and token: the two norm inputs (f32) and the residual stream;
  q and the attention output (+ q's f32 RoPE copy); k, v and the K/V buffers (+ k's RoPE copy);
  the attention scores (f32) and probabilities over all T positions; the MLP's hidden
  activations. After the last layer, over the new tokens only (the LM head runs there alone,
  `step.instruction_hidden`): f32 logits and their gradient, the scaled logits, log-softmax and
  softmax. Each term is split like the params it comes from
  (heads / kv_heads / mlp / vocab), and rows over the batch axes. -> (total, per device) bytes.
  """
  t = prompt_len + new_len
  dt, f32 = np.dtype(cfg.compute_dtype).itemsize, 4
  rope = cfg.family == "llama"
  d, h, f, v = cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, cfg.vocab_size
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  per_layer = [  # (bytes per token, logical axis that splits it, its size)
      (2 * d * f32 + 2 * d * dt, None, d),
      (2 * q * dt + rope * q * f32, "heads", q),
      (4 * kv * dt + rope * kv * f32, "kv_heads", kv),
      (h * t * (f32 + dt), "heads", q),
      ((3 if cfg.family == "llama" else 2) * f * dt, "mlp", f),
  ]
  head = [(5 * new_len / t * v * f32, "vocab", v)]
  def per_token(split):
    return (cfg.num_layers * sum(b / split(a, n) for b, a, n in per_layer)
            + sum(b / split(a, n) for b, a, n in head))
  batch = math.prod(mesh.shape[a] for a in sharding.batch_axes(mesh))
  total = rows * t * per_token(lambda a, n: 1)
  per = -(-rows // batch) * t * per_token(lambda a, n: divisor(n, a, mesh))
  return int(total), int(per)


# ----------------------------------------------------------------------------- the plan

def plan_devices(config, devices: int | None) -> int:
  if devices:
    return devices
  sizes = config.mesh.to_dict()
  if any(v == -1 for v in sizes.values()):
    raise PlanError(f"config.mesh={sizes} has a -1 axis; pass --devices N (the slice's chip "
                    "count) or give every axis a size.")
  return math.prod(sizes.values())


def make_plan(config, devices: int | None = None, device_memory_gib: float | None = None, *,
              memory_source: str = "--device-memory-gib", paths: dict | None = None,
              training: bool = True) -> Plan:
  """Builds the per-device memory plan (no arrays allocated, no weights read).

  device_memory_gib None: config.plan.device_memory_gib, else DEFAULT_DEVICE_MEMORY_GIB;
  memory_source names where a given value came from. paths: as in `model_config`.
  training: whether the run trains; only then is the KL reference counted
  (`experiment.Setup.training_frozen` makes it for training alone: sampling never reads it).
  """
  validate(config)
  sizes = sharding.mesh_sizes(config.mesh.to_dict(), plan_devices(config, devices))
  mesh = AbstractMesh(tuple(sizes.values()), tuple(sizes))
  plan_cfg = config.get("plan") or {}
  if device_memory_gib is None:
    given = "device_memory_gib" in plan_cfg
    device_memory_gib = float(plan_cfg.get("device_memory_gib", DEFAULT_DEVICE_MEMORY_GIB))
    memory_source = "config.plan.device_memory_gib" if given else "the default (TPU v5e)"
  api = config.student.backend == "openai"   # asked over HTTP: no student on the devices
  teacher_cfg = model_config(config, "teacher", paths)
  models = {"teacher": teacher_cfg}
  if not api:
    models["student"] = student_cfg = model_config(config, "student", paths)
  items = []

  def add(name, phase, nbytes, detail="", fix=""):
    items.append(Item(name, phase, int(nbytes[0]), int(nbytes[1]), detail, fix))

  teacher = abstract_params(ScalarHeadLM, teacher_cfg)
  teacher_bytes = tree_bytes(teacher, mesh)
  add("teacher params (+ value head)", "resident", teacher_bytes,
      f"{human_count(count(teacher))} x {teacher_cfg.param_dtype}", fix_params(config, "teacher"))
  if training:
    add("reference teacher params", "resident",
        tree_bytes(abstract_params(Decoder, teacher_cfg), mesh), "frozen copy of the initial LM",
        fix_params(config, "teacher"))
  if not api:
    student = abstract_params(Decoder, student_cfg)
    add("student params", "resident", tree_bytes(student, mesh),
        f"{human_count(count(student))} x {student_cfg.param_dtype}",
        fix_params(config, "student"))
  if config.reward.kind == "reward_model":
    rm_cfg = model_config(config, "reward_model", paths)
    models["reward_model"] = rm_cfg
    rm = abstract_params(ScalarHeadLM, rm_cfg)
    add("reward model params", "resident", tree_bytes(rm, mesh),
        f"{human_count(count(rm))} x {rm_cfg.param_dtype}", FIX_MESH + ", a smaller reward model")
  tx = optimizer(config)
  opt_state = jax.eval_shape(tx.init, teacher)
  add("optimizer state (AdamW mu, nu)", "resident", tree_bytes(opt_state, mesh),
      "2 x teacher params, in the params' dtype (optax)", FIX_MESH)

  group = config.ppo.advantage == "group"
  rows = config.train.batch_size * (config.ppo.group_size if group else 1)
  data, rollout = config.data, config.rollout
  teacher_len = data.teacher_prompt_len + rollout.instruction_len
  shared_vocab = api or teacher_cfg.vocab_size == student_cfg.vocab_size
  instruction = rollout.instruction_len if shared_vocab else data.retokenized_instruction_len
  sep = len(config.prompt.instruction_sep.encode())  # a byte-level BPE token is >= 1 byte
  student_prompt = data.student_prefix_len + sep + instruction + data.student_suffix_len
  lengths = ("config.data.teacher_prompt_len, config.rollout.instruction_len",
             "config.data.student_prefix_len, config.data.student_suffix_len, "
             "config.rollout.answer_len"
             + ("" if shared_vocab else ", config.data.retokenized_instruction_len"))
  add("KV cache: teacher sampling", "sampling",
      kv_cache_bytes(teacher_cfg, rows, teacher_len, mesh),
      f"{rows} rows x {teacher_len} tokens", FIX_ROWS.format(lengths=lengths[0]))
  add("prompt forward: teacher (1 layer)", "sampling",
      prefill_bytes(teacher_cfg, rows, data.teacher_prompt_len, teacher_len, mesh),
      f"scores [{rows}, {teacher_cfg.num_heads}, {data.teacher_prompt_len}, {teacher_len}]",
      FIX_ROWS.format(lengths=lengths[0]))
  student_len = student_prompt + rollout.answer_len
  if not api:
    add("KV cache: student decoding", "answering",
        kv_cache_bytes(student_cfg, rows, student_len, mesh), f"{rows} rows x {student_len} tokens",
        FIX_ROWS.format(lengths=lengths[1]))
    add("prompt forward: student (1 layer)", "answering",
        prefill_bytes(student_cfg, rows, student_prompt, student_len, mesh),
        f"scores [{rows}, {student_cfg.num_heads}, {student_prompt}, {student_len}]",
        FIX_ROWS.format(lengths=lengths[1]))
  if config.reward.kind == "reward_model":
    rm_len = data.rm_prompt_len + rollout.answer_len
    add("reward model forward", "answering",
        tuple(a + b for a, b in zip(kv_cache_bytes(rm_cfg, rows, rm_len, mesh),
                                    prefill_bytes(rm_cfg, rows, rm_len, rm_len, mesh))),
        f"{rows} rows x {rm_len} tokens", FIX_ROWS.format(
            lengths="config.data.rm_prompt_len, config.rollout.answer_len"))
  # Old policy and reference over the whole batch; the LM head runs over the instruction tokens
  # only (`step.instruction_hidden`): f32 logits plus 3 copies (scaled, log-softmax, softmax) each.
  score = [2 * b for b in logits_bytes(teacher_cfg, rows, rollout.instruction_len, mesh,
                                       copies=4)]
  add("scoring logits: policy + reference", "scoring", score,
      f"f32, {rows} rows x {rollout.instruction_len} instruction tokens",
      FIX_ROWS.format(lengths=lengths[0]))
  add("teacher gradients", "update", teacher_bytes, "like the params", FIX_MESH)
  minibatch = rows // config.ppo.num_minibatches
  add("PPO activations (teacher fwd/bwd)", "update",
      ppo_activation_bytes(teacher_cfg, minibatch, data.teacher_prompt_len,
                           rollout.instruction_len, mesh),
      f"estimate, {minibatch} rows/minibatch x {teacher_len} tokens, no remat", FIX_ACTIVATIONS)
  return Plan(sizes, device_memory_gib, tuple(items), models, memory_source,
              student_requests(config, rows, student_prompt) if api else None)


def student_requests(config, rows: int, prompt_tokens: int) -> dict:
  """What a run asks of a student behind an API, at most (the journal answers repeats):
  requests and tokens of training (rows a step) and of the evaluation table (eval.rows, and
  (e), on eval_size questions). prompt_tokens: the config's bound of one student prompt
  (data.student_prefix_len + instruction + data.student_suffix_len), an estimate of what the
  server counts (its chat template adds a few)."""
  steps, answer = config.train.num_steps, config.rollout.answer_len
  eval_rows = (len(config.eval.rows) + bool(config.eval.teacher_path)) * config.task.eval_size
  out = dict(per_step=rows, training=rows * steps, evaluation=eval_rows,
             baseline_per_question=int(config.reward.baseline == "student"))
  total = out["training"] + eval_rows
  out.update(max_completion_tokens=total * answer, approx_prompt_tokens=total * prompt_tokens)
  return out


def count(params) -> int:
  return sum(math.prod(v.shape) for v in jax.tree.leaves(params))


def check_fits(plan: Plan) -> None:
  """Raises PlanError naming the fields that shrink the largest contributors."""
  if plan.fits:
    return
  phase = max(plan.phases, key=plan.phases.get)
  relevant = [i for i in plan.items if i.phase in ("resident", phase)]
  top = sorted(relevant, key=lambda i: -i.per_device)[:3]
  lines = "\n".join(f"  - {i.name}: {gib(i.per_device)} per device; to shrink it change {i.fix}"
                    for i in top)
  raise PlanError(
      f"this config does not fit: peak {gib(plan.peak)} per device (resident "
      f"{gib(plan.phase('resident'))} + {phase} {gib(plan.phases[phase])}) > {gib(plan.usable)} "
      f"usable ({USABLE_FRACTION:.0%} of {plan.device_memory_gib:g} GiB, from "
      f"{plan.memory_source}) on mesh {plan.mesh}. Largest:\n{lines}")


def device_memory_gib(devices) -> float | None:
  """The smallest memory limit XLA reports for `devices` (GPU: total x
  XLA_PYTHON_CLIENT_MEM_FRACTION, 0.75 by default; TPU: HBM), or None where the backend reports
  none (CPU)."""
  limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
  return min(limits) / GIB if limits and all(limits) else None


def check_run(config, mesh, paths: dict, *, training: bool) -> Plan | None:
  """Refuses (PlanError) a run whose plan does not fit, before any weights are read.

  mesh: the run's jax.sharding.Mesh; paths: its resolved model folders by role (their
  config.json wins over config.plan); training: as in `make_plan`. The memory is this process's
  devices' own limit where the backend reports one, else config.plan.device_memory_gib; with
  neither (CPU, no plan block) there is nothing to check against and this returns None.
  """
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  memory = device_memory_gib(local)
  if memory is None and not config.get("plan"):
    return None
  if memory is None:
    plan = make_plan(config, mesh.size, paths=paths, training=training)
  else:
    plan = make_plan(config, mesh.size, memory, paths=paths, training=training, memory_source=(
        f"the {local[0].platform.upper()} devices' memory_stats()['bytes_limit']; on GPU raise "
        "XLA_PYTHON_CLIENT_MEM_FRACTION"))
  check_fits(plan)
  return plan


def gib(n: int) -> str:
  """Bytes in the largest binary unit that keeps the number >= 1."""
  for unit, size in (("GiB", GIB), ("MiB", 1024 ** 2), ("KiB", 1024)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n} B"


def human_count(n: int) -> str:
  return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def format_plan(plan: Plan, title: str = "") -> str:
  n = math.prod(plan.mesh.values())
  mesh = ", ".join(f"{k}={v}" for k, v in plan.mesh.items())
  out = [f"WST memory plan{' for ' + title if title else ''}: mesh {mesh} ({n} devices), "
         f"{plan.device_memory_gib:g} GiB per device"]
  for role, cfg in plan.models.items():
    out.append(f"  {role}: {cfg.model_type}, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
               f"heads {cfg.num_heads}/{cfg.num_kv_heads} kv, vocab {cfg.vocab_size}, "
               f"params {cfg.param_dtype}, compute {cfg.dtype}")
  out.append(f"  {'item':36s} {'phase':10s} {'total':>14s} {'per device':>14s}  detail")
  for i in plan.items:
    out.append(f"  {i.name:36s} {i.phase:10s} {gib(i.total):>14s} {gib(i.per_device):>14s}  "
               f"{i.detail}")
  phases = ", ".join(f"{k} {gib(v)}" for k, v in plan.phases.items())
  out.append(f"  resident {gib(plan.phase('resident'))}; phases: {phases}")
  if plan.student_requests is not None:
    r = plan.student_requests
    baseline = " (+1 per training question: the baseline)" if r["baseline_per_question"] else ""
    out.append(f"  student behind an API: {r['per_step']} requests a step, {r['training']:,} in "
               f"training{baseline}, {r['evaluation']:,} in the evaluation table; at most "
               f"{r['max_completion_tokens']:,} completion tokens and about "
               f"{r['approx_prompt_tokens']:,} prompt tokens (the journal answers repeats free)")
  out.append(f"  peak per device {gib(plan.peak)} of {gib(plan.usable)} usable "
             f"({USABLE_FRACTION:.0%} of {plan.device_memory_gib:g} GiB): "
             f"{'fits' if plan.fits else 'DOES NOT FIT'}")
  return "\n".join(out)


def main(argv=None):
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
  flags.DEFINE_integer("devices", None, "Device count (default: the product of config.mesh).")
  flags.DEFINE_float("device_memory_gib", None,
                     "Memory per device (default: config.plan.device_memory_gib, else 16).")

  def run(_):
    f = flags.FLAGS
    plan = make_plan(f.config, f.devices, f.device_memory_gib)
    print(format_plan(plan, config_flags.get_config_filename(f["config"])))
    check_fits(plan)   # a PlanError: "error: <message>" on stderr, exit status 2

  argv = list(sys.argv if argv is None else argv)  # --device-memory-gib works too
  argv = [a.replace("--device-memory-gib", "--device_memory_gib", 1) for a in argv]
  errors.run_command(lambda args: app.run(run, args), argv)


if __name__ == "__main__":
  main()
