"""Mesh and shardings: logical axis names on parameters -> mesh axes (GSPMD, `AxisType.Auto`).

The same code runs on 1 CPU, 8 simulated CPU devices, a GPU and a multi-host TPU pod: only the
mesh shape in the config changes.
"""
from __future__ import annotations

import logging
import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

# Logical parameter axes -> mesh axes. "batch" is the leading axis of every data array.
DEFAULT_RULES = {
    "batch": ("data", "fsdp"),
    "vocab": "model",
    "embed": "fsdp",
    "heads": "model",
    "kv_heads": "model",
    "mlp": "model",
}


def make_mesh(shape: dict[str, int], devices=None) -> Mesh:
  """A mesh with named axes, e.g. {"data": -1, "fsdp": 1, "model": 1}; one -1 takes the rest."""
  devices = jax.devices() if devices is None else devices
  sizes = dict(shape)
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {sizes}.")
  known = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if len(devices) % known:
      raise ValueError(f"config.mesh={sizes}: {len(devices)} devices do not divide by {known}.")
    sizes[free[0]] = len(devices) // known
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(f"config.mesh={sizes} needs {math.prod(sizes.values())} devices, "
                     f"{len(devices)} are available; set one axis to -1.")
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


def state_shardings(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for every Variable of `state`, from its `axes` metadata."""
  def one(var):
    axes = var.get_metadata().get("axes")
    return var.replace(NamedSharding(mesh, spec_for(var.shape, axes, mesh, rules)))
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


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
