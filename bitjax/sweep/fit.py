"""Scaling-law fits (DESIGN.md section 7): L(N), L(N, D) and the matching parameter ratio.

Only the fitting math; bitjax.sweep.scaling turns a sweep's result rows into fits and tables.

Every fit minimises a Huber loss on log-space residuals, log L_pred - log L_obs, from a grid
of starting points and keeps the best (the recipe of Hoffmann et al., 2022): log residuals
weigh small and large models alike, and the Huber loss keeps one diverged run from dragging
the exponent. Coefficients are fitted through their logs, so they stay positive, and the
model's log loss is a logsumexp of its terms. Intervals are percentile bootstraps over the
points. Sizes enter centred (log N - mean log N), which keeps the optimisation well scaled.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import optimize

HUBER_DELTA = 1e-3  # Hoffmann et al.'s delta: residuals beyond 0.1% count linearly.
POWER_LAW = "L = a*N^-alpha + c"
PURE_POWER_LAW = "L = a*N^-alpha (c = 0)"


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
  """L(N) = a * N^(-alpha) + c; `intervals` maps each fitted coefficient to its 95% bootstrap
  interval (empty without bootstrap); `objective` is the summed Huber loss at the optimum."""
  a: float
  alpha: float
  c: float
  intervals: dict[str, tuple[float, float]]
  num_points: int
  objective: float
  form: str = POWER_LAW

  def predict(self, n) -> np.ndarray:
    n = np.asarray(n, dtype=float)
    return self.a * n ** -self.alpha + self.c


@dataclasses.dataclass(frozen=True)
class ChinchillaFit:
  """L(N, D) = E + A / N^alpha + B / D^beta, with 95% bootstrap `intervals` per coefficient."""
  E: float
  A: float
  alpha: float
  B: float
  beta: float
  intervals: dict[str, tuple[float, float]]
  num_points: int
  objective: float

  def predict(self, n, d) -> np.ndarray:
    n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    return self.E + self.A * n ** -self.alpha + self.B * d ** -self.beta


def _positive_vector(name: str, value) -> np.ndarray:
  x = np.asarray(value, dtype=float)
  if x.ndim != 1:
    raise ValueError(f"{name} must be a 1-D sequence of numbers, got shape {x.shape}")
  bad = ~(np.isfinite(x) & (x > 0))
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f"{name} must be finite and positive, got {name}[{i}] = {x[i]}")
  return x


def _same_length(**arrays) -> None:
  lengths = {k: len(v) for k, v in arrays.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"{', '.join(lengths)} must have the same length, got {lengths}")


def _check_options(n_starts, bootstrap, huber_delta) -> None:
  if not isinstance(n_starts, (int, np.integer)) or n_starts < 1:
    raise ValueError(f"n_starts must be an integer >= 1, got {n_starts!r}")
  if not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
    raise ValueError(f"bootstrap must be an integer >= 0 (0: no intervals), got {bootstrap!r}")
  if not huber_delta > 0:
    raise ValueError(f"huber_delta must be > 0, got {huber_delta!r}")


def _huber(r: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
  """Summed Huber loss and its derivative with respect to each residual."""
  small = np.abs(r) <= delta
  loss = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
  return float(loss.sum()), np.clip(r, -delta, delta)


def _log_model(theta: np.ndarray, z: np.ndarray, offset: bool):
  """log L_pred = logsumexp_k(log coef_k - exponent_k * z_k [, log c]) and its Jacobian.

  theta = (log coef_1, exponent_1, ..., log coef_m, exponent_m[, log c]); z: (points, m).
  """
  m = z.shape[1]
  terms = theta[0:2 * m:2] - theta[1:2 * m:2] * z
  if offset:
    terms = np.column_stack([terms, np.full(len(z), theta[-1])])
  top = terms.max(axis=1, keepdims=True)
  exp = np.exp(terms - top)
  total = exp.sum(axis=1, keepdims=True)
  weights = exp / total  # d logsumexp / d term
  jac = np.empty((len(z), len(theta)))
  jac[:, 0:2 * m:2] = weights[:, :m]
  jac[:, 1:2 * m:2] = -weights[:, :m] * z
  if offset:
    jac[:, -1] = weights[:, -1]
  return (top + np.log(total))[:, 0], jac


def _minimise(z, log_loss, offset, starts, delta):
  """The best BFGS optimum over `starts`: (theta, summed Huber loss).

  Unbounded on purpose: coefficients live in log space, and a negative exponent (loss that
  grows with size) is a finding about the sweep that the fit should show, not hide. BFGS
  rather than L-BFGS-B, whose BLAS calls stall for milliseconds when cores are oversubscribed.
  The objective is divided by delta so its gradients are O(1) for the default tolerance.
  """
  def objective(theta):
    pred, jac = _log_model(theta, z, offset)
    value, dr = _huber(pred - log_loss, delta)
    return value / delta, jac.T @ dr / delta

  results = [optimize.minimize(objective, start, jac=True, method="BFGS") for start in starts]
  best = min(results, key=lambda r: r.fun)
  return best.x, float(best.fun * delta)


def _grid_starts(z, loss, offset, n_starts):
  """Starting points on a grid of exponents (and of c as a fraction of the smallest loss).

  The coefficients of each grid point come from non-negative least squares on the losses,
  so every start already follows the data's level.
  """
  m = z.shape[1]
  axes = m + offset
  k = max(1, round(n_starts ** (1 / axes)))
  exponents = np.geomspace(0.05, 2.0, k)
  fractions = np.linspace(0.0, 0.9, k) if offset else np.zeros(1)
  starts = []
  for *exps, fraction in np.stack(np.meshgrid(*[exponents] * m, fractions, indexing="ij"),
                                  axis=-1).reshape(-1, m + 1):
    c = fraction * loss.min()
    coefs, _ = optimize.nnls(np.exp(-np.asarray(exps) * z), loss - c)
    coefs = np.maximum(coefs, 1e-6 * loss.min())
    theta = np.ravel(np.column_stack([np.log(coefs), exps]))
    starts.append(np.append(theta, np.log(max(c, 1e-4 * loss.min()))) if offset else theta)
  return starts


def _bootstrap(fit_points, num_points, enough, bootstrap, seed):
  """95% percentile intervals of the coefficients over `bootstrap` resamples of the points.

  `fit_points(idx)` refits on the points `idx` and returns a dict of coefficients; resamples
  that `enough(idx)` rejects (too few distinct sizes to fit) are drawn again.
  """
  rng = np.random.default_rng(seed)
  samples = []
  for _ in range(100 * bootstrap):
    if len(samples) == bootstrap:
      break
    idx = rng.integers(0, num_points, num_points)
    if enough(idx):
      samples.append(fit_points(idx))
  if not samples:
    return {}
  return {k: tuple(float(q) for q in np.percentile([s[k] for s in samples], [2.5, 97.5]))
          for k in samples[0]}


def _seed_bootstrap(refit_losses, seed_losses, bootstrap, seed):
  """95% percentile intervals of the coefficients when each point's seeds are resampled
  (with replacement, within the point) and the point is their mean: the spread a rerun with
  other seeds could give, also where the sizes are too few for resampling points."""
  rng = np.random.default_rng(seed)
  samples = [refit_losses(np.array([rng.choice(values, len(values)).mean()
                                    for values in seed_losses]))
             for _ in range(bootstrap)]
  return {k: tuple(float(q) for q in np.percentile([s[k] for s in samples], [2.5, 97.5]))
          for k in samples[0]}


def fit_power_law(n, loss, *, offset: bool = True, n_starts: int = 25, bootstrap: int = 200,
                  seed: int = 0, huber_delta: float = HUBER_DELTA,
                  seed_losses=None) -> PowerLawFit:
  """Fit L(N) = a * N^(-alpha) + c, or the pure power law a * N^(-alpha) with offset=False.

  Needs one more distinct N than fitted coefficients: 4 with the offset c, 3 without (a pure
  power law is a straight line in log-log, the only honest fit to three sizes).
  `n_starts` is about how many starts the grid over (alpha, c) has; bootstrap refits start
  from the full-data optimum. Repeated N (several seeds) are fine and count as points.
  With only the minimum number of distinct N, every usable resample holds them all and
  merely reweights them, so no intervals are given. `seed_losses` (one array per point: the
  losses of its seeds, whose mean `loss` is) makes the bootstrap resample seeds within each
  point instead (_seed_bootstrap), which gives intervals whenever a point has two seeds.
  """
  n, loss = _positive_vector("n", n), _positive_vector("loss", loss)
  _same_length(n=n, loss=loss)
  _check_options(n_starts, bootstrap, huber_delta)
  needed = 4 if offset else 3
  distinct = len(np.unique(n))
  if distinct < needed:
    raise ValueError(
        f"fit_power_law got {distinct} distinct N ({len(n)} points); fitting "
        f"{'a, alpha and c' if offset else 'a and alpha'} needs at least {needed} distinct N")
  log_n0 = float(np.mean(np.log(np.unique(n))))
  z = (np.log(n) - log_n0)[:, None]

  def coefficients(theta):
    return {"a": math.exp(theta[0] + theta[1] * log_n0), "alpha": float(theta[1]),
            "c": math.exp(theta[2]) if offset else 0.0}

  starts = _grid_starts(z, loss, offset, n_starts)
  theta, objective = _minimise(z, np.log(loss), offset, starts, huber_delta)

  def refit_losses(losses, idx=slice(None)):
    fitted, _ = _minimise(z[idx], np.log(losses[idx]), offset, [theta], huber_delta)
    coefs = coefficients(fitted)
    return coefs if offset else {k: coefs[k] for k in ("a", "alpha")}

  if seed_losses is not None:
    seed_losses = [_positive_vector("seed_losses", values) for values in seed_losses]
    _same_length(loss=loss, seed_losses=seed_losses)
    if not np.allclose([values.mean() for values in seed_losses], loss, rtol=1e-9):
      raise ValueError("seed_losses: each point's seed losses must average to its loss")
  if not bootstrap:
    intervals = {}
  elif seed_losses is not None and max(map(len, seed_losses)) > 1:
    intervals = _seed_bootstrap(refit_losses, seed_losses, bootstrap, seed)
  elif distinct > needed:
    intervals = _bootstrap(lambda idx: refit_losses(loss, idx), len(n),
                           lambda idx: len(np.unique(n[idx])) >= needed, bootstrap, seed)
  else:
    intervals = {}
  return PowerLawFit(**coefficients(theta), intervals=intervals, num_points=len(n),
                     objective=objective, form=POWER_LAW if offset else PURE_POWER_LAW)


def fit_chinchilla(n, d, loss, *, n_starts: int = 64, bootstrap: int = 200, seed: int = 0,
                   huber_delta: float = HUBER_DELTA) -> ChinchillaFit:
  """Fit L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al.'s approach 3).

  Needs at least 6 distinct (N, D) points, one more than the coefficients, with at least 2
  distinct N and 2 distinct D, else the two exponents are not identified. `n_starts` is about
  how many starts the grid over (alpha, beta, E) has. As in fit_power_law, intervals need
  more than the minimum number of distinct points.
  """
  n, d, loss = (_positive_vector(k, v) for k, v in (("n", n), ("d", d), ("loss", loss)))
  _same_length(n=n, d=d, loss=loss)
  _check_options(n_starts, bootstrap, huber_delta)

  def counts(idx):
    return len(set(zip(n[idx], d[idx]))), len(np.unique(n[idx])), len(np.unique(d[idx]))

  def enough(idx):
    points, distinct_n, distinct_d = counts(idx)
    return points >= 6 and distinct_n >= 2 and distinct_d >= 2

  if not enough(np.arange(len(n))):
    points, distinct_n, distinct_d = counts(np.arange(len(n)))
    raise ValueError(
        f"fit_chinchilla got {points} distinct (N, D) points with {distinct_n} distinct N and "
        f"{distinct_d} distinct D; it needs at least 6 points with at least 2 distinct N and "
        f"2 distinct D")
  log_n0 = float(np.mean(np.log(np.unique(n))))
  log_d0 = float(np.mean(np.log(np.unique(d))))
  z = np.column_stack([np.log(n) - log_n0, np.log(d) - log_d0])

  def coefficients(theta):
    return {"E": math.exp(theta[4]), "A": math.exp(theta[0] + theta[1] * log_n0),
            "alpha": float(theta[1]), "B": math.exp(theta[2] + theta[3] * log_d0),
            "beta": float(theta[3])}

  starts = _grid_starts(z, loss, True, n_starts)
  theta, objective = _minimise(z, np.log(loss), True, starts, huber_delta)

  def refit(idx):
    return coefficients(_minimise(z[idx], np.log(loss[idx]), True, [theta], huber_delta)[0])

  intervals = (_bootstrap(refit, len(n), enough, bootstrap, seed)
               if bootstrap and counts(np.arange(len(n)))[0] > 6 else {})
  return ChinchillaFit(**coefficients(theta), intervals=intervals, num_points=len(n),
                       objective=objective)


def matching_param_ratio(fit_ref: PowerLawFit, fit_other: PowerLawFit, n_ref) -> np.ndarray:
  """N'/N: how many times the parameters fit_other needs to reach fit_ref's loss at each N.

  Solves a' N'^-alpha' + c' = L_ref(N). Where L_ref(N) <= c', the other fit's irreducible
  loss is already at or above the target and no size reaches it: the ratio is inf there
  (not nan, so that "never" still sorts above every finite ratio). Below 1: fewer needed.
  """
  n = np.asarray(n_ref, dtype=float)
  if not np.all(np.isfinite(n)) or not np.all(n > 0):
    raise ValueError(f"n_ref must be finite positive parameter counts, got {n_ref!r}")
  if not fit_other.alpha > 0:
    raise ValueError(f"fit_other.alpha must be > 0 to be inverted, got {fit_other.alpha}")
  gap = fit_ref.predict(n) - fit_other.c
  reachable = gap > 0
  log_n_other = (math.log(fit_other.a) - np.log(np.where(reachable, gap, 1.0))) / fit_other.alpha
  with np.errstate(over="ignore"):
    return np.where(reachable, np.exp(log_n_other - np.log(n)), np.inf)
