"""Scaling-law fits: recovery under noise, bootstrap intervals, robustness, matching ratios.

Tolerances come from repeated runs of these exact setups (hundreds of fresh seeds each): every
bound sits at five or more standard deviations of the estimate it checks, so the fresh seed
the `rng` fixture draws makes a failure a bug, not bad luck.
"""

import math

import numpy as np
import pytest
from scipy import optimize

from bitjax.sweep.fit import (POWER_LAW, PURE_POWER_LAW, PowerLawFit, fit_chinchilla,
                              fit_power_law, matching_param_ratio)

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


def test_seed_bootstrap_gives_three_sizes_intervals_that_follow_the_seed_noise(rng):
  n = np.array([1e5, 3e5, 1e6])
  truth = 30.0 * n**-0.2

  def fit(noise, seeds):
    seed_losses = [t * np.exp(rng.normal(0, noise, seeds)) for t in truth]
    means = np.array([values.mean() for values in seed_losses])
    return fit_power_law(n, means, offset=False, bootstrap=100, seed_losses=seed_losses)

  assert fit_power_law(n, truth, offset=False).intervals == {}  # one seed: nothing to resample
  quiet, noisy = fit(0.002, 4), fit(0.05, 4)
  for result in (quiet, noisy):
    lo, hi = result.intervals["alpha"]
    assert set(result.intervals) == {"a", "alpha"} and lo <= result.alpha <= hi
  width = lambda result: np.subtract(*result.intervals["alpha"][::-1])
  assert width(noisy) > 5 * width(quiet)
  same = fit_power_law(n, truth, offset=False, seed_losses=[np.full(3, t) for t in truth])
  np.testing.assert_allclose(same.intervals["alpha"], (same.alpha, same.alpha), rtol=1e-6)
  with pytest.raises(ValueError, match="each point's seed losses must average to its loss"):
    fit_power_law(n, truth, offset=False, seed_losses=[np.array([t, 2 * t]) for t in truth])
