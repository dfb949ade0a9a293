"""Packed ternary matmul against XLA bf16 / int8 (issue 4), one table per run.

  python experiments/bench/kernels.py --out experiments/bench/results_h100   # the table
  python experiments/bench/kernels.py --mode sweep                          # kernel blocks
  python experiments/bench/kernels.py --mode decode --out experiments/bench/results_h100

Every timing multiplies one activation matrix by many distinct weight matrices inside
one jitted program (unrolled in Python, enough matrices that their bytes are at least
four times the L2 cache), takes the median of repeated calls after warm-up and divides
by the number of matrices (DESIGN.md section 4). GB/s counts the bytes a method must
read (weights in its storage format plus activations); "% copy" compares that with the
device's measured copy bandwidth (`a + b` on 1 GiB bf16 arrays).
Needs only jax, flax and numpy (runs on the GPU machine without the data stack).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from bitjax.kernels import gpu, ops, pack_ternary, padded_k, ternary_matmul  # noqa: E402
from bitjax.timing import median_seconds  # noqa: E402

SHAPES = ((2560, 6912), (6912, 2560), (4096, 14336), (14336, 4096), (8192, 28672))
BATCHES = (1, 16, 128, 1024)
MIN_BYTES_PER_PROGRAM = 200e6  # several times the 50 MB L2 of an H100
MIN_MATRICES = 8
MAX_MATRICES = 32  # bounds compile time; 32 packed 2560x6912 matrices are 2.8x the L2


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  weight_bytes_per_element: float
  activation_dtype: object


METHODS = (
    Method("xla_bf16", 2, jnp.bfloat16),
    Method("xla_int8", 1, jnp.int8),
    Method("bitjax_xla", 0.25, jnp.int8),
    Method("pallas_int8", 0.25, jnp.int8),
    Method("pallas_bf16", 0.25, jnp.bfloat16),
    Method("auto", 0.25, jnp.int8),
)


def copy_bandwidth() -> float:
  """Bytes/s of `a + b` on 1 GiB bf16 arrays (2 GiB read, 1 GiB written)."""
  n = 2**29
  a = jnp.ones((n,), jnp.bfloat16)
  b = jnp.full((n,), 2, jnp.bfloat16)
  seconds = median_seconds(jax.jit(lambda a, b: a + b), a, b, repeats=20, warmup=3)
  return 3 * 2 * n / seconds


def random_weights(method: Method, k: int, n: int, count: int, key):
  """`count` distinct weight matrices in the method's storage format."""
  weights = []
  for index in range(count):
    sub = jax.random.fold_in(key, index)
    if method.name == "xla_bf16":
      weights.append(jax.random.normal(sub, (k, n), jnp.bfloat16))
    elif method.name == "xla_int8":
      weights.append(jax.random.randint(sub, (k, n), -1, 2, jnp.int8))
    else:
      codes = jax.random.randint(sub, (k, n), 0, 3, jnp.int8)
      weights.append(pack_ternary(codes))
  return weights


def method_fn(method: Method, **overrides):
  """x, weight -> output for one method (overrides: GPU kernel configs for the sweep)."""
  scale = jnp.float32(0.5)
  if method.name == "xla_bf16":
    return lambda x, w: jnp.dot(x, w)
  if method.name == "xla_int8":
    return lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.int32)
  if "kernel_only" in overrides:
    config = overrides["kernel_only"]
    return lambda x, w: gpu.gemv(
        jnp.pad(x, ((0, 0), (0, w.shape[0] * 16 - x.shape[1]))), w, config=config)
  if overrides:
    def tuned(x, w):
      x = jnp.pad(x, ((0, 0), (0, w.shape[0] * 16 - x.shape[1])))
      return ops.gpu_sums(x, w, **overrides).astype(jnp.float32) * scale
    return tuned
  backend = {"bitjax_xla": "xla", "auto": "auto"}.get(method.name, "pallas_gpu")
  activations = "bf16" if method.activation_dtype == jnp.bfloat16 else "int8"
  return lambda x, w: ternary_matmul(x, w, scale, activations=activations, backend=backend)


def time_method(method: Method, m: int, k: int, n: int, key, **overrides) -> float:
  """Median seconds per matrix of x (m, k) times distinct (k, n) weights."""
  bytes_per_matrix = k * n * method.weight_bytes_per_element
  wanted = math.ceil(MIN_BYTES_PER_PROGRAM / bytes_per_matrix)
  count = min(MAX_MATRICES, max(MIN_MATRICES, wanted))
  weights = random_weights(method, k, n, count, key)
  if method.activation_dtype == jnp.int8:
    x = jax.random.randint(key, (m, k), -127, 128, jnp.int8)
  else:
    x = jax.random.normal(key, (m, k), jnp.bfloat16)
  fn = method_fn(method, **overrides)
  program = jax.jit(lambda x, ws: [fn(x, w) for w in ws])
  seconds = median_seconds(program, x, weights, repeats=20, warmup=3) / count
  del weights
  return seconds


def check_correctness(key) -> list[str]:
  """GPU kernels against the jnp reference on a few shapes; returns failures."""
  failures = []
  for m, k, n in ((1, 2560, 6912), (3, 1000, 384), (16, 4096, 1024), (200, 768, 512)):
    codes = jax.random.randint(key, (k, n), 0, 3, jnp.int8)
    packed = pack_ternary(codes)
    x8 = jax.random.randint(key, (m, k), -128, 128, jnp.int8)
    exact = np.asarray(x8, np.int64) @ (np.asarray(codes, np.int64) - 1)
    got = np.asarray(ternary_matmul(x8, packed, jnp.float32(1), backend="pallas_gpu"))
    if not np.array_equal(got, exact.astype(np.float32)):
      failures.append(f"int8 {m}x{k}x{n}: max |diff| {np.abs(got - exact).max()}")
    xb = jax.random.normal(key, (m, k), jnp.bfloat16)
    ref = np.asarray(xb, np.float64) @ (np.asarray(codes, np.float64) - 1)
    got = np.asarray(ternary_matmul(xb, packed, jnp.float32(1), activations="bf16",
                                    backend="pallas_gpu"))
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    if rel > 1e-2:
      failures.append(f"bf16 {m}x{k}x{n}: relative error {rel:.3g}")
  return failures


def run_table(out_dir: str | None, shapes, batches, methods=METHODS) -> str:
  key = jax.random.key(0)
  device = jax.devices()[0].device_kind
  bandwidth = copy_bandwidth()
  failures = check_correctness(key)
  lines = [f"device: {device}; jax {jax.__version__}; measured copy bandwidth "
           f"{bandwidth / 1e9:,.0f} GB/s; correctness: "
           f"{'all kernels match the reference' if not failures else failures}",
           f"{'K x N':>12} {'M':>5} {'method':>12} {'us':>9} {'GB/s':>7} {'%copy':>6} "
           f"{'x bf16':>7}"]
  for k, n in shapes:
    for m in batches:
      baseline = None
      for method in methods:
        try:
          seconds = time_method(method, m, k, n, key)
        except Exception as error:  # e.g. a block choice the GPU cannot hold; keep going
          lines.append(f"{f'{k}x{n}':>12} {m:>5} {method.name:>12} failed: "
                       f"{type(error).__name__}: {str(error)[:100]}")
          print(lines[-1], flush=True)
          continue
        if method.name == "xla_bf16":
          baseline = seconds
        read = k * n * method.weight_bytes_per_element + m * k * (
            2 if method.activation_dtype == jnp.bfloat16 else 1)
        lines.append(f"{f'{k}x{n}':>12} {m:>5} {method.name:>12} {seconds * 1e6:>9.1f} "
                     f"{read / seconds / 1e9:>7.0f} {100 * read / seconds / bandwidth:>6.1f} "
                     f"{f'{baseline / seconds:.2f}' if baseline else '-':>7}")
        print(lines[-1], flush=True)
  table = "\n".join(lines)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "kernels.txt"), "w") as f:
      f.write(table + "\n")
  return table


def _to_bf16(model):
  """Store every floating parameter in bf16 (a BF16 checkpoint as served)."""
  from flax import nnx
  state = nnx.state(model)
  nnx.update(model, jax.tree.map(
      lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a, state))
  return model


def _forward_seconds(model, inputs, call=lambda module, inputs: module(inputs)) -> float:
  from flax import nnx
  graphdef, state = nnx.split(model)
  step = jax.jit(lambda state, inputs: call(nnx.merge(graphdef, state), inputs))
  return median_seconds(step, state, inputs, repeats=30, warmup=3)


def _config_module(path: str):
  import importlib.util
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_decode(out_dir: str | None, size: str) -> str:
  """One token through a `configs/lm.py:SIZE`-shaped decoder: packed b1.58 vs BF16."""
  from flax import nnx

  from bitjax.infer import pack_model
  from bitjax.models import Decoder, DecoderConfig
  get_config = _config_module(os.path.join(os.path.dirname(__file__), "..", "..", "configs",
                                           "lm.py")).get_config
  tokens = jnp.zeros((1, 1), jnp.int32)
  lines = [f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}; decode step, one "
           f"token, batch 1, configs/lm.py:{size} shape with random weights, no KV cache "
           "(attention over one position); all floating weights stored in bf16"]
  results, parts = {}, {}
  for precision in ("bf16", "b1.58"):
    cfg = DecoderConfig(**{**get_config(f"{size},precision={precision}").model.to_dict(),
                           "remat": False})
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    linear_bytes = None
    if precision != "bf16":
      model, report = pack_model(model)
      linear_bytes = report.packed_bytes
      lines.append(report.format_table())
    _to_bf16(model)
    weight_bytes = sum(a.nbytes for a in jax.tree.leaves(nnx.state(model)))
    if linear_bytes is None:
      linear_bytes = weight_bytes - sum(  # everything but embedding and norms
          a.nbytes for path, a in jax.tree_util.tree_leaves_with_path(nnx.state(model))
          if "embed" in jax.tree_util.keystr(path) or "norm" in jax.tree_util.keystr(path))
    seconds = _forward_seconds(model, tokens)
    results[precision] = (seconds, weight_bytes, linear_bytes)
    hidden = jnp.ones((1, 1, cfg.hidden_size), jnp.bfloat16)
    block = model.layers[0]
    parts[precision] = {
        "one block": _forward_seconds(
            block, hidden, call=lambda m, x: m(x, jnp.zeros((1, 1), jnp.int32))),
        f"mlp.up_proj {cfg.hidden_size}x{cfg.mlp_hidden_size}": _forward_seconds(
            block.mlp.up_proj, hidden)}
    del model
  bf16_seconds, _, bf16_linear = results["bf16"]
  lines.append(f"{'precision':>9} {'ms/token':>9} {'tokens/s':>9} {'weights GiB':>11} "
               f"{'linear GiB':>10} {'speedup':>7} {'linear mem':>10}")
  for precision, (seconds, weight_bytes, linear_bytes) in results.items():
    lines.append(f"{precision:>9} {seconds * 1e3:>9.3f} {1 / seconds:>9.1f} "
                 f"{weight_bytes / 2**30:>11.3f} {linear_bytes / 2**30:>10.3f} "
                 f"{bf16_seconds / seconds:>7.2f} {linear_bytes / bf16_linear:>10.4f}")
  for part in parts["bf16"]:
    lines.append(f"{part}: bf16 {parts['bf16'][part] * 1e6:.1f} us, packed b1.58 "
                 f"{parts['b1.58'][part] * 1e6:.1f} us (each timed alone, one jitted call)")
  table = "\n".join(lines)
  print(table, flush=True)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "decode.txt"), "w") as f:
      f.write(table + "\n")
  return table


def run_profile(shapes, batches) -> None:
  """Split a GEMV call (M <= ops.GEMV_MAX_ROWS) into the kernel alone and the XLA work
  around it."""
  key = jax.random.key(0)
  packed = Method("pallas", 0.25, jnp.int8)
  for k, n in shapes:
    rows = padded_k(k) // 16
    config = ops.gemv_config((rows, n))
    for m in (b for b in batches if b <= ops.GEMV_MAX_ROWS):
      base = time_method(METHODS[0], m, k, n, key)
      full = time_method(METHODS[-1], m, k, n, key)
      kernel = time_method(packed, m, k, n, key, kernel_only=config)
      print(f"{k}x{n} M={m} {config}: bf16 {base * 1e6:.1f} us, auto "
            f"{full * 1e6:.1f} us, kernel alone {kernel * 1e6:.1f} us "
            f"({k * n / 4 / kernel / 1e9:.0f} GB/s on packed bytes)", flush=True)


def run_sweep(shapes, batches, kernel: str) -> None:
  """Time GEMV / tiled block choices (one line each) to pick `ops` defaults."""
  key = jax.random.key(0)
  print("correctness:", check_correctness(key) or "all kernels match the reference", flush=True)
  packed = Method("pallas", 0.25, jnp.int8)
  for k, n in shapes:
    rows = padded_k(k) // 16
    for m in batches:
      base = time_method(METHODS[0], m, k, n, key)
      print(f"{k}x{n} xla_bf16 M={m} {base * 1e6:.1f} us", flush=True)
      if kernel == "gemv" or (kernel == "auto" and m <= ops.GEMV_MAX_ROWS):
        configs = [("gemv", gpu.GemvConfig(bn, tile, splits, warps, stages))
                   for bn in (64, 128, 256) for tile in (16, 32) for splits in (1, 2, 4, 8)
                   for warps in (4,) for stages in (3,)
                   if rows % (splits * tile) == 0 and n % bn == 0]
      else:
        configs = [("tiled", gpu.TiledConfig(bm, bn, tile, warps, stages))
                   for bm in ((16,) if m <= 16 else (64, 128)) for bn in (64, 128, 256)
                   for tile in (32, 64) for warps in (4, 8) for stages in (3,)
                   if rows % tile == 0 and n % bn == 0]
      for kind, config in configs:
        try:
          seconds = time_method(packed, m, k, n, key, **{kind: config})
          print(f"  M={m} {config}: {seconds * 1e6:.1f} us ({base / seconds:.2f}x bf16)",
                flush=True)
        except Exception as error:  # a block choice the compiler refuses
          print(f"  M={m} {config}: failed {type(error).__name__}: {str(error)[:120]}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mode", choices=("table", "sweep", "profile", "decode"),
                      default="table")
  parser.add_argument("--size", default="2b4t", help="decode mode: configs/lm.py size")
  parser.add_argument("--kernel", choices=("auto", "gemv", "tiled"), default="auto",
                      help="sweep mode: which GPU kernel's blocks to time")
  parser.add_argument("--out", default=None, help="directory for kernels.txt")
  parser.add_argument("--shapes", default=None, help="e.g. 4096x14336,8192x28672")
  parser.add_argument("--batches", default=None, help="e.g. 1,16")
  parser.add_argument("--methods", default=None,
                      help=f"table mode, comma-separated subset of {[m.name for m in METHODS]}")
  args = parser.parse_args(argv)
  shapes = SHAPES if not args.shapes else tuple(
      tuple(int(v) for v in s.split("x")) for s in args.shapes.split(","))
  batches = BATCHES if not args.batches else tuple(int(b) for b in args.batches.split(","))
  if args.mode == "sweep":
    run_sweep(shapes, batches, args.kernel)
  elif args.mode == "profile":
    run_profile(shapes, batches)
  elif args.mode == "decode":
    run_decode(args.out, args.size)
  else:
    methods = METHODS if not args.methods else tuple(
        m for m in METHODS if m.name in args.methods.split(","))
    run_table(args.out, shapes, batches, methods)


if __name__ == "__main__":
  main()
