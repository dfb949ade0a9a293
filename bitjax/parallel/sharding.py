"""Meshes over (data, fsdp, tensor) and the logical-axis rules table (MaxText style).

Layers name their parameters' axes (`vocab`, `embed`, `heads`, `kv_heads`, `mlp`,
`norm`, and `layers` for stacked blocks) and models name their activations' axes
(`batch`, `length`, `embed`, `vocab`); this module alone decides which mesh axis each
name is split over.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from bitjax.schema import Rule, Section, field

MESH_AXES = ("data", "fsdp", "tensor")
MESH_SIZE = Rule(lambda size: size >= 1 or size == -1, "a positive integer or -1 (fill)")


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
  """Schema of `config.mesh`: axis sizes within a slice (ICI: data, fsdp, tensor) and
  across slices (DCN: dcn_*); one size per group may be -1 to take what is left."""

  section: ClassVar[str] = "mesh"

  data: int = field(-1, rule=MESH_SIZE)
  fsdp: int = field(1, rule=MESH_SIZE)
  tensor: int = field(1, rule=MESH_SIZE)
  dcn_data: int = field(1, rule=MESH_SIZE)
  dcn_fsdp: int = field(1, rule=MESH_SIZE)
  dcn_tensor: int = field(1, rule=MESH_SIZE)

  def __post_init__(self):
    super().__post_init__()
    for group in (MESH_AXES, MESH_FIELDS[3:]):
      fill = [f"config.mesh.{name}" for name in group if getattr(self, name) == -1]
      if len(fill) > 1:
        raise ValueError(f"only one mesh axis may be -1 among {', '.join(fill)}")


MESH_FIELDS = MeshConfig.field_names()

# Logical axis -> mesh axis (or a tuple of them, or None for replicated). A mesh axis
# serves at most one dimension of an array, so activations [batch, length, embed] keep
# `embed` replicated: `batch` has already taken fsdp.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),  # the stacked blocks of config.model.scan_layers
)


def _fill(sizes: dict[str, int], total: int, what: str) -> dict[str, int]:
  """`sizes` with its -1 entry set so the product is `total`; ValueError if impossible."""
  known = math.prod(size for size in sizes.values() if size != -1)
  described = " x ".join(f"config.mesh.{name}={size}" for name, size in sizes.items())
  fill = [name for name, size in sizes.items() if size == -1]
  if fill and total % known == 0:
    sizes = {**sizes, fill[0]: total // known}
  if math.prod(sizes.values()) != total:
    needs = f"a multiple of {known}" if fill else str(known)
    raise ValueError(f"mesh {described} needs {needs} {what}, but {total} are available")
  return sizes


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, *, dcn_data: int = 1,
              dcn_fsdp: int = 1, dcn_tensor: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all of them).

  `data`, `fsdp`, `tensor` split the devices of one slice (ICI); `dcn_*` split the
  slices (DCN), so a mesh axis spans `ici x dcn` devices. One size per group may be
  -1 to take what is left. Axis types are given explicitly (Auto), since
  jax.make_mesh's default differs between JAX versions.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = dataclasses.asdict(MeshConfig(data, fsdp, tensor, dcn_data, dcn_fsdp, dcn_tensor))
  num_slices = len({getattr(device, "slice_index", 0) for device in devices})
  dcn = _fill({name: sizes[name] for name in MESH_FIELDS[3:]}, num_slices, "slices")
  ici = _fill({name: sizes[name] for name in MESH_AXES}, len(devices) // num_slices,
              "devices per slice")
  # v5e and v6e slices are 2D: a 3-axis mesh must be allowed to split a physical axis.
  if num_slices > 1:
    device_array = mesh_utils.create_hybrid_device_mesh(
        tuple(ici.values()), tuple(dcn.values()), devices, allow_split_physical_axes=True)
  else:
    device_array = mesh_utils.create_device_mesh(tuple(ici.values()), devices,
                                                 allow_split_physical_axes=True)
  return Mesh(np.asarray(device_array), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


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


def fitted_spec(shape, axes, mesh_shape: Mapping[str, int], rules=LOGICAL_RULES) -> PartitionSpec:
  """logical_to_spec for an array of `shape`; a dimension whose size its mesh axes do not
  divide stays replicated (a 3-way vocabulary split of 264 tokens, say)."""
  spec = list(logical_to_spec(axes, rules))
  for dim, target in enumerate(spec):
    names = (target,) if isinstance(target, str) else tuple(target or ())
    if shape[dim] % math.prod(mesh_shape[name] for name in names):
      spec[dim] = None
  return PartitionSpec(*spec)


def logical_sharding(shape, axes, mesh: Mesh, rules=LOGICAL_RULES) -> NamedSharding:
  """The NamedSharding of an array of `shape` whose dimensions are named `axes`."""
  return NamedSharding(mesh, fitted_spec(shape, axes, mesh.shape, rules))


def with_logical_constraint(x: jax.Array, axes, rules=LOGICAL_RULES) -> jax.Array:
  """Constrain activation `x` to its sharding under the mesh set by `jax.set_mesh`;
  without one (a single device, a plain forward) it returns `x` unchanged.

  `axes` name x's trailing dimensions: an unbatched x drops the leading names, and
  extra leading dimensions are replicated. Pinning activations at block boundaries
  keeps XLA's propagation from picking a layout (say, batch replicated over fsdp)
  that all-gathers activations in every layer.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  axes = (None,) * (x.ndim - len(axes)) + tuple(axes)[max(len(axes) - x.ndim, 0):]
  # A NamedSharding on the abstract mesh, not a bare PartitionSpec: jax 0.7.2 takes a bare
  # spec only under a concrete context mesh, and sharded_jit sets an abstract one.
  spec = fitted_spec(x.shape, axes, mesh.shape, rules)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def state_shardings(state, mesh: Mesh, rules=LOGICAL_RULES):
  """A NamedSharding for every leaf of `state` (a model state, a TrainState, ...).

  nnx Variables (parameters, and optimizer moments, which inherit their parameter's
  metadata) follow their logical axes; every other leaf (step and optimizer counts)
  is replicated.
  """
  def sharding(leaf):
    if isinstance(leaf, nnx.Variable):
      axes = leaf.get_metadata().get("out_sharding") or (None,) * len(leaf.shape)
      return logical_sharding(leaf.shape, axes, mesh, rules)
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def sharded_jit(fn, mesh: Mesh, *, in_shardings, out_shardings, donate_argnums=()):
  """jax.jit of `fn` with explicit in/out shardings on `mesh`, traced with `mesh` as the
  context mesh so that with_logical_constraint inside `fn` takes effect."""
  def under_mesh(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args)

  return jax.jit(under_mesh, in_shardings=in_shardings, out_shardings=out_shardings,
                 donate_argnums=donate_argnums)
