"""TPU slices without a TPU: topology devices, meshes over them, and what a compiled
program needs per chip.

With libtpu installed (`pip install -e ".[tpu]"`), jax describes any TPU slice from
its name (`v5e:4x4`, `v5p:4x4x4`, ...); `jax.jit(f, in_shardings=..., ...)
.lower(*abstract_args).compile()` then compiles `f` for it on this machine, so memory
and FLOPs are known before TPU hours are spent:

  mesh = topology_mesh("v5e:4x4", fsdp=-1, data=1)
  compiled = jax.jit(f, in_shardings=..., out_shardings=...).lower(*shapes).compile()
  print(compiled_memory(compiled).total,
        chips.chip_hbm_bytes(mesh.devices.flat[0].device_kind))

The TPU generations and their HBM come from the one table in bitjax.parallel.chips.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import jax
from jax.sharding import Mesh

from bitjax.parallel.chips import TPU_GENERATIONS
from bitjax.parallel.sharding import make_mesh

# Chips per host as (x, y, z) bounds: 4 chips in a 2x2 block on every TPU generation.
CHIPS_PER_HOST_BOUNDS = (2, 2, 1)
TOPOLOGY_FORMAT = re.compile(r"^(?P<generation>v\w+):(?P<shape>\d+(x\d+){1,2})$")


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """The devices of `num_slices` TPU slices of `topology` ("v5e:4x4", "v5p:4x4x4"), as
  libtpu describes them; they can form meshes and compile programs, not run them."""
  match = TOPOLOGY_FORMAT.match(topology)
  if not match or match["generation"] not in TPU_GENERATIONS:
    raise ValueError(f"--topology={topology!r} must be GENERATION:SHAPE with GENERATION one "
                     f"of {list(TPU_GENERATIONS)} and SHAPE like 4x4 or 4x4x4")
  if not isinstance(num_slices, int) or num_slices < 1:
    raise ValueError(f"--num_slices={num_slices!r} must be a positive integer")
  from jax.experimental import topologies
  # Describing a topology opens no TPU, so it need not wait for libtpu's one-process lock
  # (held by any process that started jax's TPU backend, e.g. a local TPU job).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    description = topologies.get_topology_desc(
        platform="tpu", topology_name=topology, chips_per_host_bounds=CHIPS_PER_HOST_BOUNDS,
        num_slices=num_slices)
  except Exception as e:  # no plugin, or a shape libtpu rejects
    raise RuntimeError(f"cannot describe TPU topology {topology!r} ({e}); it needs libtpu: "
                       'pip install -e ".[tpu]"') from e
  return list(description.devices)


def topology_mesh(topology: str, *, data: int = -1, fsdp: int = 1, tensor: int = 1,
                  dcn_data: int = 1, dcn_fsdp: int = 1, dcn_tensor: int = 1,
                  num_slices: int = 1) -> Mesh:
  """A (data, fsdp, tensor) mesh over the chips of `topology` (see make_mesh for the
  sizes; dcn_* split `num_slices` slices), ready for jax.jit(...).lower(...).compile()."""
  return make_mesh(data, fsdp, tensor, dcn_data=dcn_data, dcn_fsdp=dcn_fsdp,
                   dcn_tensor=dcn_tensor, devices=topology_devices(topology, num_slices))


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
  """Bytes one chip holds while the program runs, from XLA's buffer assignment."""

  arguments: int
  outputs: int
  aliased: int  # outputs written into donated arguments, counted once
  temporaries: int
  code: int

  @property
  def total(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.code


def bytes_per_chip(abstract_tree) -> int:
  """Bytes one chip holds of a tree of ShapeDtypeStructs with shardings (its shard of each)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(abstract_tree))


@dataclasses.dataclass(frozen=True)
class OutOfMemory:
  """The TPU compiler's refusal: `needed` bytes of `what` ("temporaries" or "total")
  per chip against `available` bytes of HBM."""

  what: str
  needed: int
  available: int
  message: str


def out_of_memory(error: Exception) -> OutOfMemory | None:
  """The out-of-HBM details of a compile error, or None for any other error. Reads both
  of libtpu's forms: "... HLO temporaries (33.02G) exceeds available HBM (15.75G)" and
  "... Used 20.5G of 15.75G hbm. ..."."""
  message = str(error)
  if "RESOURCE_EXHAUSTED" not in message:
    return None
  units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
  size = r"([\d.]+)([KMGT])"
  for what, pattern in (("temporaries", rf"temporaries \({size}\) exceeds available HBM \({size}\)"),
                        ("total", rf"Used {size} of {size} hbm")):
    match = re.search(pattern, message)
    if match:
      needed, unit, available, available_unit = match.groups()
      return OutOfMemory(what, int(float(needed) * units[unit]),
                         int(float(available) * units[available_unit]), message.strip())
  return None


def compiled_memory(compiled) -> CompiledMemory:
  stats = compiled.memory_analysis()
  return CompiledMemory(stats.argument_size_in_bytes, stats.output_size_in_bytes,
                        stats.alias_size_in_bytes, stats.temp_size_in_bytes,
                        stats.generated_code_size_in_bytes)


def compiled_cost(compiled) -> dict[str, float]:
  """XLA's cost model of one execution on one chip ("flops", "bytes accessed", ...);
  empty where the backend gives none. Older jax versions return one dict per program."""
  costs = compiled.cost_analysis()
  if isinstance(costs, (list, tuple)):
    costs = costs[0] if costs else {}
  return dict(costs or {})


def compiled_flops(compiled) -> float | None:
  """FLOPs of one execution on one chip, as XLA's cost model counts them (None if absent)."""
  return compiled_cost(compiled).get("flops")
