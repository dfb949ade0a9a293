"""Multi-host start-up and input: which hosts take part, and which rows each one feeds.

Every process runs the same program on its own devices. Each reads only its own
block of rows of the global batch (bitjax.data.make_train_iterator slices the one
global stream), and the blocks are assembled into global arrays without copies
across hosts, so training is the same for any number of hosts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding

DISTRIBUTED_MODES = ("auto", "on", "off")


def distributed_requested(mode: str, environ: Mapping[str, str] = os.environ) -> bool:
  """Whether to call jax.distributed.initialize(): `on`, `off`, or (`auto`) when the
  environment describes a multi-process job: JAX_COORDINATOR_ADDRESS is set, a TPU
  pod lists several workers (TPU_WORKER_HOSTNAMES, as on GKE), or Slurm runs several
  tasks. On Cloud TPU VMs the hosts are found from the metadata server, which `auto`
  does not query: pass `on` there (README, "Launching on a TPU pod slice")."""
  if mode not in DISTRIBUTED_MODES:
    raise ValueError(f"--distributed={mode!r} is not one of {list(DISTRIBUTED_MODES)}")
  if mode != "auto":
    return mode == "on"
  hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES") or ""
  # A host name has no spaces: jax with libtpu on a machine without a TPU sets
  # TPU_WORKER_HOSTNAMES to a warning sentence ("WARNING: could not determine ..., ...").
  hosts = [host for host in hosts.split(",") if host.strip() and " " not in host.strip()]
  return bool(environ.get("JAX_COORDINATOR_ADDRESS") or len(hosts) > 1
              or int(environ.get("SLURM_NTASKS", "1")) > 1)


def initialize_distributed(mode: str = "auto", environ: Mapping[str, str] = os.environ) -> bool:
  """Join the multi-process job if `mode` (see distributed_requested) asks for it;
  must run before anything touches a device. Returns whether it initialised.

  jax finds the hosts itself on Cloud TPU, GKE and Slurm. Anywhere else (GPU hosts,
  several processes on one machine) set JAX_COORDINATOR_ADDRESS=host:port,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID (0 .. n-1) in every process."""
  if not distributed_requested(mode, environ):
    return False
  jax.distributed.initialize(**explicit_process_ids(environ))
  return True


def explicit_process_ids(environ: Mapping[str, str]) -> dict[str, int]:
  """num_processes and process_id from JAX_NUM_PROCESSES / JAX_PROCESS_ID, checked;
  nothing when neither is set (jax then asks the cluster)."""
  names = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
  given = {key: environ[name] for key, name in names.items() if environ.get(name)}
  if not given:
    return {}
  if len(given) == 1:
    raise ValueError("set both JAX_NUM_PROCESSES and JAX_PROCESS_ID, or neither; got only "
                     + names[next(iter(given))])
  try:
    ids = {key: int(value) for key, value in given.items()}
  except ValueError:
    raise ValueError(f"JAX_NUM_PROCESSES={given['num_processes']!r} and JAX_PROCESS_ID="
                     f"{given['process_id']!r} must be integers") from None
  if not 0 <= ids["process_id"] < ids["num_processes"]:
    raise ValueError(f"JAX_PROCESS_ID={ids['process_id']} is not in [0, "
                     f"JAX_NUM_PROCESSES={ids['num_processes']})")
  return ids


def process_batch_block(sharding: NamedSharding, global_shape: tuple[int, ...]) -> tuple[int, int]:
  """(block index, number of blocks): this process feeds rows [i * B / n, (i + 1) * B / n)
  of the global batch of B rows laid out by `sharding`.

  With the batch split over hosts each gets its own block; a batch replicated over
  hosts (a mesh with data x fsdp = 1) is one block that every host feeds.
  """
  batch = global_shape[0]
  intervals = {index[0].indices(batch)[:2]
               for index in sharding.addressable_devices_indices_map(global_shape).values()}
  rows = set().union(*(range(start, stop) for start, stop in intervals))
  start, size = min(rows), len(rows)
  if rows != set(range(start, start + size)) or batch % size or start % size:
    raise ValueError(f"process {jax.process_index()} holds rows {sorted(intervals)} of the "
                     f"global batch of {batch}, which is not one block of equal-sized blocks")
  return start // size, batch // size


def global_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding,
                 global_rows: int) -> dict[str, jax.Array]:
  """This process's rows of every array (its block, see process_batch_block) as
  global arrays of `global_rows` rows laid out by `sharding`."""
  return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value),
                                                      (global_rows, *value.shape[1:]))
          for key, value in local_batch.items()}



def max_over_processes(value: int) -> Callable[[], int]:
  """The largest of every process's `value`, as a function that waits for it and returns
  it: the collective is dispatched now and read when called, so a loop can read the value
  of the step before without stalling. With one process it costs nothing. Hosts that must
  take a decision together (stop at a step, set a checkpoint aside) take it from this,
  never from what each saw alone."""
  if jax.process_count() == 1:
    return lambda: value
  devices = np.array(jax.devices()).reshape(jax.process_count(), jax.local_device_count())
  mesh = jax.sharding.Mesh(devices, ("processes", "local"))
  values = jax.make_array_from_process_local_data(
      NamedSharding(mesh, jax.sharding.PartitionSpec("processes")),
      np.array([value], np.int32), (jax.process_count(),))
  replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
  largest = jax.jit(jax.numpy.max, out_shardings=replicated)(values)
  return lambda: int(np.asarray(largest.addressable_data(0)))
