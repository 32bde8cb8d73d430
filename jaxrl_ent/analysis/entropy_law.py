"""Least-squares fit of the entropy–performance law `R = −a·exp(H) + b`.

Cui et al. 2025 (arXiv 2505.22617, entropy_methods.md §2.1) observe that the
performance `R` of an RL-trained policy follows `R = −a·e^H + b` along the
training trajectory, with `H` the mean token entropy on training rollouts.
For a fixed `x = e^H` the model is linear in `(a, b)`, so ordinary least
squares on the design `[−e^{H_t}, 1]` is the exact minimiser of
`Σ_t (R_t − (−a e^{H_t} + b))²`; no iterative fitting is needed. The
predicted ceiling is the reward at zero entropy, `R(H=0) = b − a`.

Degenerate inputs return a NaN fit (every number NaN, `ok` False, `reason`
saying why) instead of raising, so a report over many runs survives one run
that is too short to fit; malformed *arguments* (different lengths, not 1-D)
raise `ValueError`. Pairs where either value is non-finite are dropped first
(metrics.jsonl writes NaN/inf as strings, and missing entries come back as
NaN from `runs.Run.pairs`); `n` counts the pairs actually used.
"""

import dataclasses
import math

import numpy as np

# Fewer pairs than this leave no residual degree of freedom (2 parameters):
# the fit would interpolate and R² would be 1 by construction.
MIN_PAIRS = 3


@dataclasses.dataclass(frozen=True)
class EntropyLawFit:
  """Result of `fit_entropy_law`.

  Attributes:
    a: coefficient of `−exp(H)`; positive when reward rises as entropy falls.
    b: intercept, the asymptotic reward as `exp(H) → 0`.
    ceiling: `b − a`, the predicted reward at `H = 0` (fully collapsed).
    r2: coefficient of determination `1 − SS_res/SS_tot` on the fitted pairs;
      NaN when the rewards are all equal (`SS_tot = 0`, R² undefined) even
      though `a = 0, b = R` is then a valid fit.
    n: number of finite pairs used.
    rmse: root mean squared residual.
    reason: empty for a usable fit; otherwise why the fit is NaN.
  """
  a: float
  b: float
  ceiling: float
  r2: float
  n: int
  rmse: float = math.nan
  reason: str = ""

  @property
  def ok(self) -> bool:
    """Whether `a`, `b` and `ceiling` are usable numbers."""
    return not self.reason

  def predict(self, entropy) -> np.ndarray:
    """`−a·exp(H) + b` for an array of entropies `H` (nats)."""
    return -self.a * np.exp(np.asarray(entropy, np.float64)) + self.b


def nan_fit(n: int, reason: str) -> EntropyLawFit:
  """The fit returned for degenerate inputs."""
  return EntropyLawFit(a=math.nan, b=math.nan, ceiling=math.nan, r2=math.nan,
                       n=n, rmse=math.nan, reason=reason)


def fit_entropy_law(entropy, reward) -> EntropyLawFit:
  """Fits `R = −a·exp(H) + b` by ordinary least squares.

  .. math::  (a, b) = \\arg\\min \\sum_t (R_t + a e^{H_t} − b)^2,
     \\quad \\mathrm{ceiling} = b − a

  Args:
    entropy: `[n]` mean token entropies `H_t` in nats.
    reward: `[n]` performances `R_t` (training reward or val accuracy).

  Returns:
    `EntropyLawFit`. NaN fit (with `reason`) when fewer than `MIN_PAIRS`
    finite pairs remain or `exp(H)` is constant over them (then `a` and `b`
    are not identifiable).

  Raises:
    ValueError: `entropy` and `reward` are not 1-D arrays of one length.
  """
  h = np.asarray(entropy, np.float64)
  r = np.asarray(reward, np.float64)
  if h.ndim != 1 or r.ndim != 1 or h.shape != r.shape:
    raise ValueError("fit_entropy_law needs two 1-D arrays of equal length; "
                     f"got entropy shape {h.shape}, reward shape {r.shape}.")
  keep = np.isfinite(h) & np.isfinite(r)
  h, r = h[keep], r[keep]
  n = int(h.size)
  if n < MIN_PAIRS:
    return nan_fit(n, f"{n} finite (H, R) pairs; need at least {MIN_PAIRS}")
  x = np.exp(h)
  if not np.all(np.isfinite(x)):
    return nan_fit(n, "exp(H) overflows (entropy above ~709 nats)")
  # Constant x makes the two design columns collinear. Relative test: the
  # spread of x is compared with its scale, as float64 rounding is.
  if np.ptp(x) <= 64 * np.finfo(np.float64).eps * np.max(np.abs(x)):
    return nan_fit(n, "entropy is constant over the pairs; a and b are not "
                   "identifiable")
  design = np.stack([-x, np.ones_like(x)], axis=1)
  (a, b), _, rank, _ = np.linalg.lstsq(design, r, rcond=None)
  if rank < 2:
    return nan_fit(n, "design [−exp(H), 1] is rank deficient")
  resid = r - design @ np.array([a, b])
  ss_res = float(resid @ resid)
  centred = r - r.mean()
  ss_tot = float(centred @ centred)
  r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
  return EntropyLawFit(a=float(a), b=float(b), ceiling=float(b - a),
                       r2=float(r2), n=n, rmse=math.sqrt(ss_res / n))
