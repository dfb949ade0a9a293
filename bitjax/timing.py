"""Wall-clock timing of jitted calls, shared by the benchmarks and the notebooks."""

from __future__ import annotations

import statistics
import time


def median_seconds(fn, *args, repeats: int = 10, warmup: int = 2) -> float:
  """Median wall time of `fn(*args)` over `repeats` calls, after `warmup` calls (which
  compile it); every call's results are awaited, so asynchronous dispatch is not timed
  alone. The median keeps one call slowed by other work on the machine from moving it."""
  import jax

  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)
