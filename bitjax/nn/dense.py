"""BitDense: norm -> activation quant -> weight quant -> matmul (DESIGN.md section 2), in
training (latent float weights, fake quantization) or serving (packed codes, kernels)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bitjax._compat import get_value, set_value
from bitjax.kernels import (BACKENDS, pack_ternary, ternary_matmul, ternary_to_codes,
                            unpack_ternary)
from bitjax.kernels.ops import keeps_unpacked
from bitjax.nn.norms import make_norm
from bitjax.nn.params import logical_param
from bitjax.quant import QuantSpec, activation_quant, quantize_activation, weight_quant
from bitjax.quant.quantizers import packable_weight_quantizers, quantize_weight
from bitjax.schema import check_one_of

DEFAULT_KERNEL_INIT = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
INT8_ACT_BITS = 8  # up to this many activation bits the serving kernel reads int8 codes


class PackedWeight(nnx.Variable):
  """Packed codes and their scales: state of a serving layer, never trained."""


class UnpackedWeight(nnx.Variable):
  """The packed weights' ternary values kept unpacked (int8) for the platforms where that
  is faster (CPU): derived from `packed`, never trained nor exported."""


class BitDense(nnx.Module):
  """A dense layer whose weights and inputs are quantized by `spec`.

  The norm sits inside the layer (as in BitNet b1.58) so that the activation
  quantizer sees normalised inputs; pass `norm=None` for a plain dense layer
  (full-precision models keep their usual pre-norms instead). Latent weights
  are float32; the matmul runs in `dtype`.

  `mode` is "train" (latent `kernel`, fake-quantized in the forward pass) or, after
  `serve()`, "serve" (`packed` codes and `scale` of the trained weights, multiplied by
  `bitjax.kernels.ternary_matmul`); both modes share one forward pass. On CPU a serving
  layer also keeps its ternary values unpacked as int8 (`unpacked`), which XLA
  multiplies faster than it unpacks the words.
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      *,
      spec: QuantSpec = QuantSpec(),
      norm: str | None = "rms",
      norm_eps: float = 1e-6,
      use_bias: bool = False,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      kernel_axes: tuple[str | None, str | None] = ("embed", "mlp"),
      kernel_init=DEFAULT_KERNEL_INIT,
      rngs: nnx.Rngs,
  ):
    self.in_features, self.out_features = in_features, out_features
    self.spec = spec
    self.dtype = dtype
    self.mode = "train"
    self.backend = None  # the kernel backend, once serving
    self.norm = None if norm is None else make_norm(norm, in_features, eps=norm_eps, rngs=rngs)
    self.kernel = logical_param(rngs, kernel_init, (in_features, out_features), kernel_axes,
                                param_dtype)
    self.bias = (logical_param(rngs, nnx.initializers.zeros, (out_features,), kernel_axes[1:],
                               param_dtype) if use_bias else None)

  @property
  def packable(self) -> bool:
    """Whether `serve()` can pack this layer's weights (its weight quantizer packs)."""
    return self.mode == "train" and self.spec.weight_quantizer.packing is not None

  def serve(self, backend: str = "auto", unpacked: bool | None = None) -> None:
    """Switch to serving, in place: quantize the latent kernel once, keep its codes packed
    in the `ternary` format (the one packing there is) and its scale, both with the
    kernel's logical axes so they shard like it, and drop the kernel.

    `unpacked`: also keep the ternary values unpacked as int8 (1 byte a weight, for
    XLA's jnp path); None keeps them where that is faster (`keeps_unpacked`: CPU).
    """
    check_one_of("backend", backend, BACKENDS)
    check_one_of("unpacked", unpacked, (None, True, False))
    if self.mode != "train":
      raise ValueError(f"mode={self.mode!r}: serve() packs a layer in mode 'train'")
    if self.kernel.ndim != 2:  # stacked blocks: each layer needs its own scale
      raise ValueError(f"kernel of shape {self.kernel.shape}: serve() packs one (in, out) "
                       "matrix; unstack scanned blocks first (bitjax.infer.pack_model does)")
    if not self.packable:
      raise ValueError(f"weight_quant={self.spec.weight!r} has no packed format; packable: "
                       f"{packable_weight_quantizers()}")
    if unpacked and backend not in ("auto", "xla"):
      raise ValueError(f"unpacked=True needs backend 'auto' or 'xla' (the Pallas kernels "
                       f"read the packed words); got backend={backend!r}")
    axes = self.kernel.get_metadata().get("out_sharding")
    codes, scale = quantize_weight(get_value(self.kernel), self.spec.weight)
    self.packed = PackedWeight(pack_ternary(ternary_to_codes(codes)), out_sharding=axes,
                               eager_sharding=False)
    scale_axes = None if axes is None or scale.ndim == 0 else tuple(axes[-scale.ndim:])
    self.scale = PackedWeight(scale.astype(jnp.float32), out_sharding=scale_axes,
                              eager_sharding=False)
    keep = keeps_unpacked(backend) if unpacked is None else unpacked
    self.unpacked = (UnpackedWeight(codes.astype(jnp.int8), out_sharding=axes,
                                    eager_sharding=False) if keep else None)
    del self.kernel
    self.mode, self.backend = "serve", backend

  def set_packed(self, packed: jax.Array, scale: jax.Array) -> None:
    """Replace a serving layer's packed words and scale (an import), and its unpacked copy."""
    if self.mode != "serve":
      raise ValueError(f"mode={self.mode!r}: set_packed() needs a layer in mode 'serve'")
    set_value(self.packed, packed)
    set_value(self.scale, jnp.asarray(scale, jnp.float32))
    if self.unpacked is not None:
      set_value(self.unpacked, unpack_ternary(packed, self.in_features) - 1)

  def quantized_kernel(self) -> jax.Array:
    """The weights the forward pass uses (`codes * scale`), in the compute dtype; a
    stacked kernel (scanned blocks, [layers, in, out]) is quantized layer by layer."""
    if self.mode == "serve":
      ternary = (self.unpacked[...] if self.unpacked is not None
                 else unpack_ternary(self.packed[...], self.in_features) - 1)
      return (ternary.astype(jnp.float32) * self.scale[...]).astype(self.dtype)
    quantize = lambda kernel: weight_quant(kernel, self.spec.weight)
    for _ in range(self.kernel.ndim - 2):
      quantize = jax.vmap(quantize)
    return quantize(self.kernel[...]).astype(self.dtype)

  def _packed_matmul(self, x: jax.Array, activations: str) -> jax.Array:
    return ternary_matmul(x, self.packed[...], self.scale[...], activations=activations,
                          backend=self.backend,
                          weight_axes=self.packed.get_metadata().get("out_sharding"),
                          unpacked=None if self.unpacked is None else self.unpacked[...])

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.norm is not None:
      x = self.norm(x)
    x = x.astype(self.dtype)  # activations are quantized in the compute dtype
    bits, granularity = self.spec.act_bits, self.spec.act_granularity
    if self.mode == "train":
      if bits is not None:
        x = activation_quant(x, bits, granularity)
      y = jnp.dot(x, self.quantized_kernel())
    elif bits is not None and bits <= INT8_ACT_BITS:
      x_codes, x_scale = quantize_activation(x, bits, granularity)
      y = (self._packed_matmul(x_codes, "int8") * x_scale).astype(self.dtype)
    else:  # wider activations, or none quantized: the kernel reads bf16
      y = self._packed_matmul(x, "bf16").astype(self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y
