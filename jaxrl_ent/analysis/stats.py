"""Statistics for comparing methods over seeds: the unbiased pass@k, the
interquartile mean, stratified bootstrap confidence intervals, the
probability of improvement, a paired test, and the verdict a claim gets.

Axis legend: P prompts; R, S runs (seeds) of one method; T tasks (or
metrics evaluated alike); B bootstrap replicates. A score matrix is [R, T],
as in rliable: row r is run r, column t is task t.

Semantics follow rliable (Agarwal et al. 2021, "Deep RL at the edge of the
statistical precipice"):
- `iqm` is `scipy.stats.trim_mean(scores, 0.25, axis=None)` over all runs
  and tasks pooled, as `rliable.metrics.aggregate_iqm`: with N scores it cuts
  floor(N / 4) from each end and averages the rest (N = 10: the middle 6).
- `bootstrap_ci` resamples runs with replacement within each task (column)
  independently, `reps` times, and takes the percentile interval
  (`np.percentile`, linear interpolation), as rliable's `StratifiedBootstrap`
  with arch's `conf_int(method="percentile")`.
- `probability_of_improvement` is, per task, P(X > Y) + P(X = Y) / 2 over all
  (run of X, run of Y) pairs (the Mann-Whitney U over m n), averaged over
  tasks; its CI resamples X and Y independently, as rliable's
  `StratifiedIndependentBootstrap` (or jointly for paired seeds).

Why not the rliable package itself (checked with rliable 1.2.0, the latest):
- `pip install rliable` pulls arch, statsmodels, pandas, seaborn, patsy,
  formulaic and narwhals (~190 MB), and with the pandas 3 it resolves to,
  `import rliable.library` fails inside arch (`deprecate_kwarg()` signature);
- its bootstrap draws indices with the global `np.random.choice`, ignoring
  `random_state`: the same `random_state` twice gives different intervals,
  and different ones give the same once `np.random.seed` is fixed. That
  breaks the explicit-seed rule (STYLE.md §1) and reproducible reports;
- arch resamples in a Python loop (50 000 reps of an 8 x 2 matrix took 28 s
  here); this module resamples in vectorised chunks;
- it has no paired test. What it computes is a few lines each, written here
  and tested against hand computations (tests/analysis/stats_test.py).
scipy (a jax dependency) supplies `trim_mean` and the Wilcoxon test; it is
imported where they are used, since the held-out evaluator imports this
module for `pass_at_k` and `import scipy.stats` costs ~1.5 s at start-up.

Randomness: every function that resamples takes `seed` (an int) as its first
argument and draws from `np.random.default_rng(seed)` only; the same seed
gives the same interval.
"""

import dataclasses
import numbers

import numpy as np

_CHUNK_ELEMENTS = 1 << 22  # Resampled values held at once (~32 MB float64).


def _int_array(name, x) -> np.ndarray:
  a = np.asarray(x)
  if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or (
      np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a))
      and np.all(a == np.round(a)))):
    raise ValueError(f"pass_at_k: {name} must be integers; got {x!r}")
  if np.any(a < 0):
    raise ValueError(f"pass_at_k: {name} must be >= 0; got {x!r}")
  return a.astype(np.int64)


def pass_at_k(n, c, k) -> np.ndarray:
  """Unbiased pass@k from n samples of which c are correct, per prompt.

  1 - C(n - c, k) / C(n, k) (Chen et al. 2021, the HumanEval paper), in its
  stable product form 1 - prod_{i = n-c+1}^{n} (1 - k / i). With n = k it is
  1 when c >= 1 and 0 otherwise: "any of the k samples solved it".

  Args:
    n: [P] (or scalar) samples drawn per prompt, >= k.
    c: [P] correct samples among them, 0 <= c <= n.
    k: the k of pass@k (scalar or [P]), >= 1.
  Returns:
    [P] float64 (broadcast shape of n, c, k).
  """
  n, c, k = (_int_array(name, v) for name, v in (("n", n), ("c", c),
                                                  ("k", k)))
  if np.any(k < 1):
    raise ValueError(f"pass_at_k: k must be >= 1; got k={k.tolist()}")
  n, c, k = np.broadcast_arrays(n, c, k)
  if np.any(c > n):
    bad = np.flatnonzero(np.ravel(c > n))
    raise ValueError(f"pass_at_k: c (correct samples) exceeds n (samples) "
                     f"at flat index {bad[:5].tolist()}")
  if np.any(k > n):
    raise ValueError(f"pass_at_k: k={int(k.max())} exceeds n (samples per "
                     f"prompt, min {int(n.min())}); draw n >= k samples")
  if n.size == 0:
    return np.zeros(n.shape)
  i = np.arange(1, int(n.max()) + 1)  # [I] the factors' denominators.
  nn, cc, kk = n[..., None], c[..., None], k[..., None]
  in_product = (i > nn - cc) & (i <= nn)
  factor = np.where(in_product, 1.0 - kk / i, 1.0)
  return 1.0 - np.prod(factor, axis=-1)


def iqm(scores) -> np.ndarray:
  """Interquartile mean of [..., R, T] over its last two axes pooled.

  `scipy.stats.trim_mean(·, 0.25)`: of N = R * T scores, floor(N / 4) are cut
  from each end. Leading axes (bootstrap replicates) are kept: [...].
  """
  s = np.asarray(scores, dtype=np.float64)
  if s.ndim < 2:
    raise ValueError(f"iqm: scores must be [runs, tasks]; got shape "
                     f"{s.shape}")
  from scipy import stats as sp_stats  # pylint: disable=g-import-not-at-top
  return sp_stats.trim_mean(s.reshape(*s.shape[:-2], -1), 0.25, axis=-1)


def mean(scores) -> np.ndarray:
  """Mean of [..., R, T] over its last two axes: [...]."""
  return np.asarray(scores, dtype=np.float64).mean(axis=(-2, -1))


def _matrix(name, x) -> np.ndarray:
  a = np.asarray(x, dtype=np.float64)
  if a.ndim == 1:
    a = a[:, None]
  if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
    raise ValueError(f"{name} must be [runs, tasks] (or [runs]); got shape "
                     f"{np.shape(x)}")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name} has non-finite scores")
  return a


def _check_ci_args(reps, size):
  if not isinstance(reps, numbers.Integral) or reps < 1:
    raise ValueError(f"reps must be a positive int; got {reps!r}")
  if not 0.0 < size < 1.0:
    raise ValueError(f"size must be in (0, 1); got {size!r}")


def _percentile_ci(values_b, size) -> np.ndarray:
  alpha = 100.0 * (1.0 - size) / 2.0
  return np.percentile(values_b, [alpha, 100.0 - alpha], axis=0)


def _chunks(reps, per_rep):
  step = max(1, _CHUNK_ELEMENTS // max(per_rep, 1))
  for start in range(0, reps, step):
    yield min(step, reps - start)


def resample_indices(rng, num_reps, num_runs, num_tasks) -> np.ndarray:
  """[B, R, T] run indices: replicate b takes run idx[b, r, t] of task t."""
  return rng.integers(0, num_runs, size=(num_reps, num_runs, num_tasks))


def bootstrap_ci(seed: int, scores, statistic=iqm, *, reps: int = 10_000,
                 size: float = 0.95) -> tuple[float, np.ndarray]:
  """Stratified bootstrap percentile CI of `statistic` of one method.

  Args:
    seed: seeds `np.random.default_rng`, the only randomness.
    scores: [R, T] (or [R]) final scores, run r of task t.
    statistic: maps [..., R, T] to [...] (`iqm`, `mean`).
    reps: bootstrap replicates B.
    size: coverage of the interval.
  Returns:
    (point estimate, [2] lower and upper bound).
  """
  s = _matrix("scores", scores)
  _check_ci_args(reps, size)
  rng = np.random.default_rng(seed)
  num_runs, num_tasks = s.shape
  cols = np.arange(num_tasks)
  values = []
  for b in _chunks(reps, s.size):
    idx = resample_indices(rng, b, num_runs, num_tasks)
    values.append(statistic(s[idx, cols]))
  return float(statistic(s)), _percentile_ci(np.concatenate(values), size)


def probability_of_improvement(x, y) -> np.ndarray:
  """P(X > Y) + P(X = Y) / 2 per task over all run pairs, task-averaged.

  x: [..., N, T], y: [..., M, T] (leading axes: replicates) -> [...].
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  xs, ys = x[..., :, None, :], y[..., None, :, :]  # [..., N, 1, T], [..., 1, M, T]
  wins = (xs > ys).mean(axis=(-3, -2)) + 0.5 * (xs == ys).mean(axis=(-3, -2))
  return wins.mean(axis=-1)


def probability_of_improvement_ci(seed: int, x, y, *, paired: bool = False,
                                  reps: int = 10_000, size: float = 0.95
                                  ) -> tuple[float, np.ndarray]:
  """P(X > Y) and its stratified bootstrap percentile CI.

  x: [N, T] runs of method X; y: [M, T] of method Y (or [N], [M]). Runs are
  resampled within each task, X and Y independently (rliable), or with the
  same indices when `paired` (needs N == M; row i of both = seed i).
  Returns (point estimate, [2] bounds); 0.5 is "no difference".
  """
  x, y = _matrix("x", x), _matrix("y", y)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"x and y must have the same tasks; got shapes "
                     f"{x.shape} and {y.shape}")
  if paired and x.shape != y.shape:
    raise ValueError(f"paired needs the same seeds in x and y; got shapes "
                     f"{x.shape} and {y.shape}")
  _check_ci_args(reps, size)
  rng = np.random.default_rng(seed)
  cols = np.arange(x.shape[1])
  values = []
  for b in _chunks(reps, x.shape[0] * y.shape[0] * x.shape[1]):
    ix = resample_indices(rng, b, x.shape[0], x.shape[1])
    iy = ix if paired else resample_indices(rng, b, y.shape[0], y.shape[1])
    values.append(probability_of_improvement(x[ix, cols], y[iy, cols]))
  return (float(probability_of_improvement(x, y)),
          _percentile_ci(np.concatenate(values), size))


@dataclasses.dataclass(frozen=True)
class PairedResult:
  """Paired comparison of X and Y over seeds (d_s = X_s - Y_s).

  mean_diff: mean over seeds of d_s (task-averaged); ci: [2] its paired
  bootstrap percentile CI; p_value: two-sided Wilcoxon signed-rank p-value
  of d (scipy's default method: exact for S <= 50 without ties or zeros,
  else the normal approximation with the tie correction; 1.0 when every d_s
  is 0); num_seeds: S.
  """
  mean_diff: float
  ci: np.ndarray
  p_value: float
  num_seeds: int


def paired_test(seed: int, x, y, *, reps: int = 10_000,
                size: float = 0.95) -> PairedResult:
  """Paired test of X against Y over the same seeds.

  x, y: [S, T] (or [S]); row s of both comes from seed index s (same
  initial weights and data order). Each seed's difference is averaged over
  tasks; seeds are resampled with replacement for the CI of its mean.
  """
  x, y = _matrix("x", x), _matrix("y", y)
  if x.shape != y.shape:
    raise ValueError(f"paired_test: x and y must be [seeds, tasks] of the "
                     f"same seeds; got shapes {x.shape} and {y.shape}")
  d_s = (x - y).mean(axis=1)
  _check_ci_args(reps, size)
  rng = np.random.default_rng(seed)
  values = []
  for b in _chunks(reps, d_s.size):
    idx = rng.integers(0, d_s.size, size=(b, d_s.size))
    values.append(d_s[idx].mean(axis=1))
  # Ranked at 12 decimals: a difference of scores such as k / 500 carries
  # float noise that would split true ties (and zeros) into distinct ranks.
  d_rank = np.round(d_s, 12)
  if np.all(d_rank == 0):
    p_value = 1.0
  else:
    from scipy import stats as sp_stats  # pylint: disable=g-import-not-at-top
    p_value = float(sp_stats.wilcoxon(d_rank, alternative="two-sided").pvalue)
  return PairedResult(mean_diff=float(d_s.mean()),
                      ci=_percentile_ci(np.concatenate(values), size),
                      p_value=p_value, num_seeds=int(d_s.size))


_DIRECTIONS = {"greater": 1, "less": -1}


def verdict(ci, direction, null: float = 0.0) -> str:
  """The verdict on a claim from the CI of its effect.

  ci: (lower, upper); direction: "greater" (the claim says the effect is
  above `null`) or "less"; null: the no-effect value (0 for a difference,
  0.5 for a probability of improvement). "held" when the interval excludes
  `null` on the claimed side, "contradicted" when it excludes it on the
  other, else "undecided" (an end exactly at `null` does not exclude it).
  """
  bounds = np.asarray(ci, dtype=np.float64).ravel()
  if bounds.size != 2:
    raise ValueError(f"verdict: ci must be (lower, upper); got {ci!r}")
  lo, hi = float(bounds[0]), float(bounds[1])
  if not isinstance(direction, str) or direction not in _DIRECTIONS:
    raise ValueError(f"verdict: direction must be 'greater' or 'less'; got "
                     f"{direction!r}")
  if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
    raise ValueError(f"verdict: ci must be finite with lower <= upper; got "
                     f"{(lo, hi)}")
  sign = _DIRECTIONS[direction]
  if lo > null:
    return "held" if sign > 0 else "contradicted"
  if hi < null:
    return "held" if sign < 0 else "contradicted"
  return "undecided"


@dataclasses.dataclass(frozen=True)
class PooledCorrelation:
  """Per-run Pearson r's pooled by Fisher's z (see `fisher_z_mean`)."""
  r: float
  ci: tuple[float, float]
  num_runs: int
  num_pairs: int


def fisher_z_mean(rs, ns, *, level: float = 0.95) -> PooledCorrelation:
  """The average of per-run correlations through Fisher's z-transform.

  z_i = atanh(r_i) is about normal with variance 1 / (n_i − 3), so the
  pooled value is tanh(Σ (n_i − 3) z_i / Σ (n_i − 3)) and its interval
  tanh(z̄ ± q / √Σ (n_i − 3)), q the normal quantile of `level`. (Averaging
  r directly is biased towards 0, and weights a 10-step run like a 400-step
  one.) Runs with n_i ≤ 3 carry no weight and are left out; |r| = 1 is
  clipped just inside ±1 so its z stays finite.

  Args:
    rs: per-run correlations, each in [−1, 1].
    ns: the number of pairs behind each r.
    level: coverage of the interval.

  Returns:
    `PooledCorrelation`; NaNs when no run has more than 3 pairs.
  """
  r = np.asarray(rs, dtype=np.float64).ravel()
  n = np.asarray(ns, dtype=np.float64).ravel()
  if r.shape != n.shape:
    raise ValueError(f"fisher_z_mean: {r.size} correlations but {n.size} "
                     "pair counts")
  if np.any(~np.isfinite(r)) or np.any(np.abs(r) > 1):
    raise ValueError(f"fisher_z_mean: correlations must be in [-1, 1]; got "
                     f"{r.tolist()}")
  if not 0 < level < 1:
    raise ValueError(f"fisher_z_mean: level must be in (0, 1); got {level}")
  keep = n > 3
  if not keep.any():
    return PooledCorrelation(float("nan"), (float("nan"), float("nan")), 0,
                             0)
  w = n[keep] - 3.0
  z = np.arctanh(np.clip(r[keep], -1 + 1e-12, 1 - 1e-12))
  z_bar = float(np.sum(w * z) / np.sum(w))
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  half = float(scipy_stats.norm.ppf(0.5 + level / 2) / np.sqrt(np.sum(w)))
  return PooledCorrelation(
      r=float(np.tanh(z_bar)),
      ci=(float(np.tanh(z_bar - half)), float(np.tanh(z_bar + half))),
      num_runs=int(keep.sum()), num_pairs=int(n[keep].sum()))
