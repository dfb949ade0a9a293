"""Differences of seed means with Welch intervals, against scipy's Welch t-test on the raw
samples, and as the sweep reports print them."""

import math

import numpy as np
import pytest
from scipy import stats

from bitjax.sweep import scaling, seed_table
from bitjax.sweep.intervals import NOT_DISTINGUISHABLE, welch_difference


def moments(x):
  return float(np.mean(x)), float(np.std(x, ddof=1)), len(x)


@pytest.mark.parametrize("n, ref_n", [(3, 3), (2, 5), (7, 4)])
def test_matches_scipys_welch_interval_on_samples(rng, n, ref_n):
  a = rng.normal(rng.normal(), rng.uniform(0.1, 2), n)
  b = rng.normal(rng.normal(), rng.uniform(0.1, 2), ref_n)
  want = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
  got = welch_difference(*moments(a), *moments(b))
  np.testing.assert_allclose([got.diff, got.lo, got.hi],
                             [a.mean() - b.mean(), want.low, want.high], rtol=1e-10)
  assert got.verdict == (NOT_DISTINGUISHABLE if want.low <= 0 <= want.high
                         else "higher" if got.diff > 0 else "lower")


def test_verdicts_and_edge_cases():
  assert welch_difference(1.0, 0.01, 3, 0.0, 0.01, 3).verdict == "higher"
  assert welch_difference(-1.0, 0.01, 3, 0.0, 0.01, 3).verdict == "lower"
  assert welch_difference(0.01, 1.0, 3, 0.0, 1.0, 3).verdict == NOT_DISTINGUISHABLE
  one = welch_difference(2.0, 0.0, 1, 1.0, 0.3, 3)
  assert math.isnan(one.lo) and one.verdict == "one seed: no interval"
  assert one.format() == "+1.0000 (one seed: no interval)"
  same = welch_difference(2.0, 0.0, 3, 1.0, 0.0, 3)
  assert (same.lo, same.hi, same.verdict) == (1.0, 1.0, "higher")
  with pytest.raises(ValueError, match=r"level=1.5 must lie in \(0, 1\)"):
    welch_difference(1.0, 0.1, 3, 1.0, 0.1, 3, level=1.5)
  with pytest.raises(ValueError, match="ref_n=0 must be a positive number of seeds"):
    welch_difference(1.0, 0.1, 3, 1.0, 0.1, 0)


def lm_row(size, params, precision, seed, loss):
  return {"name": f"{size}-{precision}-seed={seed}", "group": size, "precision": precision,
          "non_embedding_params": params, "tokens": 1e6, "train_flops": 1e12,
          "weight_memory_bits": params * (16 if precision == "bf16" else 1.58),
          "eval_loss": loss}


def test_scaling_report_states_each_difference_with_its_interval(rng):
  sizes = {"s": 1e5, "m": 3e5, "l": 1e6}
  gaps = {"s": 0.2, "m": 0.0, "l": 0.0}  # one clear gap, two within the noise
  rows = [lm_row(size, n, precision, seed, 3.0 - 0.3 * math.log10(n / 1e5)
                 + (gaps[size] if precision == "b1.58" else 0.0) + rng.normal(0, 0.01))
          for size, n in sizes.items() for precision in ("bf16", "b1.58") for seed in range(3)]
  summary = scaling.summarize(rows, bootstrap=0)
  differences = summary["b1.58"]["difference"]
  for size in sizes:
    losses = {p: [r["eval_loss"] for r in rows if (r["group"], r["precision"]) == (size, p)]
              for p in ("bf16", "b1.58")}
    want = stats.ttest_ind(losses["b1.58"], losses["bf16"], equal_var=False)
    interval = want.confidence_interval(0.95)
    np.testing.assert_allclose([differences[size].lo, differences[size].hi],
                               [interval.low, interval.high], rtol=1e-9)
  assert differences["s"].verdict == "higher"
  report = scaling.format_summary(summary)
  assert f"  s         b1.58         {differences['s'].format()}" in report


def test_seed_table_reports_differences_to_bf16():
  cells = [{"task": "mlp", "setting": "dataset=digits", "precision": p, "metric": "accuracy",
            "mean": mean, "std": 0.01, "seeds": 3, "params": 10, "weight_kbytes": 1.0}
           for p, mean in (("bf16", 0.90), ("b1.58", 0.80), ("1bit", 0.905))]
  table = seed_table.format_differences(cells)
  assert table.splitlines()[0] == "| task | setting | b1.58 - bf16 | 1bit - bf16 |"
  b158 = welch_difference(0.80, 0.01, 3, 0.90, 0.01, 3).format(100.0, digits=2)
  onebit = welch_difference(0.905, 0.01, 3, 0.90, 0.01, 3).format(100.0, digits=2)
  assert table.splitlines()[2] == f"| mlp | dataset=digits | {b158} | {onebit} |"
  assert b158.endswith("lower") and onebit.endswith(NOT_DISTINGUISHABLE)
