"""Multi-process start-up: JAX's multi-controller SPMD (one process per host, one global mesh)."""
from __future__ import annotations

import logging
import os

import jax

from wst_jax.errors import ConfigError


def initialize() -> None:
  """Calls `jax.distributed.initialize` when the environment says there are several processes.

  * TPU pod slices: detected by JAX itself (TPU_WORKER_HOSTNAMES lists more than one worker).
  * Anywhere else (CPU tests, GPU clusters): WST_COORDINATOR=host:port, WST_NUM_PROCESSES,
    WST_PROCESS_ID. On CPU the collectives go through gloo.
  A single process does nothing here.
  """
  coordinator = os.environ.get("WST_COORDINATOR")
  if coordinator:
    # Only the CPU backend reads this; asking for the backend here would initialize it too early.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
      num, pid = int(os.environ["WST_NUM_PROCESSES"]), int(os.environ["WST_PROCESS_ID"])
    except KeyError as err:
      raise ConfigError(f"WST_COORDINATOR is set but {err.args[0]} is not; set WST_NUM_PROCESSES "
                        "and WST_PROCESS_ID for every process.") from None
    jax.distributed.initialize(coordinator, num_processes=num, process_id=pid)
  elif len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    jax.distributed.initialize()
  else:
    return
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
