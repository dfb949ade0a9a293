"""Meshes over (data, fsdp, tensor) and the logical-axis rules table (MaxText style).

Layers name their parameters' axes (`vocab`, `embed`, `heads`, `kv_heads`, `mlp`,
`norm`); this module alone decides which mesh axis each name is split over.
"""

from __future__ import annotations

import math

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or a tuple of them, or None for replicated).
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 to take the remaining devices.

  Axis types are given explicitly (Auto), since jax.make_mesh's default differs
  between JAX versions.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  fill = [name for name, size in sizes.items() if size == -1]
  if len(fill) > 1:
    raise ValueError(f"only one mesh axis may be -1, got {fill}")
  for name, size in sizes.items():
    if size != -1 and (not isinstance(size, int) or size < 1):
      raise ValueError(f"mesh axis {name}={size!r} must be a positive integer or -1")
  known = math.prod(size for size in sizes.values() if size != -1)
  if fill:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot be split into {sizes}")
    sizes[fill[0]] = len(devices) // known
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, "
                     f"{len(devices)} are available")
  return jax.make_mesh(tuple(sizes.values()), MESH_AXES, (AxisType.Auto,) * 3,
                       devices=devices)


def logical_to_spec(axes, rules=LOGICAL_RULES) -> PartitionSpec:
  """PartitionSpec for logical `axes`; a mesh axis already used by an earlier dimension
  leaves later ones replicated, so every spec is valid."""
  table = dict(rules)
  used, spec = set(), []
  for name in axes:
    if name is not None and name not in table:
      raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
    target = table.get(name)
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    if not targets or used & set(targets):
      spec.append(None)
      continue
    used |= set(targets)
    spec.append(targets[0] if len(targets) == 1 else targets)
  return PartitionSpec(*spec)


def state_shardings(state: nnx.State, mesh: Mesh, rules=LOGICAL_RULES):
  """A NamedSharding for every variable of `state`, from its logical axis metadata.

  A dimension whose size the mesh axes do not divide stays replicated.
  """
  def sharding(var):
    axes = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
    spec = list(logical_to_spec(axes, rules))
    for dim, target in enumerate(spec):
      names = (target,) if isinstance(target, str) else tuple(target or ())
      if var.shape[dim] % math.prod(mesh.shape[n] for n in names):
        spec[dim] = None
    return NamedSharding(mesh, PartitionSpec(*spec))

  return jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
