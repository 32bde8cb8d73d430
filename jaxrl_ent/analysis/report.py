"""Per-run summary numbers and the markdown table comparing runs."""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from jaxrl_ent.analysis import entropy_law
from jaxrl_ent.analysis import runs as runs_lib
from jaxrl_ent.analysis import stats

FIT_SOURCES = ("train", "val")


@dataclasses.dataclass(frozen=True)
class RunSummary:
  """The numbers one table row shows (NaN where the run lacks the metric).

  Attributes:
    name, method: the run's label and entropy method (with annealing).
    steps: last logged step.
    final_acc, best_acc, best_acc_step: `val/greedy_acc` at the last eval,
      its maximum over evals, and the step of that maximum.
    pass_key, final_pass: the `val/pass_at_<k>` key and its last value.
    final_entropy: last logged rollout entropy (`runs.ENTROPY_KEYS`).
    fit: entropy-law fit on `fit_source` pairs (the table's columns).
    fit_source: "train" (per-step training reward) or "val" (eval accuracy).
    fits: both fits, keyed by source ("train", "val"), for `fits_table`.
    fit_smooth: moving-average window applied to train pairs before fitting.
    dh_corr, dh_n: Pearson correlation of predicted and measured ΔH and the
      number of steps it uses.
    mean_touched: mean share of tokens the control changed per step.
    exact_corr, exact_n: the same for the exact first-order prediction
      (`entropy/dH_pred_exact/total`).
    trapezoid_corr, trapezoid_n: the same for the second-order (trapezoid)
      prediction (`entropy/dH_pred_trapezoid/total`).
  """
  name: str
  method: str
  steps: int
  final_acc: float
  best_acc: float
  best_acc_step: int
  pass_key: str
  final_pass: float
  final_entropy: float
  fit: entropy_law.EntropyLawFit
  fit_source: str
  fit_smooth: int
  fits: dict
  dh_corr: float
  dh_n: int
  mean_touched: float
  exact_corr: float = math.nan
  exact_n: int = 0
  trapezoid_corr: float = math.nan
  trapezoid_n: int = 0


def fit_run(run: runs_lib.Run, source: str = "train",
            smooth: int = 1) -> entropy_law.EntropyLawFit:
  """Fits the entropy–performance law to one run.

  Args:
    run: a loaded run.
    source: "train": per-step `critic/score/mean` against the pre-update
      rollout entropy (many points, noisy; the default because a run has
      one per step but only a handful of evals); "val": `val/greedy_acc` at
      eval steps against the entropy of the evaluated policy (Cui et al.'s
      pairing; see `runs.eval_pairs`).
    smooth: trailing moving-average window for "train" pairs (1 = raw).

  Returns:
    `EntropyLawFit`; a NaN fit whose `reason` names the missing metric when
    the run lacks the needed series.

  Raises:
    ValueError: unknown `source`.
  """
  if source not in FIT_SOURCES:
    raise ValueError(f"fit source {source!r}; allowed: {FIT_SOURCES}")
  if source == "train":
    pairs = runs_lib.train_pairs(run, smooth=smooth)
    missing = f"{runs_lib.TRAIN_REWARD_KEY} or an entropy metric"
  else:
    pairs = runs_lib.eval_pairs(run)
    missing = f"{runs_lib.VAL_ACC_KEY} or an entropy metric"
  if pairs is None:
    return entropy_law.nan_fit(0, f"run {run.name!r} has no {missing}")
  _, h, r = pairs
  return entropy_law.fit_entropy_law(h, r)


def summarize_run(run: runs_lib.Run, *, fit_source: str = "train",
                  smooth: int = 1) -> RunSummary:
  """Computes one table row for `run` (see `RunSummary`)."""
  acc = run.get(runs_lib.VAL_ACC_KEY)
  acc = acc.finite() if acc is not None else None
  if acc is not None and len(acc):
    best = int(np.argmax(acc.value))
    final_acc, best_acc = float(acc.value[-1]), float(acc.value[best])
    best_step = int(acc.step[best])
  else:
    final_acc = best_acc = math.nan
    best_step = -1
  pass_key = runs_lib.pass_at_k_key(run) or ""
  final_pass = run.series(pass_key).last() if pass_key else math.nan
  h = runs_lib.entropy_series(run)
  dh = runs_lib.dh_pairs(run)
  dh_corr, dh_n = (runs_lib.pearson(dh[1], dh[2]) if dh is not None
                   else (math.nan, 0))
  ex = runs_lib.exact_dh_pairs(run)
  exact_corr, exact_n = (runs_lib.pearson(ex[1], ex[2]) if ex is not None
                         else (math.nan, 0))
  tr = runs_lib.trapezoid_dh_pairs(run)
  trapezoid_corr, trapezoid_n = (runs_lib.pearson(tr[1], tr[2])
                                 if tr is not None else (math.nan, 0))
  touched = runs_lib.touched_series(run)
  mean_touched = (float(np.nanmean(touched.value))
                  if touched is not None and len(touched) else math.nan)
  if fit_source not in FIT_SOURCES:
    raise ValueError(f"fit source {fit_source!r}; allowed: {FIT_SOURCES}")
  fits = {source: fit_run(run, source, smooth) for source in FIT_SOURCES}
  return RunSummary(
      name=run.name, method=run.method_label, steps=run.last_step,
      final_acc=final_acc, best_acc=best_acc, best_acc_step=best_step,
      pass_key=pass_key, final_pass=final_pass,
      final_entropy=h.last() if h is not None else math.nan,
      fit=fits[fit_source], fit_source=fit_source, fit_smooth=smooth,
      fits=fits, dh_corr=dh_corr, dh_n=dh_n,
      mean_touched=mean_touched, exact_corr=exact_corr, exact_n=exact_n,
      trapezoid_corr=trapezoid_corr, trapezoid_n=trapezoid_n)


def fmt(x, digits: int = 3) -> str:
  """Compact number for a table cell; NaN prints as an em dash."""
  x = float(x)
  if math.isnan(x):
    return "—"
  if x == 0.0 or math.isinf(x):
    return f"{x:g}"
  if 1e-3 <= abs(x) < 1e4:
    return f"{x:.{digits}g}"
  return f"{x:.{max(digits - 1, 1)}e}"


def _cell(text: str) -> str:
  return str(text).replace("|", "\\|")


def markdown_table(summaries: Sequence[RunSummary]) -> str:
  """The comparison table, one row per run, plus a line saying what was fit.

  Columns: run, method, steps, final / best greedy accuracy (step of the
  best), final pass@k, final entropy, the fit's a, b, ceiling `b − a`, R²
  and n, corr(tabular ΔH, measured ΔH), corr(exact ΔH, measured ΔH),
  corr(trapezoid ΔH, measured ΔH), mean share of tokens touched.
  """
  pass_keys = sorted({s.pass_key for s in summaries if s.pass_key})
  pass_title = pass_keys[0].replace("val/", "") if len(pass_keys) == 1 else (
      "pass@k")
  header = ["run", "method", "steps", "greedy acc final", "greedy acc best",
            f"{pass_title} final", "H final", "a", "b", "ceiling b−a", "R²",
            "fit n", "corr(pred ΔH, meas ΔH)", "corr(exact ΔH, meas ΔH)",
            "corr(trapezoid ΔH, meas ΔH)", "tokens touched"]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for s in summaries:
    best = (f"{fmt(s.best_acc)} (step {s.best_acc_step})"
            if s.best_acc_step >= 0 else "—")
    corr = f"{fmt(s.dh_corr)} (n={s.dh_n})" if s.dh_n else "—"
    exact = f"{fmt(s.exact_corr, 4)} (n={s.exact_n})" if s.exact_n else "—"
    trap = (f"{fmt(s.trapezoid_corr, 4)} (n={s.trapezoid_n})"
            if s.trapezoid_n else "—")
    final_pass = fmt(s.final_pass)
    if len(pass_keys) > 1 and s.pass_key:
      # Runs disagree on k: say which k each cell is.
      final_pass += f" (k={s.pass_key.rsplit('_', 1)[-1]})"
    cells = [s.name, s.method, str(s.steps), fmt(s.final_acc), best,
             final_pass, fmt(s.final_entropy), fmt(s.fit.a),
             fmt(s.fit.b), fmt(s.fit.ceiling), fmt(s.fit.r2), str(s.fit.n),
             corr, exact, trap, fmt(s.mean_touched)]
    lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
  out = "\n".join(lines) + "\n"
  out += "\n" + fit_caption(summaries) + "\n"
  pooled = pooled_correlations(summaries)
  if pooled:
    out += "\n" + pooled + "\n"
  notes = [f"- {s.name}: no fit ({s.fit.reason})"
           for s in summaries if not s.fit.ok]
  if notes:
    out += "\n" + "\n".join(notes) + "\n"
  return out


def pooled_correlations(summaries: Sequence[RunSummary]) -> str:
  """One line per ΔH prediction that two or more runs measured: the per-run
  correlations with the measured ΔH pooled by Fisher's z (`stats`)."""
  parts = []
  for label, r_attr, n_attr in (("tabular", "dh_corr", "dh_n"),
                                ("exact", "exact_corr", "exact_n"),
                                ("trapezoid", "trapezoid_corr",
                                 "trapezoid_n")):
    runs = [(getattr(s, r_attr), getattr(s, n_attr)) for s in summaries
            if getattr(s, n_attr) > 3 and math.isfinite(getattr(s, r_attr))]
    if len(runs) < 2:
      continue
    p = stats.fisher_z_mean(*zip(*runs))
    parts.append(f"{label} {fmt(p.r, 3)} (95 % CI {fmt(p.ci[0], 3)}–"
                 f"{fmt(p.ci[1], 3)}; {p.num_runs} runs, {p.num_pairs} steps)")
  if not parts:
    return ""
  return ("Per-run corr(predicted ΔH, measured ΔH) pooled by Fisher's z "
          "(weights n − 3): " + "; ".join(parts) + ".")


def fit_caption(summaries: Sequence[RunSummary]) -> str:
  """One sentence naming the (H, R) pairs the table's fit columns use."""
  sources = {(s.fit_source, s.fit_smooth) for s in summaries}
  if not sources:
    return ""
  parts = []
  for source, smooth in sorted(sources):
    if source == "train":
      what = (f"R = {runs_lib.TRAIN_REWARD_KEY} against H = rollout entropy "
              "(pre-update policy), one pair per training step")
      if smooth > 1:
        what += f", both smoothed by a {smooth}-step trailing mean"
    else:
      what = (f"R = {runs_lib.VAL_ACC_KEY} at eval steps against H = "
              "rollout entropy of the evaluated policy")
    parts.append(what)
  return ("Entropy–performance law R = −a·exp(H) + b fitted by least squares "
          "(Cui et al. 2025); ceiling = b − a = R(H=0). Pairs: "
          + "; ".join(parts) + ".")


def fits_table(summaries: Sequence[RunSummary]) -> str:
  """Both entropy-law fits of every run: a, b, ceiling, R², n, RMSE."""
  header = ["run", "pairs", "a", "b", "ceiling b−a", "R²", "n", "RMSE"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for s in summaries:
    for source, fit in s.fits.items():
      what = ("train reward / step" if source == "train" else
              "val greedy acc / eval")
      if source == "train" and s.fit_smooth > 1:
        what += f" (smoothed {s.fit_smooth})"
      cells = [s.name, what, fmt(fit.a), fmt(fit.b), fmt(fit.ceiling),
               fmt(fit.r2), str(fit.n), fmt(fit.rmse)]
      if not fit.ok:
        cells[2] = f"— ({fit.reason})"
      lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
  return "\n".join(lines) + "\n"
