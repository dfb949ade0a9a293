"""Which way of multiplying int8 activation codes by ternary weights is fastest on CPU (issue 12).

  python experiments/bench/cpu_paths.py --out experiments/bench/cpu_paths.txt
  python experiments/bench/cpu_paths.py --shapes 128x384 --rows 1,16 --repeats 5  # quick

XLA's CPU backend runs one-row int8 and bf16 dots several times slower than float32
ones, so the serving path that reads packed words on every call (`ternary_matmul`,
backend "xla") loses to a dense GEMV. Each candidate below gets int8 codes x (M, K) and
returns the exact integer sums x @ ternary, either from the packed words (unpacked on
every call) or from a copy unpacked once (as `BitDense.serve` can keep it):

  unpack_int8 / unpack_bf16 / unpack_f32   packed words, unpacked and cast every call
  kept_int8                                int8 ternary kept, int8 dot (int32 sums)
  kept_int8_two_rows                       the same, one row padded to two
  kept_int8_as_f32                         int8 ternary kept, cast to float32 every call
  kept_bf16                                bf16 ternary kept, bf16 dot (float32 sums)
  kept_f32                                 float32 ternary kept, float32 dot
  bf16_model                               for scale: the BF16 model's own dot (bf16 x, bf16 W)

One jitted program multiplies x by `count` distinct weight matrices (unrolled, at least
64 MB of weights in each method's storage so that caches do not flatter it; at most 32);
the table gives the median of `--repeats` calls after one warm-up, per matrix, in
microseconds. Every integer path is checked against the int64 numpy sums first.
Needs only jax and numpy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from bitjax.kernels import pack_ternary, unpack_ternary  # noqa: E402

# The shape, BitNet 2B's MLP, and configs/lm.py's CPU sizes tiny and small
# (attention hidden x hidden, MLP up and down).
SHAPES = ((2560, 6912), (6912, 2560), (128, 128), (128, 384), (384, 128), (256, 256),
          (256, 704), (704, 256))
ROWS = (1, 2, 4, 16, 128)
MIN_WEIGHT_BYTES = 64e6
MAX_MATRICES = 32


def _ternary(packed: jax.Array, k: int) -> jax.Array:
  return unpack_ternary(packed, k) - 1


def _pad(x: jax.Array, k_pad: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (0, k_pad - x.shape[1])))


def _unpack_int8(x, packed):
  return jnp.dot(_pad(x, packed.shape[0] * 16), _ternary(packed, packed.shape[0] * 16),
                 preferred_element_type=jnp.int32)


def _unpack_as(dtype):
  def run(x, packed):
    k_pad = packed.shape[0] * 16
    return jnp.dot(_pad(x, k_pad).astype(dtype), _ternary(packed, k_pad).astype(dtype),
                   preferred_element_type=jnp.float32)
  return run


def _kept_int8(x, ternary):
  return jnp.dot(x, ternary, preferred_element_type=jnp.int32)


def _kept_int8_two_rows(x, ternary):
  """One row padded with a zero row: XLA's CPU int8 dot is several times faster at M=2."""
  if x.shape[0] != 1:
    return _kept_int8(x, ternary)
  return _kept_int8(jnp.pad(x, ((0, 1), (0, 0))), ternary)[:1]


def _kept_int8_as_f32(x, ternary):
  return jnp.dot(x.astype(jnp.float32), ternary.astype(jnp.float32))


def _kept(dtype):
  return lambda x, ternary: jnp.dot(x.astype(dtype), ternary,
                                    preferred_element_type=jnp.float32)


def _bf16_model(x, weight):
  return jnp.dot(x.astype(jnp.bfloat16), weight)


# name: (stored weights from the int8 ternary (K, N), the matmul, bytes per weight)
PATHS = {
    "unpack_int8": (lambda t: pack_ternary(t + 1), _unpack_int8, 0.25),
    "unpack_bf16": (lambda t: pack_ternary(t + 1), _unpack_as(jnp.bfloat16), 0.25),
    "unpack_f32": (lambda t: pack_ternary(t + 1), _unpack_as(jnp.float32), 0.25),
    "kept_int8": (lambda t: t, _kept_int8, 1),
    "kept_int8_two_rows": (lambda t: t, _kept_int8_two_rows, 1),
    "kept_int8_as_f32": (lambda t: t, _kept_int8_as_f32, 1),
    "kept_bf16": (lambda t: t.astype(jnp.bfloat16), _kept(jnp.bfloat16), 2),
    "kept_f32": (lambda t: t.astype(jnp.float32), _kept(jnp.float32), 4),
    "bf16_model": (lambda t: t.astype(jnp.bfloat16), _bf16_model, 2),
}


def median_us(fn, args, count: int, repeats: int) -> tuple[float, float]:
  """(median, max - min) of `repeats` calls after one warm-up, microseconds per matrix."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) / count * 1e6)
  return statistics.median(times), max(times) - min(times)


def check_exact(rng: np.random.Generator) -> None:
  """Every integer path gives the int64 numpy sums (K=700 pads to 768; int8 extremes)."""
  k, n = 700, 96
  ternary = rng.integers(-1, 2, (k, n)).astype(np.int8)
  x = rng.integers(-128, 128, (5, k)).astype(np.int8)
  x[0] = -128
  want = x.astype(np.int64) @ ternary.astype(np.int64)
  for name, (store, matmul, _) in PATHS.items():
    if name != "bf16_model":
      got = np.asarray(jax.jit(matmul)(jnp.asarray(x), store(jnp.asarray(ternary))))
      np.testing.assert_array_equal(got.astype(np.int64), want, err_msg=name)


def run(shapes, rows, paths, repeats: int) -> list[str]:
  rng = np.random.default_rng(0)
  check_exact(rng)
  lines = [f"# ternary matmul paths on {jax.devices()[0].device_kind} "
           f"({os.cpu_count()} cores), jax {jax.__version__}: us per matrix, median of "
           f"{repeats} (spread max-min in brackets); int8 codes in, exact integer sums out",
           "| K x N | M | " + " | ".join(paths) + " | fastest |",
           "|---|---|" + "---|" * len(paths) + "---|"]
  print("\n".join(lines), flush=True)
  for k, n in shapes:
    ternary = jnp.asarray(rng.integers(-1, 2, (k, n)), jnp.int8)
    for m in rows:
      x = jnp.asarray(rng.integers(-128, 128, (m, k)), jnp.int8)
      cells, best = [], {}
      for name in paths:
        store, matmul, bytes_per_weight = PATHS[name]
        count = int(min(MAX_MATRICES, max(1, -(-MIN_WEIGHT_BYTES // (k * n * bytes_per_weight)))))
        weights = [store(ternary) for _ in range(count)]  # distinct buffers, same values
        program = jax.jit(lambda x, weights, matmul=matmul: [matmul(x, w) for w in weights])
        median, spread = median_us(program, (x, weights), count, repeats)
        cells.append(f"{median:,.1f} ({spread:,.1f})")
        if name != "bf16_model":
          best[name] = median
        del weights
      line = (f"| {k}x{n} | {m} | " + " | ".join(cells) + f" | {min(best, key=best.get)} |")
      lines.append(line)
      print(line, flush=True)
  return lines


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES),
                      help="comma-separated KxN")
  parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="comma-separated M")
  parser.add_argument("--paths", default=",".join(PATHS), help=f"from {list(PATHS)}")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--out", default=None, help="also write the table to this file")
  args = parser.parse_args(argv)
  paths = args.paths.split(",")
  unknown = sorted(set(paths) - set(PATHS))
  if unknown:
    parser.error(f"--paths: unknown {unknown}; allowed: {list(PATHS)}")
  shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
  lines = run(shapes, [int(m) for m in args.rows.split(",")], paths, args.repeats)
  if args.out:
    with open(args.out, "w") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
