"""Is a precision's mean metric over seeds different from the reference precision's?

Each comparison a report makes is the difference of two seed means with its 95% Welch
interval (unequal variances; seeds of different precisions are independent runs). A
difference whose interval contains 0 is "not distinguishable": write-ups say so rather than
rank the two. With one seed on either side there is no interval, and no verdict.
"""

from __future__ import annotations

import dataclasses
import math

from scipy import stats

NOT_DISTINGUISHABLE = "not distinguishable"


@dataclasses.dataclass(frozen=True)
class Difference:
  """mean - reference mean, with its `level` Welch interval [lo, hi] (nan for one seed)."""
  diff: float
  lo: float
  hi: float
  level: float

  @property
  def verdict(self) -> str:
    if math.isnan(self.lo):
      return "one seed: no interval"
    if self.lo <= 0.0 <= self.hi:
      return NOT_DISTINGUISHABLE
    return "higher" if self.diff > 0 else "lower"

  def format(self, scale: float = 1.0, digits: int = 4) -> str:
    """'+0.0123 [+0.0040, +0.0206] higher' in the metric's units times `scale`."""
    value = f"{self.diff * scale:+.{digits}f}"
    if math.isnan(self.lo):
      return f"{value} ({self.verdict})"
    return (f"{value} [{self.lo * scale:+.{digits}f}, {self.hi * scale:+.{digits}f}] "
            f"{self.verdict}")


def welch_difference(mean: float, std: float, n: int, ref_mean: float, ref_std: float,
                     ref_n: int, level: float = 0.95) -> Difference:
  """The difference of two means from their sample standard deviations (ddof=1) and seed
  counts, with the Welch-Satterthwaite degrees of freedom."""
  if not 0.0 < level < 1.0:
    raise ValueError(f"level={level!r} must lie in (0, 1)")
  for name, count in (("n", n), ("ref_n", ref_n)):
    if int(count) != count or count < 1:
      raise ValueError(f"{name}={count!r} must be a positive number of seeds")
  diff = float(mean - ref_mean)
  if n < 2 or ref_n < 2:
    return Difference(diff, math.nan, math.nan, level)
  var, ref_var = std**2 / n, ref_std**2 / ref_n
  se = math.sqrt(var + ref_var)
  if se == 0.0:  # every seed gave the same value on both sides
    return Difference(diff, diff, diff, level)
  dof = (var + ref_var) ** 2 / (var**2 / (n - 1) + ref_var**2 / (ref_n - 1))
  half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
  return Difference(diff, diff - half, diff + half, level)
