"""Loads a run workdir (metrics.jsonl, summary.json, saved config) for analysis.

A workdir written by `jaxrl_ent.train.rl_loop.train_and_evaluate` holds:

  metrics.jsonl   one JSON object per step (`train.metrics.MetricWriter`):
                  `step` plus float metrics; NaN/inf are written as strings.
                  Step 0 carries only the initial eval (`val/*`).
  summary.json    initial/last/final eval and the step count (absent while
                  the run is still going).
  ckpt/<step>/meta/metadata
                  orbax's JSON item with `{"config": config.to_dict(), ...}`
                  (`train.checkpoint`); read here as plain JSON so analysis
                  needs neither orbax nor jax.

Nothing here imports jax; loading only reads files.
"""

import dataclasses
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

from jaxrl_ent import storage

_LOG = logging.getLogger(__name__)

TRAIN_REWARD_KEY = "critic/score/mean"
VAL_ACC_KEY = "val/greedy_acc"
# Entropy of the policy on the training rollouts, in order of preference:
# the recomputed entropy of the pre-update policy on the rollout tokens
# (what Cui et al. fit against), the sampler's own entropy (the same policy
# at temperature 1), and the mean over the update's forward passes.
ENTROPY_KEYS = ("actor/entropy_before_update", "rollout/entropy",
                "actor/entropy")
PRED_DH_KEY = "entropy/dH_pred_tabular/total"
MEASURED_DH_KEY = "entropy/measured_dH"
# Exact first order along the realised parameter step (rl/update.py).
EXACT_DH_KEY = "entropy/dH_pred_exact/total"
EXACT_DH_PREFIX = "entropy/dH_pred_exact/"
TRAPEZOID_DH_KEY = "entropy/dH_pred_trapezoid/total"
COVARIANCE_KEY = "entropy/covariance"

_PASS_AT = re.compile(r"^val/pass_at_(\d+)$")
# Controller state fields that say what share of valid tokens the control
# changed at the last update (`rl.train_step.controller_metrics` flattens
# them to `entropy/<stage>/<field>`). `frac_kept` (high_entropy_tokens) is
# the share whose gradient is *kept*; the rest are the ones touched.
_FRACTION_FIELDS = {"frac_selected": False, "frac_kept": True}
# Dense bonuses change the entropy cotangent of every valid token whenever
# their applied coefficient is non-zero.
_DENSE_COEF_FIELDS = {"entropy_bonus": "coef", "adaptive_entropy":
                      "applied_coef", "aent": "applied_coef"}


@dataclasses.dataclass(frozen=True)
class Series:
  """One metric over steps, only where it was logged and numeric.

  Attributes:
    key: metric name.
    step: int64 `[n]`, increasing.
    value: float64 `[n]` (may hold NaN/inf if the run logged them).
  """
  key: str
  step: np.ndarray
  value: np.ndarray

  def __len__(self) -> int:
    return int(self.step.size)

  def finite(self) -> "Series":
    """The entries whose value is finite."""
    keep = np.isfinite(self.value)
    return Series(self.key, self.step[keep], self.value[keep])

  def last(self) -> float:
    """The last finite value, NaN if none."""
    f = self.finite()
    return float(f.value[-1]) if len(f) else math.nan


@dataclasses.dataclass(frozen=True)
class Run:
  """One run workdir, loaded.

  Attributes:
    name: label used in plots and tables (the workdir's base name unless
      given to `load_run`).
    workdir: the directory it was loaded from.
    records: the metrics.jsonl objects, one per step, sorted by step.
    summary: summary.json contents (`{}` if absent).
    config: the saved training config as a dict, or None if no checkpoint
      metadata could be read.
    method: `config.entropy.method`; else summary.json's `entropy_method`
      (rl_loop does not write one today); else inferred from the
      `entropy/dH_pred_tabular/<stage>` metric names; else "unknown".
    method_source: "config", "summary", "metrics" or "unknown".
  """
  name: str
  workdir: storage.Path
  records: tuple
  summary: dict
  config: dict | None
  method: str
  method_source: str

  @property
  def keys(self) -> list[str]:
    """Every metric name logged at least once (without `step`)."""
    return sorted({k for r in self.records for k in r} - {"step"})

  @property
  def last_step(self) -> int:
    return int(self.records[-1]["step"]) if self.records else 0

  @property
  def anneal(self) -> str:
    """`config.entropy.anneal` ("" when there is no saved config)."""
    return str(((self.config or {}).get("entropy") or {}).get("anneal", ""))

  @property
  def method_label(self) -> str:
    """The method, with its annealing schedule when not constant."""
    if self.anneal and self.anneal != "constant" and self.method != "none":
      return f"{self.method} ({self.anneal})"
    return self.method

  def has(self, key: str) -> bool:
    return any(key in r for r in self.records)

  def series(self, key: str) -> Series:
    """The metric `key` at every step that logged it.

    Raises:
      KeyError: no record has `key` (the message names the run's path).
    """
    steps, values = [], []
    for r in self.records:
      if key in r:
        v = _as_float(r[key])
        if v is not None:
          steps.append(int(r["step"]))
          values.append(v)
    if not steps:
      path = self.workdir / "metrics.jsonl"
      raise KeyError(f"metric {key!r} is not in {path} (run {self.name!r})")
    return Series(key, np.asarray(steps, np.int64),
                  np.asarray(values, np.float64))

  def get(self, key: str) -> Series | None:
    """`series(key)`, or None when the run never logged `key`."""
    try:
      return self.series(key)
    except KeyError:
      return None

  def first_of(self, keys: Iterable[str]) -> Series | None:
    """The series of the first key in `keys` that the run logged."""
    for key in keys:
      s = self.get(key)
      if s is not None:
        return s
    return None


def _as_float(v) -> float | None:
  # MetricWriter writes non-finite floats as their str(): "nan", "inf".
  if isinstance(v, bool):
    return float(v)
  if isinstance(v, (int, float)):
    return float(v)
  if isinstance(v, str):
    try:
      return float(v)
    except ValueError:
      return None
  return None


def read_records(path) -> list[dict]:
  """Parses metrics.jsonl, sorted by step, the last record kept per step.

  A resumed run can rewrite steps (rl_loop truncates first, but a crash
  between the two could leave duplicates): the later line wins. A truncated
  *last* line (a run being written, or killed mid-write) is skipped with a
  warning; any other unparsable line raises.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: a line (not the last) is not a JSON object with a `step`.
  """
  path = storage.path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no metrics file at {path}")
  lines = path.read_text().splitlines()
  by_step = {}
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
      if not isinstance(rec, dict) or "step" not in rec:
        raise ValueError("not a JSON object with a 'step'")
      step = int(rec["step"])
    except (ValueError, TypeError) as e:
      if i == len(lines) - 1:
        _LOG.warning("%s: skipping unparsable last line %d (%s)", path, i + 1,
                     e)
        continue
      raise ValueError(f"{path}:{i + 1}: bad metrics line ({e}): "
                       f"{line[:120]!r}") from e
    by_step[step] = rec
  return [by_step[s] for s in sorted(by_step)]


def load_config(workdir) -> dict | None:
  """The config saved in the newest readable checkpoint's meta, or None.

  Checkpoint steps are tried newest first; a step whose meta is missing or
  not JSON (e.g. mid-commit) is skipped.
  """
  ckpt = storage.path(workdir) / "ckpt"
  if not ckpt.is_dir():
    return None
  steps = sorted((int(p.name) for p in ckpt.iterdir()
                  if p.is_dir() and p.name.isdigit()), reverse=True)
  for step in steps:
    meta = ckpt / str(step) / "meta" / "metadata"
    try:
      data = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
      _LOG.debug("no config in %s: %s", meta, e)
      continue
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
      return data["config"]
  return None


def _method_from_metrics(keys: Sequence[str]) -> str | None:
  # rl_loop's attributed chain logs entropy/dH_pred_tabular/<stage> per controller
  # stage; stage names are the method names (train.factories).
  prefix = "entropy/dH_pred_tabular/"
  sources = [k[len(prefix):] for k in keys if k.startswith(prefix)]
  if not sources:
    return None
  stages = [s for s in sources if s not in ("input", "total")]
  return "+".join(stages) if stages else "none"


def load_run(workdir, name: str | None = None) -> Run:
  """Loads one run workdir.

  Args:
    workdir: directory holding `metrics.jsonl` (and optionally
      `summary.json` and `ckpt/`).
    name: label for plots and tables; defaults to the directory's name.

  Returns:
    `Run`.

  Raises:
    FileNotFoundError: `workdir` is not a directory, or has no metrics.jsonl.
    ValueError: metrics.jsonl is malformed or has no records.
  """
  workdir = storage.path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f"run workdir {workdir} does not exist or is not "
                            "a directory")
  metrics = workdir / "metrics.jsonl"
  if not metrics.is_file():
    raise FileNotFoundError(f"{workdir} has no metrics.jsonl (expected "
                            f"{metrics}); is it a run workdir?")
  records = read_records(metrics)
  if not records:
    raise ValueError(f"{metrics} has no records")
  summary = {}
  summary_path = workdir / "summary.json"
  if summary_path.is_file():
    try:
      summary = json.loads(summary_path.read_text())
    except ValueError as e:
      _LOG.warning("ignoring unreadable %s: %s", summary_path, e)
  config = load_config(workdir)
  method, source = None, "unknown"
  entropy_cfg = (config or {}).get("entropy")
  if isinstance(entropy_cfg, dict) and entropy_cfg.get("method"):
    method, source = str(entropy_cfg["method"]), "config"
  elif isinstance(summary.get("entropy_method"), str):
    method, source = summary["entropy_method"], "summary"
  else:
    method = _method_from_metrics({k for r in records for k in r})
    source = "metrics" if method else "unknown"
  return Run(name=name or workdir.resolve().name, workdir=workdir,
             records=tuple(records), summary=summary, config=config,
             method=method or "unknown", method_source=source)


# ---------------------------------------------------------------------------
# Derived series.


def moving_average(values, window: int) -> np.ndarray:
  """Trailing mean over the last `window` values (fewer at the start).

  Trailing rather than centred so a smoothed value never uses later steps.
  """
  values = np.asarray(values, np.float64)
  if window <= 1 or values.size == 0:
    return values.copy()
  csum = np.concatenate([[0.0], np.cumsum(values)])
  idx = np.arange(values.size)
  lo = np.maximum(idx + 1 - window, 0)
  return (csum[idx + 1] - csum[lo]) / (idx + 1 - lo)


def align(*series: Series) -> tuple[np.ndarray, ...]:
  """`(steps, values_1, ..., values_k)` at the steps every series has."""
  common = series[0].step
  for s in series[1:]:
    common = np.intersect1d(common, s.step)
  out = [common]
  for s in series:
    out.append(s.value[np.searchsorted(s.step, common)])
  return tuple(out)


def entropy_series(run: Run) -> Series | None:
  """The policy's entropy on training rollouts (first of `ENTROPY_KEYS`)."""
  return run.first_of(ENTROPY_KEYS)


def pass_at_k_key(run: Run) -> str | None:
  """The `val/pass_at_<k>` key the run logged (largest k if several)."""
  ks = [int(m.group(1)) for m in map(_PASS_AT.match, run.keys) if m]
  return f"val/pass_at_{max(ks)}" if ks else None


def train_pairs(run: Run, smooth: int = 1):
  """Per-step `(steps, H, R)` for the entropy-law fit on training reward.

  `H` is the entropy of the pre-update policy on the step's rollouts and
  `R` the step's mean training reward (`critic/score/mean`): both describe
  the same policy on the same batch. With `smooth > 1` both are replaced by
  their trailing moving averages over `smooth` steps (same window, so pairs
  stay aligned); smoothing lowers the noise in `R` but inflates R².

  Returns:
    `(steps [n], entropy [n], reward [n])`, or None if either is missing.
  """
  h, r = entropy_series(run), run.get(TRAIN_REWARD_KEY)
  if h is None or r is None:
    return None
  steps, hv, rv = align(h, r)
  return steps, moving_average(hv, smooth), moving_average(rv, smooth)


def entropy_at_evals(run: Run, steps) -> np.ndarray:
  """Entropy of the policy that the eval at each of `steps` scored.

  The eval logged at step `s` scores the parameters after `s` updates. The
  entropy of those same parameters on fresh rollouts is step `s+1`'s
  pre-update entropy; for the last step (no `s+1`) it is step `s`'s
  pre-update entropy plus its measured change (`entropy/measured_dH`, the
  post-update entropy on that step's batch), else step `s`'s own entropy
  (one update stale). NaN where none of these exists.
  """
  h = entropy_series(run)
  out = np.full(len(steps), math.nan)
  if h is None:
    return out
  hmap = dict(zip(h.step.tolist(), h.value.tolist()))
  dh = run.get(MEASURED_DH_KEY)
  dmap = dict(zip(dh.step.tolist(), dh.value.tolist())) if dh else {}
  for i, s in enumerate(np.asarray(steps).tolist()):
    if s + 1 in hmap:
      out[i] = hmap[s + 1]
    elif s in hmap and s in dmap:
      out[i] = hmap[s] + dmap[s]
    elif s in hmap:
      out[i] = hmap[s]
  return out


def eval_pairs(run: Run, metric: str = VAL_ACC_KEY):
  """`(steps, H, R)` at eval steps: `R` = `metric`, `H` = `entropy_at_evals`.

  This is the pairing of Cui et al. (validation accuracy against rollout
  entropy), with as many points as evals. Returns None if `metric` or an
  entropy series is missing.
  """
  r = run.get(metric)
  if r is None or entropy_series(run) is None:
    return None
  return r.step, entropy_at_evals(run, r.step), r.value


def touched_series(run: Run) -> Series | None:
  """Share of valid tokens the entropy control changed, per training step.

  From the controller metrics: `entropy/<stage>/frac_selected` (Clip-Cov's
  detached tokens, KL-Cov's penalised ones), `1 − frac_kept`
  (high_entropy_tokens zeroes the other tokens' gradient), and 1 for a dense
  bonus (`entropy_bonus`, `adaptive_entropy`, `aent`) at steps where its
  applied coefficient is non-zero. Several stages add up (capped at 1).
  Method "none" touches nothing: 0 at every training step. None when the
  run logs none of these (e.g. `steer`, which reweights every token by a
  continuous factor, has no single fraction).
  """
  parts = []
  for key in run.keys:
    pieces = key.split("/")
    if len(pieces) != 3 or pieces[0] != "entropy":
      continue
    _, stage, field = pieces
    if field in _FRACTION_FIELDS:
      s = run.series(key)
      value = 1.0 - s.value if _FRACTION_FIELDS[field] else s.value
      parts.append(Series(key, s.step, value))
    elif _DENSE_COEF_FIELDS.get(stage) == field:
      s = run.series(key)
      parts.append(Series(key, s.step, (s.value != 0).astype(np.float64)))
  if not parts:
    if run.method == "none":
      h = entropy_series(run)
      if h is not None:
        return Series("none", h.step, np.zeros_like(h.value))
    return None
  aligned = align(*parts)
  total = np.minimum(np.sum(aligned[1:], axis=0), 1.0)
  return Series("+".join(p.key for p in parts), aligned[0], total)


def pearson(x, y) -> tuple[float, int]:
  """Pearson correlation over the finite pairs, and their count.

  NaN when fewer than 3 pairs or either side is constant.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  keep = np.isfinite(x) & np.isfinite(y)
  x, y = x[keep], y[keep]
  n = int(x.size)
  if n < 3:
    return math.nan, n
  dx, dy = x - x.mean(), y - y.mean()
  denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
  return (float(dx @ dy) / denom if denom > 0 else math.nan), n


def dh_pairs(run: Run):
  """`(steps, predicted ΔH, measured ΔH)` at steps logging both, or None.

  The prediction (`entropy/dH_pred_tabular/total`) is first order at unit logit step
  size (`entropy.controllers.track_entropy_dynamics`), while the measurement
  is the actual change after the optimizer step, so their scales differ by
  roughly the effective logit step; compare them by correlation.
  """
  return _pairs(run, PRED_DH_KEY)


def _pairs(run: Run, key: str):
  p, m = run.get(key), run.get(MEASURED_DH_KEY)
  if p is None or m is None:
    return None
  return align(p, m)


def exact_dh_pairs(run: Run):
  """`(steps, exact first-order ΔH, measured ΔH)`, or None.

  Same scale as the measurement: `⟨∂H/∂θ, θ_after − θ_before⟩`, so the
  residual is the second-order (and float) remainder.
  """
  return _pairs(run, EXACT_DH_KEY)


def trapezoid_dh_pairs(run: Run):
  """`(steps, trapezoid ΔH, measured ΔH)`, or None: ½⟨∇H(θ) + ∇H(θ′), Δθ⟩,
  exact to second order (runs logged before it existed have none)."""
  return _pairs(run, TRAPEZOID_DH_KEY)


def exact_dh_sources(run: Run) -> dict[str, "Series"]:
  """`entropy/dH_pred_exact/<source>` series by source (no total/remainder)."""
  out = {}
  for key in run.keys:
    name = key[len(EXACT_DH_PREFIX):]
    if key.startswith(EXACT_DH_PREFIX) and name not in ("total",
                                                        "unattributed"):
      series = run.get(key)
      if series is not None:
        out[name] = series
  return out
