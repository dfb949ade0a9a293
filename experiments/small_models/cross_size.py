# The encoder comparisons across sizes in experiments/small_models/README.md: a quantized
# model at 2h against 16-bit at h, seed means with their 95% Welch interval.
import csv
import numpy as np
from bitjax.sweep.intervals import welch_difference
rows = list(csv.DictReader(open("experiments/small_models/results.csv")))
losses = {}
for r in rows:
  losses.setdefault((r["group"], r["precision"]), []).append(float(r["eval_" + r["metric"]]))
stats = lambda k: (np.mean(losses[k]), np.std(losses[k], ddof=1), len(losses[k]))
for task in ("mlm", "span_corruption"):
  for precision in ("b1.58", "b1.58-median", "b1.58-ln"):
    d = welch_difference(*stats((f"{task}-128", precision)), *stats((f"{task}-64", "bf16")))
    print(f"{task}: {precision} at 2h - bf16 at h: {d.format(digits=3)}")
