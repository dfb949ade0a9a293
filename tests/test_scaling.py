"""Scaling analysis of sweep rows: seed averaging per group, ratios, equal memory, the report."""

import math
import re

import numpy as np
import pytest

from bitjax.sweep.fit import POWER_LAW, PURE_POWER_LAW
from bitjax.sweep.scaling import equal_memory_comparison, format_summary, summarize

LAWS = {  # precision: (loss at 1M, alpha, c, weight bits per non-embedding parameter)
    "bf16": (3.0, 0.5, 0.5, 16.0),
    "b1.58": (3.9, 0.5, 0.5, math.log2(3)),
    "1bit": (5.0, 0.5, 0.6, 1.0),
}
EMBED = 2**14  # embedding parameters, 16 bits each at every precision


def loss_of(precision, n, d=1e9):
  """The precision's law plus a data term, 40 D^-0.25, shared by all precisions."""
  r0, alpha, c, _ = LAWS[precision]
  return r0 * (n / 1e6) ** -alpha + c + 40 * d**-0.25


def make_rows(rng, sizes, seeds=2, sigma=0.002, precisions=tuple(LAWS), tokens=(1e9,)):
  rows = []
  for precision in precisions:
    for i, n in enumerate(np.geomspace(1e6, 1e8, sizes)):
      for d in tokens:
        for seed in range(seeds):
          loss = loss_of(precision, n, d) * math.exp(rng.normal(0.0, sigma))
          rows.append(dict(
              name=f"s{i}-{precision}-d{d:.0e}-{seed}", precision=precision, group=f"s{i}",
              seed=seed, params=n + EMBED, non_embedding_params=n, tokens=d,
              train_flops=6 * n * d, eval_loss=loss, eval_perplexity=math.exp(loss),
              eval_bits_per_byte=loss / math.log(2),
              weight_memory_bits=LAWS[precision][3] * n + 16 * EMBED, wall_time_s=1.0))
  return rows


def test_summarize_averages_seeds_and_reports_ratios(rng):
  rows = make_rows(rng, sizes=5)
  summary = summarize(rows, bootstrap=20)
  assert list(summary) == ["bf16", "b1.58", "1bit"]
  bf16, b158 = summary["bf16"], summary["b1.58"]
  first = [r["eval_loss"] for r in rows if r["precision"] == "b1.58" and r["group"] == "s0"]
  assert b158["eval_loss"][0] == pytest.approx(np.mean(first))
  assert b158["eval_loss_std"][0] == pytest.approx(np.std(first, ddof=1))
  assert b158["seeds"] == [2] * 5 and b158["groups"] == [f"s{i}" for i in range(5)]
  assert bf16["fit"].form == POWER_LAW and "alpha" in bf16["fit"].intervals
  n = np.asarray(bf16["non_embedding_params"])
  ratios = np.array([b158["loss_ratio"][s] for s in bf16["groups"]])
  np.testing.assert_allclose(ratios, loss_of("b1.58", n) / loss_of("bf16", n), rtol=0.01)
  # Same exponent and floor: b1.58 needs (3.9 / 3.0)^(1 / 0.5) = 1.69x the parameters.
  matching = np.array([b158["matching_ratio"][s] for s in bf16["groups"]])
  np.testing.assert_allclose(matching, 1.69, rtol=0.15)
  assert bf16["loss_ratio"] == {} and bf16["matching_ratio"] == {} and bf16["equal_memory"] == []
  text = format_summary(summary)
  assert re.search(r"\n  bf16 +5 sizes +L = a\*N\^-alpha \+ c: alpha 0\.\d+ \[", text), text
  s3_lines = [line for line in text.splitlines() if line.startswith("  s3 ")]
  assert len(s3_lines) == 3 + 2  # the per-size table's three, then b1.58's and 1bit's gaps
  assert s3_lines[-1].endswith(summary["1bit"]["difference"]["s3"].format())


def test_equal_memory_comparison(rng):
  rows = make_rows(rng, sizes=5, seeds=1)
  records = equal_memory_comparison(rows)
  assert [(r["precision"], r["group"]) for r in records] == [
      (p, f"s{i}") for p in ("b1.58", "1bit") for i in range(5)]
  for r in records:
    bits = LAWS[r["precision"]][3]
    n_same_memory = (r["weight_memory_bits"] - 16 * EMBED) / bits
    truth = loss_of(r["precision"], n_same_memory)
    if not r["extrapolated"]:
      assert r["loss"] == pytest.approx(truth, rel=0.02)
    assert r["loss_ratio"] == pytest.approx(r["loss"] / r["reference_loss"])
    assert r["fit"] == POWER_LAW
  # bf16's two smallest memories lie inside b1.58's measured range, its larger ones beyond.
  b158 = [r["extrapolated"] for r in records if r["precision"] == "b1.58"]
  assert b158 == [False, False, True, True, True]
  assert all(r["loss_ratio"] < 1 for r in records if r["precision"] == "b1.58"
             and not r["extrapolated"])  # at equal memory, ternary wins here
  with pytest.raises(ValueError, match=r"reference='fp32' is not a precision in rows"):
    equal_memory_comparison(rows, reference="fp32")


def test_summarize_small_sweeps_report_instead_of_raising(rng):
  rows = make_rows(rng, sizes=3, precisions=("bf16", "b1.58")) + make_rows(
      rng, sizes=2, precisions=("1bit",))
  summary = summarize(rows, bootstrap=20)
  for precision in ("bf16", "b1.58"):
    fit = summary[precision]["fit"]
    assert fit.form == PURE_POWER_LAW and fit.c == 0 and fit.alpha > 0
    assert any("3 sizes" in note for note in summary[precision]["notes"])
  assert set(summary["b1.58"]["matching_ratio"]) == {"s0", "s1", "s2"}
  assert all(v > 1 for v in summary["b1.58"]["matching_ratio"].values())
  onebit = summary["1bit"]
  assert onebit["fit"] is None and onebit["matching_ratio"] == {}
  assert onebit["loss_ratio"].keys() == {"s0", "s1"}  # ratios pair sizes by name
  assert any("2 size(s): no fit" in note for note in onebit["notes"])
  assert all(math.isnan(r["loss"]) for r in onebit["equal_memory"])
  text = format_summary(summary)
  assert "L = a*N^-alpha (c = 0): alpha" in text and "no fit" in text


def test_summarize_accepts_csv_strings_and_fits_token_sweeps(rng):
  rows = [{k: str(v) for k, v in row.items()}
          for row in make_rows(rng, sizes=4, seeds=1, precisions=("bf16",), tokens=(1e8, 1e9))]
  entry = summarize(rows, bootstrap=0)["bf16"]
  assert entry["tokens"] == [1e9] * 4  # L(N) takes each size's longest run
  assert entry["chinchilla"].alpha == pytest.approx(0.5, rel=0.3)
  assert any("several token budgets" in note for note in entry["notes"])
  assert "no ratios" not in " ".join(entry["notes"])  # bf16 is the reference itself


@pytest.mark.parametrize("change, match", [
    (lambda r: r.pop("eval_loss"), r"run 's0-bf16.* lacks \['eval_loss'\]"),
    (lambda r: r.update(eval_loss="nan"), r"eval_loss='nan'; it must be a finite positive"),
    (lambda r: r.update(weight_memory_bits=0), r"weight_memory_bits=0; it must be"),
])
def test_bad_rows_name_the_run_and_field(rng, change, match):
  rows = make_rows(rng, sizes=4, seeds=1)
  change(rows[0])
  with pytest.raises(ValueError, match=match):
    summarize(rows, bootstrap=0)


def test_empty_rows_are_refused():
  with pytest.raises(ValueError, match=r"rows must be a non-empty list"):
    summarize([])


def test_rows_group_by_their_group_field_not_by_a_size_argument(rng):
  rows = make_rows(rng, sizes=4, seeds=1, precisions=("bf16",))
  for row in rows:  # a sweep whose size argument is called `width`
    row["width"] = row.pop("group")
  with pytest.raises(ValueError, match=r"run 's0-bf16.* lacks \['group'\]"):
    summarize(rows, bootstrap=0)
  for row in rows:
    row["group"] = f"w{row['width']}"
    row["size"] = "same for all"  # ignored
  assert summarize(rows, bootstrap=0)["bf16"]["groups"] == ["ws0", "ws1", "ws2", "ws3"]
