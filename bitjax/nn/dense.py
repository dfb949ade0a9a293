"""BitDense: norm -> activation quant -> weight quant -> matmul (DESIGN.md section 2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bitjax.nn.norms import make_norm
from bitjax.nn.params import logical_param
from bitjax.quant import QuantSpec, activation_quant, weight_quant

DEFAULT_KERNEL_INIT = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class BitDense(nnx.Module):
  """A dense layer whose weights and inputs are quantized by `spec`.

  The norm sits inside the layer (as in BitNet b1.58) so that the activation
  quantizer sees normalised inputs; pass `norm=None` for a plain dense layer
  (full-precision models keep their usual pre-norms instead). Latent weights
  are float32; the matmul runs in `dtype`.
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
    self.spec = spec
    self.dtype = dtype
    self.norm = None if norm is None else make_norm(norm, in_features, eps=norm_eps, rngs=rngs)
    self.kernel = logical_param(rngs, kernel_init, (in_features, out_features), kernel_axes,
                                param_dtype)
    self.bias = (logical_param(rngs, nnx.initializers.zeros, (out_features,), kernel_axes[1:],
                               param_dtype) if use_bias else None)

  def quantized_kernel(self) -> jax.Array:
    """The weights the forward pass uses (`codes * scale`), in the compute dtype; a
    stacked kernel (scanned blocks, [layers, in, out]) is quantized layer by layer."""
    quantize = lambda kernel: weight_quant(kernel, self.spec.weight)
    for _ in range(self.kernel.ndim - 2):
      quantize = jax.vmap(quantize)
    return quantize(self.kernel[...]).astype(self.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.norm is not None:
      x = self.norm(x)
    x = x.astype(self.dtype)
    if self.spec.act_bits is not None:
      x = activation_quant(x, self.spec.act_bits, self.spec.act_granularity)
    y = jnp.dot(x, self.quantized_kernel())
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y
