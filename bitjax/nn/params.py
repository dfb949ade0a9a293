"""Parameters with logical axis names, and dtype helpers shared by the layers.

Every parameter carries logical axis names (`vocab`, `embed`, `heads`,
`kv_heads`, `mlp`, `norm`); `bitjax.parallel` maps them to mesh axes with one
rules table, so layers never mention the mesh.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from bitjax.schema import check_one_of

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def logical_param(
    rngs: nnx.Rngs,
    init: Callable,
    shape: tuple[int, ...],
    axes: tuple[str | None, ...],
    dtype=jnp.float32,
) -> nnx.Param:
  """An nnx.Param annotated with logical axes; sharding is applied later, not eagerly."""
  if len(axes) != len(shape):
    raise ValueError(f"axes {axes} do not match shape {shape}")
  return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=axes, eager_sharding=False)


def resolve_dtype(name: str | None):
  """A dtype from its name; None or "auto" means bfloat16 on accelerators, float32 on CPU."""
  if name in (None, "auto"):
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  check_one_of("dtype", name, ["auto", *DTYPES])
  return DTYPES[name]
