"""Packed ternary format and ternary_matmul: every kernel against a numpy reference.

The Pallas kernels run in interpret mode on CPU (their numerics are what CI checks);
the GPU-only test runs them compiled and skips without a GPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitjax import kernels
from bitjax.kernels import gpu, ops, tpu
from bitjax.kernels.format import K_BLOCK

# Shapes straddle the block sizes: K not a multiple of 256, N not a multiple of 128.
SHAPES = [(1, 256, 128), (3, 300, 130), (8, 1000, 64), (20, 512, 256), (70, 768, 384)]


def random_problem(rng, m, k, n):
  ternary = rng.integers(-1, 2, (k, n))
  packed = kernels.pack_ternary(kernels.ternary_to_codes(jnp.asarray(ternary)))
  x8 = rng.integers(-128, 128, (m, k)).astype(np.int8)
  return ternary, packed, x8


def padded(x, packed):
  return jnp.pad(jnp.asarray(x), ((0, 0), (0, packed.shape[0] * 16 - x.shape[1])))


@pytest.mark.parametrize("k,n", [(1, 1), (255, 3), (256, 128), (700, 5)])
def test_pack_unpack_are_inverses(rng, k, n):
  codes = rng.integers(0, 3, (k, n)).astype(np.int8)
  packed = kernels.pack_ternary(jnp.asarray(codes))
  assert packed.dtype == jnp.int32
  assert packed.shape == (kernels.padded_k(k) // 16, n)
  np.testing.assert_array_equal(kernels.unpack_ternary(packed, k), codes)


def test_bit_layout_matches_the_documented_formula(rng):
  """Word (b*16 + j, n), bits 2i..2i+1 hold the code of row b*256 + i*16 + j."""
  k, n = 2 * K_BLOCK, 3
  codes = rng.integers(0, 3, (k, n))
  words = np.asarray(kernels.pack_ternary(jnp.asarray(codes))).view(np.uint32)
  b, j, i = np.meshgrid(np.arange(2), np.arange(16), np.arange(16), indexing="ij")
  stored = (words[(b * 16 + j)] >> (2 * i)[..., None].astype(np.uint32)) & 3
  np.testing.assert_array_equal(stored, codes[b * 256 + i * 16 + j])


def test_pack_refuses_values_that_are_not_codes(rng):
  with pytest.raises(ValueError, match=r"\{0, 1, 2\}.*\[-1, 1\]"):
    kernels.pack_ternary(jnp.asarray(rng.integers(-1, 2, (300, 4))))


def test_unpack_rejects_a_bad_k():
  packed = kernels.pack_ternary(jnp.ones((300, 4), jnp.int8))
  with pytest.raises(ValueError, match="k=600"):
    kernels.unpack_ternary(packed, 600)


@pytest.mark.parametrize("shape", [(7,), (3, 11), (4, 5, 6)])
def test_base3_storage_round_trips_at_1_6_bits(rng, shape):
  codes = rng.integers(0, 3, shape).astype(np.int8)
  stored = kernels.pack_base3(codes)
  assert stored.nbytes == -(-codes.size // 5)
  np.testing.assert_array_equal(kernels.unpack_base3(stored, shape), codes)
  with pytest.raises(ValueError, match="base-3 bytes"):
    kernels.unpack_base3(stored[:-1], shape + (2,))


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_int8_kernels_are_bit_exact(rng, m, k, n):
  ternary, packed, x8 = random_problem(rng, m, k, n)
  exact = x8.astype(np.int64) @ ternary
  xp = padded(x8, packed)
  np.testing.assert_array_equal(kernels.reference_sums(jnp.asarray(x8), packed), exact)
  np.testing.assert_array_equal(tpu.matmul(xp, packed, interpret=True), exact)
  np.testing.assert_array_equal(tpu.matmul(xp, packed, int8_mxu=False, interpret=True), exact)
  np.testing.assert_array_equal(ops.gpu_sums(xp, packed, interpret=True), exact)


@pytest.mark.parametrize("tile_rows", [16, 32])  # 16: int8 through bf16 dots; 32: int8 dots
@pytest.mark.parametrize("m,k,n", [(1, 512, 128), (5, 1000, 64), (20, 512, 256)])
def test_gpu_tiled_kernel_at_small_batch(rng, m, k, n, tile_rows):
  ternary, packed, x8 = random_problem(rng, m, k, n)
  config = gpu.TiledConfig(bm=16, bn=ops._largest_pow2_dividing(n, 64), tile_rows=tile_rows)
  got = ops.gpu_sums(padded(x8, packed), packed, tiled=config, interpret=True)
  np.testing.assert_array_equal(got, x8.astype(np.int64) @ ternary)


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_bf16_kernels_within_1e_2(rng, m, k, n):
  ternary, packed, _ = random_problem(rng, m, k, n)
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
  want = np.asarray(x, np.float64) @ ternary
  xp = padded(x, packed)
  for got in (kernels.reference_sums(x, packed), tpu.matmul(xp, packed, interpret=True),
              ops.gpu_sums(xp, packed, interpret=True)):
    # bf16 values times +-1 summed in float32: only the float32 rounding of the sums.
    rel = np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max()
    assert rel < 1e-5


@pytest.mark.parametrize("backend", ["xla", "interpret"])
def test_ternary_matmul_scales_quantizes_and_keeps_leading_dims(rng, backend):
  k, n = 200, 96
  ternary, packed, _ = random_problem(rng, 1, k, n)
  scale = jnp.asarray(rng.uniform(0.1, 2.0, (n,)), jnp.float32)
  x = jnp.asarray(rng.standard_normal((2, 3, k)), jnp.float32)
  weights = np.asarray(scale, np.float64) * ternary
  out = kernels.ternary_matmul(x, packed, scale, backend=backend)
  assert out.shape == (2, 3, n) and out.dtype == jnp.float32
  # int8: x quantized per token; the error is that of 8-bit absmax rounding.
  want = np.asarray(x, np.float64) @ weights
  assert np.abs(np.asarray(out) - want).max() / np.abs(want).max() < 2e-2
  x8 = jnp.asarray(rng.integers(-127, 128, (4, k)), jnp.int8)
  np.testing.assert_allclose(kernels.ternary_matmul(x8, packed, scale, backend=backend),
                             np.asarray(x8, np.float64) @ weights, rtol=1e-6)
  out = kernels.ternary_matmul(x, packed, scale, activations="bf16", backend=backend)
  want = np.asarray(x.astype(jnp.bfloat16), np.float64) @ weights
  assert np.abs(np.asarray(out) - want).max() / np.abs(want).max() < 1e-5


def test_ternary_matmul_under_jit_and_vmap(rng):
  ternary, packed, x8 = random_problem(rng, 5, 300, 64)
  f = jax.jit(lambda x, p: kernels.ternary_matmul(x, p, jnp.float32(1), backend="interpret"))
  np.testing.assert_array_equal(f(jnp.asarray(x8), packed), x8.astype(np.int64) @ ternary)
  batched = jax.vmap(lambda x: kernels.ternary_matmul(x, packed, 1.0, backend="interpret"))(
      jnp.asarray(x8)[:, None])
  np.testing.assert_array_equal(batched[:, 0], x8.astype(np.int64) @ ternary)


def test_ternary_matmul_rejects_bad_arguments(rng):
  _, packed, x8 = random_problem(rng, 2, 300, 64)
  with pytest.raises(ValueError, match="backend='cuda'.*pallas_gpu"):
    kernels.ternary_matmul(x8, packed, jnp.float32(1), backend="cuda")
  with pytest.raises(ValueError, match="activations='int4'"):
    kernels.ternary_matmul(x8, packed, jnp.float32(1), activations="int4")
  with pytest.raises(ValueError, match="K=600"):
    kernels.ternary_matmul(jnp.zeros((2, 600), jnp.int8), packed, jnp.float32(1))
  with pytest.raises(ValueError, match="int32 words"):
    kernels.ternary_matmul(x8, packed.astype(jnp.uint8), jnp.float32(1))
  with pytest.raises(ValueError, match=r"scale has shape \(3,\)"):
    kernels.ternary_matmul(x8, packed, jnp.ones(3))
  with pytest.raises(ValueError, match=r"unpacked must be the int8 ternary values \(300, 64\)"):
    kernels.ternary_matmul(x8, packed, 1.0, unpacked=jnp.zeros((256, 64), jnp.int8))


@pytest.mark.parametrize("m", [1, 2, 3, 16, 130])
def test_kept_unpacked_weights_give_exactly_the_packed_sums(rng, m):
  """The int8 copy a CPU serving layer keeps (one row padded to two) sums exactly as the
  packed words do: int8 x equals the int64 reference, float x the packed path bit for bit."""
  k, n = 700, 96  # K pads to 768 in the packed words, not in the copy
  ternary, packed, x8 = random_problem(rng, m, k, n)
  x8[0, : k // 2] = -128  # the extreme code, in a row whose sums reach |-128 * 350|
  unpacked = jnp.asarray(ternary, jnp.int8)
  want = x8.astype(np.int64) @ ternary
  for backend in ["auto", "xla"]:
    got = kernels.ternary_matmul(jnp.asarray(x8), packed, 1.0, backend=backend,
                                 unpacked=unpacked)
    np.testing.assert_array_equal(np.asarray(got, np.int64), want)
  scale = jnp.asarray(rng.uniform(0.1, 2.0, (n,)), jnp.float32)
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
  kept = jax.jit(lambda x, w: kernels.ternary_matmul(x, packed, scale, unpacked=w))
  # Both jitted: XLA may round the activation scaling differently jitted and eagerly
  # (jax 0.7.2's CPU backend does, by an ulp), whichever weights the sums come from.
  interpret = jax.jit(lambda x: kernels.ternary_matmul(x, packed, scale, backend="interpret"))
  np.testing.assert_array_equal(kept(x, unpacked), interpret(x))
  np.testing.assert_allclose(
      kernels.ternary_matmul(x, packed, scale, activations="bf16", unpacked=unpacked),
      kernels.ternary_matmul(x, packed, scale, activations="bf16", backend="xla"), rtol=1e-6)


def test_auto_keeps_unpacked_weights_on_cpu_only_for_the_jnp_path():
  assert ops.target_platform() == "cpu"
  assert ops.keeps_unpacked("auto") and ops.keeps_unpacked("xla")
  assert not ops.keeps_unpacked("interpret") and not ops.keeps_unpacked("pallas_tpu")


def test_gpu_kernels_pad_narrow_column_counts(rng):
  ternary, packed, x8 = random_problem(rng, 3, 300, 40)
  got = ops.gpu_sums(padded(x8, packed), packed, interpret=True)
  np.testing.assert_array_equal(got, x8.astype(np.int64) @ ternary)


def test_sharded_matmul_needs_the_bitjax_mesh_axes(rng):
  _, packed, x8 = random_problem(rng, 2, 256, 64)
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((2,), ("model",))):
    with pytest.raises(ValueError, match="weight_axes.*data.*fsdp.*tensor.*model"):
      kernels.ternary_matmul(x8, packed, 1.0, backend="interpret",
                             weight_axes=("embed", "mlp"))


def test_gpu_kernel_block_errors_name_the_dimension(rng):
  _, packed, x8 = random_problem(rng, 1, 256, 96)
  with pytest.raises(ValueError, match="N=96 is not a multiple"):
    gpu.gemv(padded(x8, packed), packed, config=gpu.GemvConfig(bn=64), interpret=True)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("m", [1, 4, 16, 100])
def test_compiled_gpu_kernels_match_the_reference(rng, m):
  ternary, packed, x8 = random_problem(rng, m, 2560, 1024)
  got = kernels.ternary_matmul(jnp.asarray(x8), packed, jnp.float32(1), backend="pallas_gpu")
  np.testing.assert_array_equal(got, x8.astype(np.int64) @ ternary)


@pytest.mark.parametrize("m,k,expected", [(1, 6912, True), (8, 2560, True), (16, 4096, True),
                                          (16, 6912, False), (32, 14336, True),
                                          (128, 4096, False), (1024, 8192, False)])
def test_auto_picks_the_gpu_kernel_where_it_measured_faster(m, k, expected):
  assert ops._gpu_kernel_pays(m, kernels.padded_k(k) // 16) == expected


def test_block_layout_is_read_back_from_the_packer():
  from bitjax.kernels.format import block_layout

  layout = block_layout()
  j, i = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
  np.testing.assert_array_equal(layout, i * 16 + j)
