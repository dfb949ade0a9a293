"""Packed inference: BitDense layers with ternary weights become PackedDense (DESIGN.md section 4).

`pack_model` quantizes each trained BitDense once (codes + one float32 scale), packs
the codes with `bitjax.kernels.pack_ternary` and swaps in a `PackedDense` that runs
`ternary_matmul`; everything else (embeddings, norms, full-precision head) is
kept as is. The packed model is a new object; the trained one is left untouched.
`export_packed` / `import_packed` move the packed layers through a versioned file.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bitjax.kernels import (FORMAT_NAME, pack_base3, pack_ternary, ternary_matmul,
                            ternary_to_codes, unpack_base3, unpack_ternary)
from bitjax.models.transformer import convert_layers
from bitjax.nn import BitDense
from bitjax.quant import QuantSpec
from bitjax.quant.quantizers import quantize_activation, quantize_weight

PACKABLE_WEIGHTS = ("absmean", "absmedian", "sign")
BF16_BYTES = 2


class PackedWeight(nnx.Variable):
  """Packed ternary words: state of an inference model, never trained."""


class PackedDense(nnx.Module):
  """Inference twin of a ternary BitDense: norm -> activation quant -> packed matmul.

  Activations of up to 8 bits reach the kernel as int8; wider ones (act_bits > 8) or
  none (weight-only ternary) reach it as bf16.
  """

  def __init__(self, layer: BitDense, *, backend: str = "auto"):
    if layer.spec.weight not in PACKABLE_WEIGHTS:
      raise ValueError(f"weight_quant={layer.spec.weight!r} is not packable; "
                       f"allowed: {list(PACKABLE_WEIGHTS)}")
    kernel = layer.kernel.get_value()
    codes, scale = quantize_weight(kernel, layer.spec.weight)
    axes = getattr(layer.kernel, "out_sharding", None)
    self.in_features, self.out_features = kernel.shape
    self.spec: QuantSpec = layer.spec
    self.dtype = layer.dtype
    self.backend = backend
    self.norm = layer.norm
    self.packed = PackedWeight(pack_ternary(ternary_to_codes(codes)), out_sharding=axes,
                               eager_sharding=False)
    self.scale = PackedWeight(scale.astype(jnp.float32))
    self.bias = layer.bias

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.norm is not None:
      x = self.norm(x)
    x = x.astype(self.dtype)  # as BitDense: activations are quantized in the compute dtype
    matmul = functools.partial(ternary_matmul, packed=self.packed[...], scale=self.scale[...],
                               backend=self.backend,
                               weight_axes=self.packed.get_metadata().get("out_sharding"))
    bits = self.spec.act_bits
    if bits is not None and bits <= 8:
      x_int, x_scale = quantize_activation(x, bits, self.spec.act_granularity)
      y = matmul(x_int, activations="int8") * x_scale
    else:
      y = matmul(x, activations="bf16")
    y = y.astype(self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


@dataclasses.dataclass(frozen=True)
class PackReport:
  """Weight bytes of the packed layers against the same layers stored in BF16."""

  layers: int
  weights: int
  packed_bytes: int
  bf16_bytes: int
  format: str = FORMAT_NAME

  @property
  def ratio(self) -> float:
    return self.packed_bytes / self.bf16_bytes if self.bf16_bytes else float("nan")

  def format_table(self) -> str:
    return (f"packed {self.layers} layers ({self.weights:,} weights, {self.format}): "
            f"{self.packed_bytes / 2**20:,.2f} MiB vs {self.bf16_bytes / 2**20:,.2f} MiB in BF16 "
            f"({self.ratio:.4f}, 1/{1 / self.ratio:.2f})")


def _ternary_layers(model: nnx.Module):
  return [(path, module) for path, module in nnx.iter_modules(model)
          if isinstance(module, BitDense) and module.spec.weight in PACKABLE_WEIGHTS]


def _child(node, key):
  return node[key] if isinstance(key, int) else getattr(node, key)


def _replace(model: nnx.Module, path, new) -> None:
  parent = functools.reduce(_child, path[:-1], model)
  if isinstance(path[-1], int):
    parent[path[-1]] = new
  else:
    setattr(parent, path[-1], new)


def pack_model(model: nnx.Module, *, backend: str = "auto") -> tuple[nnx.Module, PackReport]:
  """A copy of `model` with every ternary/binary BitDense packed, and the byte report.

  Blocks stacked for a scan (`config.model.scan_layers`) are unstacked into a list first,
  so every layer gets its own packed weights and scale."""
  if not _ternary_layers(model):
    raise ValueError("the model has no BitDense layer with packable weights "
                     f"(weight_quant in {list(PACKABLE_WEIGHTS)}); was it built with a "
                     "quantized precision such as b1.58?")
  scanned = getattr(getattr(model, "cfg", None), "scan_layers", False)
  packed_model = convert_layers(model, scan=False) if scanned else nnx.clone(model)
  layers = _ternary_layers(packed_model)
  weights = packed_bytes = 0
  for path, layer in layers:
    packed = PackedDense(layer, backend=backend)
    weights += math.prod(layer.kernel.get_value().shape)
    packed_bytes += packed.packed.get_value().nbytes + packed.scale.get_value().nbytes
    _replace(packed_model, path, packed)
  return packed_model, PackReport(len(layers), weights, packed_bytes, weights * BF16_BYTES)


def _packed_layers(model: nnx.Module) -> dict[str, PackedDense]:
  return {"/".join(map(str, path)): module for path, module in nnx.iter_modules(model)
          if isinstance(module, PackedDense)}


def export_packed(model: nnx.Module, path: str) -> int:
  """Write a packed model's ternary layers to `path` (.npz); returns the bytes written.

  Codes are stored five to a byte in base 3 (1.6 bits a weight) with their float32
  scales, shapes and the format name; kernels' words are rebuilt on import. An
  existing file is never overwritten.
  """
  layers = _packed_layers(model)
  if not layers:
    raise ValueError("the model has no PackedDense layer; call pack_model first")
  arrays = {"format": np.array(FORMAT_NAME)}
  for name, layer in layers.items():
    codes = np.asarray(unpack_ternary(layer.packed.get_value(), layer.in_features))
    arrays[f"{name}:codes"] = pack_base3(codes)
    arrays[f"{name}:shape"] = np.array(codes.shape)
    arrays[f"{name}:scale"] = np.asarray(layer.scale.get_value())
  with open(path, "xb") as f:  # "x": refuse to replace an earlier export
    np.savez(f, **arrays)
    return f.tell()


def import_packed(model: nnx.Module, path: str) -> None:
  """Load `export_packed`'s file into a packed model of the same architecture, in place."""
  layers = _packed_layers(model)
  with np.load(path) as stored:
    found = str(stored["format"]) if "format" in stored else None
    if found != FORMAT_NAME:
      raise ValueError(f"{path}: format {found!r}; this bitjax reads {FORMAT_NAME!r}")
    names = {key.split(":")[0] for key in stored.files if ":" in key}
    if names != set(layers):
      raise ValueError(f"{path}: layers only in the file {sorted(names - set(layers))}, "
                       f"only in the model {sorted(set(layers) - names)}")
    for name, layer in layers.items():
      shape = tuple(int(v) for v in stored[f"{name}:shape"])
      if shape != (layer.in_features, layer.out_features):
        raise ValueError(f"{path}: layer {name} has shape {shape}, the model "
                         f"{(layer.in_features, layer.out_features)}")
      scale = stored[f"{name}:scale"]
      if scale.shape != layer.scale.get_value().shape:
        raise ValueError(f"{path}: layer {name} has a scale of shape {scale.shape}, the model "
                         f"{layer.scale.get_value().shape}")
      codes = unpack_base3(stored[f"{name}:codes"], shape)
      layer.packed.set_value(pack_ternary(jnp.asarray(codes)))
      layer.scale.set_value(jnp.asarray(scale, jnp.float32))
