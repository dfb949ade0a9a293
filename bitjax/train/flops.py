"""Matmul FLOPs of any model's training step, counted from the traced program.

The decoder has a closed formula (bitjax.models.train_flops_per_token, 6N + attention);
the other tasks' models (encoder, encoder-decoder, MLP, GNN) are counted here instead:
trace the loss once on abstract values, sum 2·M·N·K over every dot_general in its
jaxpr (sub-programs included: jit, remat, custom_vjp, scan times its length, the largest
branch of a cond), and take three times that for forward + backward, the same
convention as 6N (the backward pass is two matmuls per forward one; remat's
recomputation is not counted). Elementwise work and scatter-adds (a GNN's message
passing) are not matmuls and are left out, as MFU does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
from jax.extend import core as jex_core

TRAIN_OVER_FORWARD = 3  # forward, plus the two backward matmuls (inputs and weights)


def dot_general_flops(lhs_shape, rhs_shape, dimension_numbers) -> int:
  """2 x (batch x M x K) x N for one dot_general."""
  (_, rhs_contract), (_, rhs_batch) = dimension_numbers
  rhs_free = [size for axis, size in enumerate(rhs_shape)
              if axis not in rhs_contract and axis not in rhs_batch]
  return 2 * math.prod(lhs_shape) * math.prod(rhs_free)


def _sub_jaxprs(value):
  """The jaxprs inside one equation parameter (a jaxpr, a closed one, or a sequence)."""
  if isinstance(value, jex_core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jex_core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for item in value for j in _sub_jaxprs(item)]
  return []


def jaxpr_matmul_flops(jaxpr) -> int:
  """Matmul FLOPs of one run of `jaxpr`, nested programs included."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      lhs, rhs = (var.aval.shape for var in eqn.invars)
      total += dot_general_flops(lhs, rhs, eqn.params["dimension_numbers"])
      continue
    if name == "cond":
      total += max(jaxpr_matmul_flops(branch.jaxpr) for branch in eqn.params["branches"])
      continue
    inner = sum(jaxpr_matmul_flops(sub) for value in eqn.params.values()
                for sub in _sub_jaxprs(value))
    if name == "while" and inner:
      raise ValueError("a while loop with matmuls has no static trip count to count FLOPs by")
    total += inner * (eqn.params["length"] if name == "scan" else 1)
  return total


def forward_matmul_flops(fn: Callable, *args) -> int:
  """Matmul FLOPs of one call of `fn(*args)`; args may be arrays or ShapeDtypeStructs."""
  return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def train_matmul_flops(fn: Callable, *args) -> int:
  """Training FLOPs (forward + backward) of the loss `fn(*args)`: 3 x its forward matmuls."""
  return TRAIN_OVER_FORWARD * forward_matmul_flops(fn, *args)
