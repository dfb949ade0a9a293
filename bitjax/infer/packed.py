"""Packed inference: `pack_model` switches every packable BitDense to serving (DESIGN.md section 4).

Each trained BitDense whose weight quantizer has a packed format is quantized once
(codes + float32 scales), its codes packed with `bitjax.kernels.pack_ternary`, and
from then on runs `ternary_matmul` (`BitDense.serve`; on CPU it also keeps the ternary
values unpacked as int8, which XLA multiplies faster); everything else (embeddings,
norms, full-precision head) is kept as is. The packed model is a copy; the trained
one is left untouched. `export_packed` / `import_packed` move the serving layers'
weights through a versioned file.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bitjax._compat import get_value, iter_modules
from bitjax.kernels import FORMAT_NAME, pack_base3, pack_ternary, unpack_base3, unpack_ternary
from bitjax.kernels.ops import keeps_unpacked, target_platform
from bitjax.models.precision import quantized_layers
from bitjax.models.transformer import convert_layers
from bitjax.nn import BitDense
from bitjax.quant.quantizers import packable_weight_quantizers

BF16_BYTES = 2
UNPACKED_MEMORY_SHARE = 0.5  # unpacked copies may take up to this share of free host memory


@dataclasses.dataclass(frozen=True)
class PackReport:
  """Weight bytes of the packed layers against the same layers stored in BF16, and what
  serving holds in memory: the packed words and scales (the stored format) plus, on the
  platforms that use them, the int8 unpacked copies (`unpacked_bytes`)."""

  layers: int
  weights: int
  packed_bytes: int
  bf16_bytes: int
  format: str = FORMAT_NAME
  unpacked_bytes: int = 0
  platform: str = "cpu"

  @property
  def ratio(self) -> float:
    return self.packed_bytes / self.bf16_bytes if self.bf16_bytes else float("nan")

  @property
  def held_bytes(self) -> int:
    """Bytes of the serving layers' weights in memory: packed words, scales, copies."""
    return self.packed_bytes + self.unpacked_bytes

  def format_table(self) -> str:
    held = (f"; held on {self.platform}: {self.held_bytes / 2**20:,.2f} MiB, packed plus "
            f"{self.unpacked_bytes / 2**20:,.2f} MiB of int8 unpacked copies"
            if self.unpacked_bytes else f"; held on {self.platform}: packed only")
    return (f"packed {self.layers} layers ({self.weights:,} weights, {self.format}): "
            f"{self.packed_bytes / 2**20:,.2f} MiB vs {self.bf16_bytes / 2**20:,.2f} MiB in BF16 "
            f"({self.ratio:.4f}, 1/{1 / self.ratio:.2f}){held}")


def _free_host_bytes() -> int | None:
  """Memory the host has available now (Linux, macOS), or None where it cannot tell."""
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def _packable_layers(model: nnx.Module) -> list[BitDense]:
  return [module for _, module in iter_modules(model)
          if isinstance(module, BitDense) and module.packable]


def pack_model(model: nnx.Module, *, backend: str = "auto",
               unpacked: bool | None = None) -> tuple[nnx.Module, PackReport]:
  """A copy of `model` with every packable BitDense serving packed weights, and the byte
  report.

  Blocks stacked for a scan (`config.model.scan_layers`) are unstacked into a list first,
  so every layer gets its own packed weights and scale. `unpacked`: also keep each
  layer's ternary values unpacked as int8 (`BitDense.serve`); None keeps them on the
  platform in context when it is a CPU (`keeps_unpacked`) and they take at most half of
  the host's free memory. Packing on a CPU host for accelerators: pass False."""
  if not _packable_layers(model):
    raise ValueError("the model has no BitDense layer with packable weights "
                     f"(weight_quant in {packable_weight_quantizers()}); was it built with a "
                     "quantized precision such as b1.58?")
  scanned = getattr(getattr(model, "cfg", None), "scan_layers", False)
  packed_model = convert_layers(model, scan=False) if scanned else nnx.clone(model)
  layers = _packable_layers(packed_model)
  weights = sum(layer.in_features * layer.out_features for layer in layers)
  if unpacked is None:
    free = _free_host_bytes()
    unpacked = keeps_unpacked(backend) and (free is None
                                            or weights <= UNPACKED_MEMORY_SHARE * free)
  for layer in layers:
    layer.serve(backend, unpacked=unpacked)
  packed_bytes = sum(get_value(layer.packed).nbytes + get_value(layer.scale).nbytes
                     for layer in layers)
  unpacked_bytes = sum(get_value(layer.unpacked).nbytes for layer in layers
                       if layer.unpacked is not None)
  return packed_model, PackReport(len(layers), weights, packed_bytes, weights * BF16_BYTES,
                                  unpacked_bytes=unpacked_bytes,
                                  platform=target_platform())


def _serving_layers(model: nnx.Module) -> dict[str, BitDense]:
  return {"/".join(map(str, path)): module for path, module in iter_modules(model)
          if isinstance(module, BitDense) and module.mode == "serve"}


def export_packed(model: nnx.Module, path: str) -> int:
  """Write a packed model's serving layers to `path` (.npz); returns the bytes written.

  Codes are stored five to a byte in base 3 (1.6 bits a weight) with their float32
  scales, shapes and the format name; kernels' words are rebuilt on import. An
  existing file is never overwritten.
  """
  layers = _serving_layers(model)
  if not layers:
    raise ValueError("the model has no BitDense layer in mode 'serve'; call pack_model first")
  arrays = {"format": np.array(FORMAT_NAME)}
  for name, layer in layers.items():
    codes = np.asarray(unpack_ternary(get_value(layer.packed), layer.in_features))
    arrays[f"{name}:codes"] = pack_base3(codes)
    arrays[f"{name}:shape"] = np.array(codes.shape)
    arrays[f"{name}:scale"] = np.asarray(get_value(layer.scale))
  with open(path, "xb") as f:  # "x": refuse to replace an earlier export
    np.savez(f, **arrays)
    return f.tell()


ZIP_MAGIC = b"PK\x03\x04"  # an .npz file is a zip archive of .npy arrays


def import_packed(model: nnx.Module, path: str) -> None:
  """Load `export_packed`'s file into a packed model of the same architecture, in place.

  The file is data, never code: arrays are read with allow_pickle=False. Every layer is
  read and checked (names, shapes, codes, finite scales) before the first is set, so a bad
  file leaves the model as it was; errors name the file and the layer."""
  layers = _serving_layers(model)
  with open(path, "rb") as f:
    if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
      raise ValueError(f"{path}: not a packed-weights file (an .npz zip archive written by "
                       "export_packed)")
  try:
    with np.load(path, allow_pickle=False) as stored:
      weights = _read_packed_layers(stored, layers, path)
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    if str(e).startswith(f"{path}:"):
      raise
    raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
  for name, (codes, scale) in weights.items():
    layers[name].set_packed(pack_ternary(jnp.asarray(codes)), scale)


def _read_packed_layers(stored, layers: dict[str, BitDense], path: str):
  """{layer name: (codes, scale)} of every layer of `stored`, each checked against the
  model's layer; ValueError naming the file and layer at the first problem."""
  found = str(stored["format"]) if "format" in stored else None
  if found != FORMAT_NAME:
    raise ValueError(f"{path}: format {found!r}; this bitjax reads {FORMAT_NAME!r}")
  names = {key.split(":")[0] for key in stored.files if ":" in key}
  if names != set(layers):
    raise ValueError(f"{path}: layers only in the file {sorted(names - set(layers))}, "
                     f"only in the model {sorted(set(layers) - names)}")
  weights = {}
  for name, layer in layers.items():
    shape = tuple(int(v) for v in stored[f"{name}:shape"])
    if shape != (layer.in_features, layer.out_features):
      raise ValueError(f"{path}: layer {name} has shape {shape}, the model "
                       f"{(layer.in_features, layer.out_features)}")
    scale = stored[f"{name}:scale"]
    if scale.shape != get_value(layer.scale).shape:
      raise ValueError(f"{path}: layer {name} has a scale of shape {scale.shape}, the model "
                       f"{get_value(layer.scale).shape}")
    if not np.issubdtype(scale.dtype, np.floating) or not np.isfinite(scale).all():
      raise ValueError(f"{path}: layer {name} has a scale that is not all finite floats "
                       f"({scale.dtype}, e.g. {scale.reshape(-1)[:4].tolist()})")
    try:
      codes = unpack_base3(stored[f"{name}:codes"], shape)
    except ValueError as e:
      raise ValueError(f"{path}: layer {name}: {e}") from None
    weights[name] = codes, scale
  return weights


def logit_agreement(reference: jax.Array, served: jax.Array) -> dict[str, float]:
  """How far a packed model's logits are from the training-mode model's on the same tokens:
  the largest absolute difference, that relative to the largest |reference logit|, the mean
  absolute difference, and the share of positions whose argmax (the greedy token) agrees.
  The two differ by design: serving quantizes activations to int8 codes summed exactly,
  training multiplies the dequantized values in the compute dtype."""
  reference = np.asarray(reference, np.float32)
  served = np.asarray(served, np.float32)
  if reference.shape != served.shape:
    raise ValueError(f"logits of shapes {reference.shape} and {served.shape} do not compare")
  diff = np.abs(served - reference)
  return {"max_abs": float(diff.max()),
          "max_rel": float(diff.max() / np.abs(reference).max()),
          "mean_abs": float(diff.mean()),
          "argmax_agree": float((served.argmax(-1) == reference.argmax(-1)).mean())}


def weight_code_stats(model: nnx.Module) -> list[dict]:
  """Per quantized BitDense layer in training mode (path, shape): the weight quantizer's
  scale (its mean when per channel) and the share of codes equal to -1, 0 and +1, i.e.
  what quantize_weight makes of the latent weights right now."""
  stats = []
  for path, module in quantized_layers(model):
    if module.mode != "train":
      continue
    kernel = get_value(module.kernel)
    if kernel.ndim != 2:
      raise ValueError(f"layer {path}: kernel of shape {kernel.shape}; "
                       "unstack scanned blocks first (bitjax.models convert_layers)")
    codes, scale = module.spec.weight_quantizer.quantize(kernel)
    codes = np.asarray(codes)
    stats.append({"layer": path, "shape": tuple(kernel.shape),
                  "scale": float(np.mean(np.asarray(scale))),
                  **{f"share_{name}": float((codes == value).mean())
                     for name, value in (("minus", -1), ("zero", 0), ("plus", 1))}})
  return stats
