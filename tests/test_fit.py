"""Scaling-law fits: recovery under noise, bootstrap intervals, robustness, ratios, summaries.

Tolerances come from repeated runs of these exact setups (hundreds of fresh seeds each): every
bound sits at five or more standard deviations of the estimate it checks, so the fresh seed
the `rng` fixture draws makes a failure a bug, not bad luck.
"""

import math
import re

import numpy as np
import pytest
from scipy import optimize

from bitjax.sweep.fit import (POWER_LAW, PURE_POWER_LAW, PowerLawFit, equal_memory_comparison,
                              fit_chinchilla, fit_power_law, format_summary, matching_param_ratio,
                              summarize)

ALPHA, C = 0.5, 0.5
A = 3.0 * 1e6**ALPHA  # the reducible loss is 3 nats at 1M parameters, 0.3 at 100M
SIZES = np.geomspace(1e6, 1e8, 8)  # 8 sizes spanning 100x
CHINCHILLA = dict(E=1.7, A=400.0, alpha=0.34, B=410.0, beta=0.28)  # Hoffmann et al.'s fit


def law(n):
  return A * n**-ALPHA + C


def noisy(rng, loss, sigma):
  """Multiplicative noise: sigma is the relative spread of one run's loss."""
  return loss * np.exp(rng.normal(0.0, sigma, np.shape(loss)))


def widened(interval, log=False):
  """The interval stretched by its own width on each side (in log space with log=True).

  A 95% interval misses the truth one time in twenty by construction, and a bootstrap over
  few points runs a little narrow; stretched to three times its width it spans about six
  standard deviations each way, so a miss means a misplaced or far too narrow interval.
  """
  lo, hi = np.log(interval) if log else interval
  lo, hi = lo - (hi - lo), hi + (hi - lo)
  return (math.exp(lo), math.exp(hi)) if log else (lo, hi)


def fit_with(a, alpha, c):
  return PowerLawFit(a=a, alpha=alpha, c=c, intervals={}, num_points=4, objective=0.0)


def test_power_law_recovers_known_coefficients(rng):
  loss = noisy(rng, law(SIZES), 0.005)
  fit = fit_power_law(SIZES, loss, bootstrap=0)
  assert fit.alpha == pytest.approx(ALPHA, rel=0.10)
  assert fit.c == pytest.approx(C, rel=0.20)
  np.testing.assert_allclose(fit.predict(SIZES), law(SIZES), rtol=0.03)
  assert fit.form == POWER_LAW and fit.num_points == 8 and fit.intervals == {}
  assert 0 <= fit.objective < 1e-3 * 8 * 0.05  # Huber: linear in residuals of ~0.5%


def test_bootstrap_intervals_contain_the_truth(rng):
  n = np.repeat(SIZES, 3)  # three seeds per size
  fit = fit_power_law(n, noisy(rng, law(n), 0.01), seed=int(rng.integers(1000)))
  assert set(fit.intervals) == {"a", "alpha", "c"} and fit.num_points == 24
  for name, true in (("a", A), ("alpha", ALPHA), ("c", C)):
    lo, hi = widened(fit.intervals[name], log=name == "a")  # a = exp(...) is skewed
    assert lo <= true <= hi, (name, fit.intervals[name])
  lo, hi = fit.intervals["alpha"]
  assert 0 < hi - lo < 0.3 * ALPHA  # and they are informative


def test_huber_fit_shrugs_off_an_outlier_that_least_squares_does_not(rng):
  loss = noisy(rng, law(SIZES), 0.005)
  loss[-1] *= 1.3  # the largest run diverged
  robust = fit_power_law(SIZES, loss, bootstrap=0)

  # Plain least squares on the same log residuals, started at the truth (its best case).
  z = np.log(SIZES / 1e7)
  def residuals(theta):
    return np.logaddexp(theta[0] - theta[1] * z, theta[2]) - np.log(loss)
  ls = optimize.least_squares(residuals, [math.log(A * 1e7**-ALPHA), ALPHA, math.log(C)]).x

  assert abs(robust.alpha / ALPHA - 1) < 0.15 and abs(ls[1] / ALPHA - 1) > 0.20
  assert abs(robust.c / C - 1) < 0.35 and abs(math.exp(ls[2]) / C - 1) > 0.45
  np.testing.assert_allclose(robust.predict(SIZES), law(SIZES), rtol=0.08)


def test_pure_power_law_fits_three_sizes(rng):
  n = np.array([1e6, 1e7, 1e8])
  loss = noisy(rng, 40.0 * n**-0.2, 0.001)
  fit = fit_power_law(n, loss, offset=False)
  assert fit.form == PURE_POWER_LAW and fit.c == 0.0
  assert fit.alpha == pytest.approx(0.2, rel=0.05)
  assert fit.intervals == {}  # three of three sizes: a bootstrap would only reweight them


def test_chinchilla_recovers_known_coefficients(rng):
  n, d = (g.ravel() for g in np.meshgrid(np.geomspace(1e6, 1e8, 6), np.geomspace(1e8, 1e10, 5)))
  true = CHINCHILLA["E"] + CHINCHILLA["A"] * n**-CHINCHILLA["alpha"] + \
      CHINCHILLA["B"] * d**-CHINCHILLA["beta"]
  fit = fit_chinchilla(n, d, noisy(rng, true, 0.005), bootstrap=40,
                       seed=int(rng.integers(1000)))
  for name in ("E", "alpha", "beta"):
    assert getattr(fit, name) == pytest.approx(CHINCHILLA[name], rel=0.15), name
  np.testing.assert_allclose(fit.predict(n, d), true, rtol=0.015)
  assert set(fit.intervals) == set(CHINCHILLA) and fit.num_points == 30
  for name in ("E", "alpha", "beta"):
    lo, hi = fit.intervals[name]
    assert 0 < hi - lo < 0.5 * CHINCHILLA[name], (name, fit.intervals[name])  # informative
    lo, hi = widened(fit.intervals[name])
    assert lo <= CHINCHILLA[name] <= hi, (name, fit.intervals[name])


def test_too_few_points_are_refused_with_the_counts():
  with pytest.raises(ValueError, match=r"got 3 distinct N \(6 points\).*at least 4 distinct N"):
    fit_power_law([1e6, 1e6, 1e7, 1e7, 1e8, 1e8], [3, 3, 2, 2, 1, 1])
  with pytest.raises(ValueError, match=r"got 2 distinct N .*at least 3 distinct N"):
    fit_power_law([1e6, 1e7], [3, 2], offset=False)
  with pytest.raises(ValueError, match=r"got 5 distinct \(N, D\) points.*at least 6 points"):
    fit_chinchilla([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
  with pytest.raises(ValueError, match=r"with 6 distinct N and 1 distinct D"):
    fit_chinchilla([1, 2, 3, 4, 5, 6], [7] * 6, [6, 5, 4, 3, 2, 1])


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=[1, 2, 3, 4], loss=[3, 2, -1, 1]), r"loss must be finite and positive.*loss\[2\]"),
    (dict(n=[1, 2, 3], loss=[3, 2, 1, 1]), r"n, loss must have the same length"),
    (dict(n=[[1, 2], [3, 4]], loss=[3, 2, 1, 1]), r"n must be a 1-D sequence"),
    (dict(n=[1, 2, 3, 4], loss=[4, 3, 2, 1], n_starts=0), r"n_starts must be an integer >= 1"),
    (dict(n=[1, 2, 3, 4], loss=[4, 3, 2, 1], bootstrap=-1), r"bootstrap must be an integer >= 0"),
])
def test_bad_arguments_name_themselves(kwargs, match):
  with pytest.raises(ValueError, match=match):
    fit_power_law(**kwargs)


def test_matching_param_ratio_by_hand():
  ref = fit_with(10.0, 0.5, 1.0)
  # Twice the coefficient at the same exponent and floor: sqrt(N') = 2 sqrt(N), so N' = 4 N.
  np.testing.assert_allclose(matching_param_ratio(ref, fit_with(20.0, 0.5, 1.0), [1e2, 1e6]), 4)
  # A higher floor: at N = 100 the target is 2.0, so 20 / sqrt(N') = 0.5 and N' = 1600 (16x);
  # at N = 10^4 the target 1.1 lies below the other floor 1.5: never reached.
  other = fit_with(20.0, 0.5, 1.5)
  np.testing.assert_allclose(matching_param_ratio(ref, other, [1e2, 1e4]), [16.0, np.inf])
  n = np.geomspace(1e2, 3.5e2, 5)  # up to where ref's loss reaches other's floor at 400
  np.testing.assert_allclose(other.predict(matching_param_ratio(ref, other, n) * n),
                             ref.predict(n))
  with pytest.raises(ValueError, match=r"fit_other.alpha must be > 0"):
    matching_param_ratio(ref, fit_with(20.0, 0.0, 1.0), [1e2])
  with pytest.raises(ValueError, match=r"n_ref must be finite positive"):
    matching_param_ratio(ref, other, [0.0])


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
          loss = float(noisy(rng, loss_of(precision, n, d), sigma))
          rows.append(dict(
              name=f"s{i}-{precision}-d{d:.0e}-{seed}", precision=precision, size=f"s{i}",
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
  first = [r["eval_loss"] for r in rows if r["precision"] == "b1.58" and r["size"] == "s0"]
  assert b158["eval_loss"][0] == pytest.approx(np.mean(first))
  assert b158["eval_loss_std"][0] == pytest.approx(np.std(first, ddof=1))
  assert b158["seeds"] == [2] * 5 and b158["sizes"] == [f"s{i}" for i in range(5)]
  assert bf16["fit"].form == POWER_LAW and "alpha" in bf16["fit"].intervals
  n = np.asarray(bf16["non_embedding_params"])
  ratios = np.array([b158["loss_ratio"][s] for s in bf16["sizes"]])
  np.testing.assert_allclose(ratios, loss_of("b1.58", n) / loss_of("bf16", n), rtol=0.01)
  # Same exponent and floor: b1.58 needs (3.9 / 3.0)^(1 / 0.5) = 1.69x the parameters.
  matching = np.array([b158["matching_ratio"][s] for s in bf16["sizes"]])
  np.testing.assert_allclose(matching, 1.69, rtol=0.15)
  assert bf16["loss_ratio"] == {} and bf16["matching_ratio"] == {} and bf16["equal_memory"] == []
  text = format_summary(summary)
  assert re.search(r"\n  bf16 +5 sizes +L = a\*N\^-alpha \+ c: alpha 0\.\d+ \[", text), text
  assert len([line for line in text.splitlines() if line.startswith("  s3 ")]) == 3


def test_equal_memory_comparison(rng):
  rows = make_rows(rng, sizes=5, seeds=1)
  records = equal_memory_comparison(rows)
  assert [(r["precision"], r["size"]) for r in records] == [
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
