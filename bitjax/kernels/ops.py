"""`ternary_matmul`: activations times packed ternary weights, one entry point for every backend."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from bitjax._compat import abstract_device_platform
from bitjax.kernels import gpu, tpu
from bitjax.kernels.format import CODES_PER_WORD, ROWS_PER_BLOCK, padded_k, unpack_ternary
from bitjax.quant.quantizers import quantize_activation
from bitjax.schema import check_one_of

ACTIVATIONS = ("int8", "bf16")
BACKENDS = ("auto", "xla", "pallas_tpu", "pallas_gpu", "interpret")
GEMV_TARGET_PROGRAMS = 1024
GPU_KERNEL_MAX_ROWS = 32  # above this, `auto` on GPU unpacks and calls XLA's matmul
GPU_MIN_COLUMN_BLOCK = 16
GEMV_MAX_ROWS = 8  # up to this many rows the GPU streams weights through the GEMV kernel
TPU_WITHOUT_INT8_MXU = ("TPU v2", "TPU v3", "TPU v4")
# XLA's CPU int8 dot runs one row several times slower than two (2560x6912: 33 ms against
# 7 ms, experiments/bench/cpu_paths.txt), so a single row gets a zero row beside it.
CPU_INT8_MIN_ROWS = 2


def reference_sums(x: jax.Array, packed: jax.Array) -> jax.Array:
  """Pure-jnp sums of x @ ternary(packed): exact int32 for int8 x, float32 for bf16 x."""
  ternary = unpack_ternary(packed, x.shape[-1]) - 1
  if x.dtype == jnp.int8:
    return jnp.dot(x, ternary, preferred_element_type=jnp.int32)
  return jnp.dot(x, ternary.astype(x.dtype), preferred_element_type=jnp.float32)


def gpu_sums(x, packed, *, gemv: gpu.GemvConfig | None = None,
             tiled: gpu.TiledConfig | None = None, interpret: bool = False):
  """Sums on the GPU kernels: GEMV up to GEMV_MAX_ROWS rows, tensor cores above.

  Explicit configs override the block choices (the benchmark tunes with them).
  """
  n = packed.shape[1]
  if n % GPU_MIN_COLUMN_BLOCK:  # pad: narrower column blocks would give Triton tiny dots
    packed = jnp.pad(packed, ((0, 0), (0, -n % 64)))
    return gpu_sums(x, packed, gemv=gemv, tiled=tiled, interpret=interpret)[:, :n]
  m = x.shape[0]
  if gemv is not None or (tiled is None and m <= GEMV_MAX_ROWS):
    partial = gpu.gemv(x, packed, config=gemv or gemv_config(packed.shape), interpret=interpret)
    sums = jnp.sum(partial, axis=0)
    if x.dtype == jnp.int8:  # the kernel sums codes = ternary + 1
      sums = sums - jnp.sum(x, axis=-1, dtype=jnp.int32)[:, None]
    return sums
  return gpu.tiled(x, packed, config=tiled or tiled_config(packed.shape, m), interpret=interpret)


def _largest_pow2_dividing(value: int, cap: int) -> int:
  size = 1
  while size < cap and value % (2 * size) == 0:
    size *= 2
  return size


def gemv_config(packed_shape: tuple[int, int]) -> gpu.GemvConfig:
  """Blocks for the GEMV kernel (tuned on an H100, experiments/bench/kernels.py --mode sweep).

  Narrow column blocks and K splits until there are about a thousand programs, so
  every SM has several weight streams in flight; tiles of 16-32 word rows.
  """
  rows, n = packed_shape
  bn = _largest_pow2_dividing(n, 64)
  tile_rows = 32 if rows % 32 == 0 else 16
  tiles = rows // tile_rows
  wanted = -(-GEMV_TARGET_PROGRAMS // (n // bn))
  splits = min((d for d in range(1, tiles + 1) if tiles % d == 0 and d >= wanted),
               default=tiles)
  return gpu.GemvConfig(bn=bn, tile_rows=tile_rows, splits=splits)


def tiled_config(packed_shape: tuple[int, int], m: int) -> gpu.TiledConfig:
  """Blocks for the tensor-core kernel (tuned on an H100 at M=16).

  Small M tiles; column blocks narrow enough for ~128 programs when N is small;
  deep K tiles at bm=16 (wider M tiles would overflow shared memory with them).
  """
  rows, n = packed_shape
  bm = next(b for b in (16, 32, 64) if m <= b or b == 64)
  bn = _largest_pow2_dividing(n, 64)
  while n // bn < 128 and bn > 16 and n % (bn // 2) == 0:
    bn //= 2
  tile_rows = _largest_pow2_dividing(rows, 64 if bm == 16 else 32)
  return gpu.TiledConfig(bm=bm, bn=bn, tile_rows=tile_rows, num_warps=8)


def _gpu_kernel_pays(m: int, rows: int) -> bool:
  """Where the Pallas GPU kernels beat XLA on an H100 (experiments/bench/results_h100).

  The GEMV always at m <= GEMV_MAX_ROWS; the tensor-core kernel up to
  GPU_KERNEL_MAX_ROWS rows when K tiles of 32 word rows fit (otherwise its int8 dots
  fall back to bf16 and it lost 4x at K=6912, M=16); above, XLA's matmul on the
  unpacked weights.
  """
  return m <= GEMV_MAX_ROWS or (m <= GPU_KERNEL_MAX_ROWS and rows % gpu.INT8_MMA_MIN_K == 0)


def _target_device() -> tuple[str, str]:
  """(platform, device kind) of the chips being compiled for.

  The mesh in context (jax.set_mesh, bitjax.parallel.sharded_jit) names them, also when
  compiling ahead of time for TPU topologies from a CPU host; else the default device.
  """
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  if device is not None:
    return abstract_device_platform(device), device.device_kind
  return jax.devices()[0].platform, jax.devices()[0].device_kind


def _resolve_backend(backend: str, m: int, rows: int) -> tuple[str, bool]:
  """The concrete backend for `auto`, and whether an int8 MXU path exists (TPU v5e+)."""
  platform, kind = _target_device()
  if backend == "auto":
    if platform == "gpu":
      backend = "pallas_gpu" if _gpu_kernel_pays(m, rows) else "xla"
    else:
      backend = "pallas_tpu" if platform == "tpu" else "xla"
  return backend, not kind.startswith(TPU_WITHOUT_INT8_MXU)


def target_platform() -> str:
  """"cpu", "gpu" or "tpu": the platform being compiled for (`_target_device`)."""
  return _target_device()[0]


def keeps_unpacked(backend: str = "auto") -> bool:
  """Whether a serving layer should keep its ternary weights unpacked (int8, 1 byte a
  weight) beside the packed words: on CPU with backend "auto" or "xla", where XLA's dot
  on kept int8 weights beat unpacking the words on every call at every row count
  measured (experiments/bench/cpu_paths.txt). The GPU and TPU kernels read the words."""
  return backend in ("auto", "xla") and target_platform() == "cpu"


@functools.partial(jax.jit, static_argnames=("min_rows",))
def _kept_sums(x2d, ternary, min_rows=1):
  """x2d @ ternary on weights kept unpacked, int8 (K, N): exact int32 sums for int8 x
  (fewer than `min_rows` rows padded with zero rows), float32 sums for bf16 x."""
  if x2d.dtype != jnp.int8:
    return jnp.dot(x2d, ternary.astype(x2d.dtype), preferred_element_type=jnp.float32)
  m = x2d.shape[0]
  x2d = jnp.pad(x2d, ((0, max(0, min_rows - m)), (0, 0)))
  return jnp.dot(x2d, ternary, preferred_element_type=jnp.int32)[:m]


@functools.partial(jax.jit, static_argnames=("backend", "int8_mxu"))
def _sums(x2d, packed, backend, int8_mxu=True):
  if backend == "xla":
    return reference_sums(x2d, packed)
  if backend == "pallas_tpu":
    return tpu.matmul(x2d, packed, int8_mxu=int8_mxu)
  if backend == "pallas_gpu":
    return gpu_sums(x2d, packed)
  return tpu.matmul(x2d, packed, interpret=True)  # "interpret"


def _pad_k(x2d: jax.Array, k_pad: int) -> jax.Array:
  return jnp.pad(x2d, ((0, 0), (0, k_pad - x2d.shape[1])))


def _mesh_axes(spec_entry) -> tuple[str, ...]:
  return (spec_entry,) if isinstance(spec_entry, str) else tuple(spec_entry or ())


def _sharded_sums(x2d, packed, backend, int8_mxu, weight_axes, mesh):
  """`_sums` per device under jax.shard_map (Pallas kernels cannot be auto-partitioned).

  Columns split as the weight's logical axes say; the contraction splits too when every
  shard holds whole format blocks (the partial sums are then added with psum); rows of
  x split over the batch axes that are left.
  """
  from bitjax.parallel.sharding import MESH_AXES, fitted_spec, logical_to_spec

  if not set(MESH_AXES) <= set(mesh.axis_names):
    raise ValueError(f"weight_axes={tuple(weight_axes)} needs a mesh with axes {MESH_AXES} "
                     f"(bitjax.parallel.make_mesh); the mesh in context has {mesh.axis_names}")

  def size(axes):
    return math.prod(mesh.shape[a] for a in axes)

  rows_spec, cols_spec = fitted_spec(packed.shape, weight_axes, mesh.shape)
  k_axes = _mesh_axes(rows_spec)
  if k_axes and (packed.shape[0] // size(k_axes)) % ROWS_PER_BLOCK:
    rows_spec, k_axes = None, ()
  used = set(k_axes) | set(_mesh_axes(cols_spec))
  batch = tuple(a for a in _mesh_axes(logical_to_spec(("batch",))[0]) if a not in used)
  batch_spec = batch if batch and x2d.shape[0] % size(batch) == 0 else None

  def local(x, words):
    sums = _sums(x, words, backend, int8_mxu)
    return jax.lax.psum(sums, k_axes) if k_axes else sums

  return jax.shard_map(local, mesh=mesh, in_specs=(P(batch_spec, rows_spec),
                                                   P(rows_spec, cols_spec)),
                       out_specs=P(batch_spec, cols_spec), check_vma=False)(x2d, packed)


def ternary_matmul(
    x: jax.Array,
    packed: jax.Array,
    scale: jax.Array,
    *,
    activations: str = "int8",
    backend: str = "auto",
    out_dtype=jnp.float32,
    weight_axes: tuple[str | None, str | None] | None = None,
    unpacked: jax.Array | None = None,
) -> jax.Array:
  """x (..., K) times ternary weights packed as (padded_k(K) / 16, N), times `scale`.

  activations="int8": int8 x is used as is (int32 sums, bit-exact across backends);
  float x is first quantized per token to int8 (absmax, as in BitNet b1.58) and the
  result rescaled. activations="bf16": x is cast to bfloat16, sums in float32.
  `scale` is the weight scale, a scalar or one per output column. Under a mesh
  (`jax.set_mesh`, or bitjax.parallel.sharded_jit), give the weight's logical axes as
  `weight_axes` and the kernels run per device inside `jax.shard_map`; when calling
  from your own `jax.shard_map`, pass it `check_vma=False` (Pallas kernels do not
  declare how their outputs vary over manual mesh axes). `backend="auto"`
  takes the Pallas TPU kernel on TPU; on GPU the Pallas kernels where they beat XLA
  on an H100 (`_gpu_kernel_pays`), XLA on unpacked weights otherwise; the jnp path
  elsewhere. `unpacked` is an optional copy of the same weights' ternary values,
  int8 (K, N), kept once (`BitDense.serve` on CPU, `keeps_unpacked`): the jnp path
  ("xla", and `auto` on CPU) then multiplies it instead of unpacking `packed` on every
  call; the Pallas kernels read `packed`.
  """
  check_one_of("activations", activations, ACTIVATIONS)
  check_one_of("backend", backend, BACKENDS)
  if packed.ndim != 2 or packed.dtype != jnp.int32:
    raise ValueError(f"packed must be 2-D int32 words; got {packed.dtype}{list(packed.shape)}")
  k = x.shape[-1]
  k_pad = packed.shape[0] * CODES_PER_WORD
  if padded_k(k) != k_pad:
    raise ValueError(f"x has K={k} features but packed holds {k_pad} weight rows "
                     f"(expected padded_k(K)={padded_k(k)})")
  if unpacked is not None and (unpacked.shape != (k, packed.shape[1])
                               or unpacked.dtype != jnp.int8):
    raise ValueError(f"unpacked must be the int8 ternary values ({k}, {packed.shape[1]}); "
                     f"got {unpacked.dtype}{list(unpacked.shape)}")
  lead = x.shape[:-1]
  x2d = x.reshape(-1, k)
  x_scale = None
  if activations == "int8" and x2d.dtype != jnp.int8:
    x2d, x_scale = quantize_activation(x2d, 8, "token")
  elif activations == "bf16":
    x2d = x2d.astype(jnp.bfloat16)
  scale = jnp.asarray(scale, jnp.float32)
  if scale.shape not in ((), (packed.shape[1],)):
    raise ValueError(f"scale has shape {scale.shape}; expected () or ({packed.shape[1]},)")
  backend, int8_mxu = _resolve_backend(backend, x2d.shape[0], packed.shape[0])
  mesh = jax.sharding.get_abstract_mesh()
  if backend == "xla" and unpacked is not None:
    min_rows = CPU_INT8_MIN_ROWS if target_platform() == "cpu" else 1
    sums = _kept_sums(x2d, unpacked, min_rows)
  elif weight_axes is not None and not mesh.empty and mesh.size > 1 and backend != "xla":
    sums = _sharded_sums(_pad_k(x2d, k_pad), packed, backend, int8_mxu, weight_axes, mesh)
  else:
    sums = _sums(_pad_k(x2d, k_pad), packed, backend, int8_mxu)
  out = sums.astype(jnp.float32) * scale
  if x_scale is not None:
    out = out * x_scale
  return out.reshape(*lead, -1).astype(out_dtype)
