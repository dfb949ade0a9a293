"""What differs between the JAX / Flax releases bitjax supports: jax>=0.7.2 (Colab's runtimes
ship 0.7.2) with flax>=0.12.0. Tested with jax 0.7.2 + flax 0.12.0 and jax 0.10.2 +
flax 0.12.8 (pyproject.toml). Flax is imported on first use: bitjax.kernels and bitjax.quant
import this module and do not need Flax.

`iter_modules(module)`: flax.nnx.iter_modules, the path and each nested Module, the
argument included; flax 0.12.0 has only the `Module.iter_modules()` method (deprecated
later in favour of the free function).
`get_value(variable)`, `set_value(variable, value)`: Variable.get_value / set_value, which
flax 0.12.0 lacks (it has the `.value` property, deprecated later). Code that may run on
either release can also read an array Variable as `variable[...]`.
`abstract_device_platform(device)`: AbstractDevice.platform, which jax 0.7.2 lacks.
`partition_metadata(axis_name)`: transform_metadata for nnx.vmap / nnx.scan; flax 0.12.0's
transforms update the `sharding_names` metadata, not the `out_sharding` bitjax uses.
"""

from __future__ import annotations

import functools

import jax


def iter_modules(module):
  from flax import nnx

  if hasattr(nnx, "iter_modules"):
    yield from nnx.iter_modules(module)
    return
  for path, value in nnx.iter_graph(module):
    if isinstance(value, nnx.Module):
      yield path, value


def get_value(variable):
  """A Variable's value, as it is (a deleted or abstract array too; `variable[...]` indexes)."""
  if hasattr(type(variable), "get_value"):
    return variable.get_value()
  return variable.value


def set_value(variable, value) -> None:
  """Replace a Variable's value. flax 0.12.0 has no `Variable.set_value`; later releases
  warn that the `.value` setter is deprecated, and there `variable[...] = value` writes
  into the old array rather than replacing it."""
  if hasattr(type(variable), "set_value"):
    variable.set_value(value)
  else:
    variable.value = value


def abstract_device_platform(device) -> str:
  """The platform of a mesh's `abstract_device`: its `.platform`, which jax 0.7.2's
  AbstractDevice lacks (it has only device_kind and num_cores); there, the platform of a
  local device of that kind, else read off the kind (TPU kinds name it, CPU's is 'cpu')."""
  platform = getattr(device, "platform", None)
  if platform is not None:
    return platform
  for local in jax.devices():
    if local.device_kind == device.device_kind:
      return local.platform
  kind = device.device_kind.lower()
  return "tpu" if kind.startswith("tpu") else "cpu" if kind == "cpu" else "gpu"


@functools.cache
def _transforms_update_out_sharding() -> bool:
  """Whether nnx.vmap / nnx.scan's PARTITION_NAME updates the `out_sharding` metadata
  (newer flax) or only `sharding_names` (flax 0.12.0)."""
  import numpy as np
  from flax import nnx
  from flax.nnx import spmd

  probe = nnx.Variable(np.zeros(1), out_sharding=("a",), eager_sharding=False)
  spmd.add_axis(probe, 0, {nnx.PARTITION_NAME: "l"})
  return probe.get_metadata()["out_sharding"] == ("l", "a")


def partition_metadata(axis_name: str) -> dict:
  """transform_metadata for nnx.vmap / nnx.scan that adds (removes) `axis_name` to each
  Variable's `out_sharding` at the mapped axis, on either flax release."""
  from flax import nnx

  metadata = {nnx.PARTITION_NAME: axis_name}
  if not _transforms_update_out_sharding():
    metadata["out_sharding"] = axis_name
  return metadata
