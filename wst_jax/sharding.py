"""Mesh and shardings: logical axis names on parameters -> mesh axes (GSPMD, `AxisType.Auto`).

The same code runs on 1 CPU, 8 simulated CPU devices, a GPU and a multi-host TPU pod: only the
mesh shape in the config changes.
"""
from __future__ import annotations

import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from wst_jax.errors import ConfigError

# Logical parameter axes -> mesh axes. "batch" is the leading axis of every data array.
DEFAULT_RULES = {
    "batch": ("data", "fsdp"),
    "vocab": "model",
    "embed": "fsdp",
    "heads": "model",
    "kv_heads": "model",
    "mlp": "model",
}


def mesh_sizes(shape: dict[str, int], num_devices: int) -> dict[str, int]:
  """Axis sizes of config.mesh on `num_devices` devices: the one -1 axis takes the rest."""
  sizes = dict(shape)
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ConfigError(f"config.mesh: at most one axis may be -1, got {sizes}.")
  known = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if num_devices % known:
      raise ConfigError(f"config.mesh={sizes}: {num_devices} devices do not divide by {known}.")
    sizes[free[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError(f"config.mesh={sizes} needs {math.prod(sizes.values())} devices, "
                      f"{num_devices} are available; set one axis to -1.")
  return sizes


def make_mesh(shape: dict[str, int], devices=None) -> Mesh:
  """A mesh with named axes, e.g. {"data": -1, "fsdp": 1, "model": 1}; one -1 takes the rest."""
  devices = jax.devices() if devices is None else devices
  sizes = mesh_sizes(shape, len(devices))
  return jax.make_mesh(tuple(sizes.values()), tuple(sizes), devices=devices,
                       axis_types=(AxisType.Auto,) * len(sizes))


def spec_for(shape, axes, mesh: Mesh, rules=DEFAULT_RULES) -> P:
  """PartitionSpec for an array with logical `axes`; a dim that does not divide stays whole."""
  out = []
  for size, name in zip(shape, axes or (None,) * len(shape)):
    mesh_axes = rules.get(name) if name else None
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
    mesh_axes = tuple(a for a in mesh_axes if a in mesh.shape and mesh.shape[a] > 1)
    n = math.prod(mesh.shape[a] for a in mesh_axes)
    if mesh_axes and size % n:
      logging.info("axis %r of size %d does not divide over %s: replicated", name, size, mesh_axes)
      mesh_axes = ()
    out.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
  return P(*out)


def variable_sharding(var: nnx.Variable, mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
  """Where a Variable (concrete or abstract) lives on `mesh`, from its `axes` metadata."""
  return NamedSharding(mesh, spec_for(var.shape, var.get_metadata().get("axes"), mesh, rules))


def state_shardings(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for every Variable of `state`, from its `axes` metadata."""
  return jax.tree.map(lambda var: var.replace(variable_sharding(var, mesh, rules)), state,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
  """Leading (batch) axis over the data axes, the rest replicated."""
  axes = tuple(a for a in rules["batch"] if a in mesh.shape)
  return NamedSharding(mesh, P(axes))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh, rules=DEFAULT_RULES) -> dict:
  """Host arrays of this process's rows -> global arrays sharded on the batch axis."""
  sharding = batch_sharding(mesh, rules)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def batch_axes(mesh: Mesh, rules=DEFAULT_RULES) -> tuple[str, ...]:
  """The mesh axes (of size > 1) that the batch axis is split over."""
  return tuple(a for a in rules["batch"] if a in mesh.shape and mesh.shape[a] > 1)


def host_callback_per_shard(host_fn, result_shapes, *args, mesh: Mesh | None,
                            rules=DEFAULT_RULES):
  """`jax.pure_callback(host_fn, result_shapes, *args)` for row-wise host work, run shard by shard.

  Every arg and result has the batch as its leading axis and row i of the results may only depend
  on row i of the args (reward verifiers, re-tokenizers). A plain pure_callback under a
  multi-device jit runs on one device (maximal sharding): every row is gathered to device 0, the
  host of process 0 does all the work and the result is broadcast back, serially across a pod.
  Here a `shard_map` over the batch axes calls `host_fn` on each device's own rows in the process
  that owns the device, so every host checks only its rows and nothing crosses hosts. Devices that
  hold the same rows (other mesh axes, e.g. "model") do not repeat the work: only the first of
  them calls the host and a psum over those axes hands the result to the others.
  mesh=None (or a batch that is not split) is the plain pure_callback.
  """
  axes = () if mesh is None else batch_axes(mesh, rules)
  if not axes:
    return jax.pure_callback(host_fn, result_shapes, *args)
  n = math.prod(mesh.shape[a] for a in axes)
  rows = {x.shape[0] for x in jax.tree.leaves((args, result_shapes))}
  if len(rows) != 1 or next(iter(rows)) % n:
    raise ValueError(f"host callback: leading (batch) sizes {sorted(rows)} must be one size that "
                     f"divides over the mesh axes {axes} ({n} shards).")
  local = jax.tree.map(lambda s: jax.ShapeDtypeStruct((s.shape[0] // n, *s.shape[1:]), s.dtype),
                       result_shapes)
  others = tuple(a for a in mesh.axis_names if a not in axes and mesh.shape[a] > 1)
  # Zero-width args (e.g. an empty instruction [B, 0]) cannot cross the shard_map boundary
  # (Shardy rejects them); they are rebuilt, empty, inside.
  leaves, treedef = jax.tree.flatten(args)
  empty = {i: (x.shape[0] // n, *x.shape[1:], x.dtype) for i, x in enumerate(leaves) if not x.size}

  def per_shard(*passed):
    passed = iter(passed)
    xs = treedef.unflatten([jnp.zeros(empty[i][:-1], empty[i][-1]) if i in empty else next(passed)
                            for i in range(len(leaves))])
    call = lambda: jax.pure_callback(host_fn, local, *xs)
    if not others:
      return call()
    first = functools.reduce(jnp.logical_and, [jax.lax.axis_index(a) == 0 for a in others])
    zeros = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), local)
    out = jax.lax.cond(first, call, zeros)
    # One copy computed, the others zeros: the sum over those axes is that copy everywhere.
    as_sum = lambda x: x.astype(jnp.int32) if x.dtype == jnp.bool_ else x
    return jax.tree.map(lambda x: jax.lax.psum(as_sum(x), others).astype(x.dtype), out)

  spec = P(axes)
  return jax.shard_map(per_shard, mesh=mesh, in_specs=spec, out_specs=spec,
                       check_vma=False)(*[x for i, x in enumerate(leaves) if i not in empty])
