"""PNG plots comparing runs: reward/entropy curves, entropy law, ΔH, covariance.

One file per plot kind, every run overlaid in its own colour with a legend.
Plots use matplotlib's Agg canvas through `matplotlib.figure.Figure` (no
pyplot), so importing this module selects no backend and touches no global
state. A plot whose metrics no run logged is skipped: the `plot_*`
functions raise `MissingMetricsError` naming the metrics, and `write_plots`
records the skip and carries on.

Per-step curves are drawn raw (faint) and as a trailing moving average
(solid); `smooth=None` picks a window of `last_step // 40` steps.
"""

import dataclasses
import io
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
from matplotlib import figure as mpl_figure
from matplotlib.backends import backend_agg

from jaxrl_ent.analysis import entropy_law
from jaxrl_ent.analysis import report
from jaxrl_ent.analysis import runs as runs_lib

# Plot kind -> file name written by `write_plots`.
PLOT_FILES = {
    "reward_entropy": "reward_entropy.png",
    "entropy_law": "entropy_law.png",
    "entropy_change": "entropy_change.png",
    "covariance": "covariance.png",
    "tokens_touched": "tokens_touched.png",
    "entropy_dynamics": "entropy_dynamics.png",
}
_DPI = 100


class MissingMetricsError(ValueError):
  """No run has the metrics a plot needs."""


def _colour(i: int) -> str:
  return f"C{i % 10}"


def _auto_smooth(runs: Sequence[runs_lib.Run], smooth: int | None) -> int:
  if smooth is not None:
    return max(int(smooth), 1)
  return max(1, max((r.last_step for r in runs), default=0) // 40)


def _new_figure(nrows: int, ncols: int, width: float = 5.2,
                height: float = 3.6):
  fig = mpl_figure.Figure(figsize=(width * ncols, height * nrows))
  backend_agg.FigureCanvasAgg(fig)
  axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
  return fig, axes


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=_DPI)
  return path


def _curve(ax, series: runs_lib.Series, colour: str, label: str,
           smooth: int, **kw):
  """Raw values faint, their trailing mean solid (raw only if smooth == 1)."""
  s = series.finite()
  if smooth > 1:
    ax.plot(s.step, s.value, color=colour, alpha=0.25, lw=0.7)
    ax.plot(s.step, runs_lib.moving_average(s.value, smooth), color=colour,
            lw=1.6, label=label, **kw)
  else:
    ax.plot(s.step, s.value, color=colour, lw=1.4, label=label, **kw)


def _require(runs, keys_fn: Callable[[runs_lib.Run], bool], what: str):
  """(i, run) for the runs that logged `what`; i (the run's position among
  all runs) picks its colour, so a run keeps its colour on every panel."""
  have = [(i, r) for i, r in enumerate(runs) if keys_fn(r)]
  if not have:
    raise MissingMetricsError(f"no run logged {what} "
                              f"(runs: {', '.join(r.name for r in runs)})")
  return have


# ---------------------------------------------------------------------------
# Panels: each draws on one axis.


def draw_reward(ax, runs, smooth: int):
  """Training reward per step, greedy val accuracy at eval steps (markers)."""
  have = _require(runs, lambda r: r.has(runs_lib.TRAIN_REWARD_KEY)
                  or r.has(runs_lib.VAL_ACC_KEY),
                  f"{runs_lib.TRAIN_REWARD_KEY} or {runs_lib.VAL_ACC_KEY}")
  for i, run in have:
    c = _colour(i)
    reward = run.get(runs_lib.TRAIN_REWARD_KEY)
    if reward is not None:
      _curve(ax, reward, c, f"{run.name}: train reward", smooth)
    acc = run.get(runs_lib.VAL_ACC_KEY)
    if acc is not None:
      ax.plot(acc.step, acc.value, color=c, ls="--", marker="o", ms=4,
              lw=1.0, label=f"{run.name}: val greedy acc (evals)")
  ax.set_xlabel("step")
  ax.set_ylabel("reward / accuracy")
  ax.set_title("reward (solid) and held-out accuracy (markers)")
  ax.legend(fontsize=7)


def draw_entropy(ax, runs, smooth: int):
  """Rollout entropy per step, with the eval steps marked."""
  have = _require(runs, lambda r: runs_lib.entropy_series(r) is not None,
                  " or ".join(runs_lib.ENTROPY_KEYS))
  for i, run in have:
    c = _colour(i)
    h = runs_lib.entropy_series(run)
    _curve(ax, h, c, f"{run.name} ({run.method_label})", smooth)
    acc = run.get(runs_lib.VAL_ACC_KEY)
    if acc is not None:
      he = runs_lib.entropy_at_evals(run, acc.step)
      ok = np.isfinite(he)
      ax.plot(acc.step[ok], he[ok], ls="none", marker="o", ms=4, color=c,
              mfc="none")
  ax.set_xlabel("step")
  ax.set_ylabel("mean token entropy (nats)")
  ax.set_title("rollout entropy (o = eval steps)")
  ax.legend(fontsize=7)


def _fit_label(fit: entropy_law.EntropyLawFit) -> str:
  if not fit.ok:
    return "no fit"
  return (f"a={report.fmt(fit.a)}, b={report.fmt(fit.b)}, "
          f"ceil={report.fmt(fit.ceiling)}, R²={report.fmt(fit.r2, 2)}")


def draw_entropy_law(ax, runs, smooth: int = 1):
  """(H, R) points and fitted `R = −a·exp(H) + b` curves, per run.

  Training-reward pairs are dots with a solid curve; eval-accuracy pairs
  are squares with a dashed curve. The x axis is logarithmic when every
  entropy is positive, as in Cui et al.'s figure.
  """
  have = _require(runs, lambda r: runs_lib.train_pairs(r) is not None
                  or runs_lib.eval_pairs(r) is not None,
                  "entropy with critic/score/mean or val/greedy_acc")
  all_h = []
  for i, run in have:
    c = _colour(i)
    for source, pairs, marker, ls in (
        ("train", runs_lib.train_pairs(run, smooth), ".", "-"),
        ("val", runs_lib.eval_pairs(run), "s", "--")):
      if pairs is None:
        continue
      _, h, r = pairs
      ok = np.isfinite(h) & np.isfinite(r)
      if not ok.any():
        continue
      h, r = h[ok], r[ok]
      all_h.append(h)
      ax.plot(h, r, ls="none", marker=marker, color=c,
              ms=3 if marker == "." else 5,
              alpha=0.35 if marker == "." else 0.9,
              mfc=c if marker == "." else "none")
      fit = entropy_law.fit_entropy_law(h, r)
      label = f"{run.name} {source}: {_fit_label(fit)}"
      if fit.ok:
        grid = np.linspace(h.min(), h.max(), 100)
        ax.plot(grid, fit.predict(grid), color=c, ls=ls, lw=1.5, label=label)
      else:
        ax.plot([], [], color=c, ls=ls, label=f"{label} ({fit.reason})")
  if all_h and np.min(np.concatenate(all_h)) > 0:
    ax.set_xscale("log")
  ax.set_xlabel("entropy H (nats)")
  ax.set_ylabel("R")
  ax.set_title("entropy–performance law R = −a·exp(H) + b")
  ax.legend(fontsize=6)


def _scale_through_origin(p, m) -> float:
  # The least-squares k in m ≈ k·p: puts the unit-step prediction on the
  # measured scale so their time courses can be compared on one axis.
  denom = float(p @ p)
  return float(p @ m) / denom if denom > 0 else math.nan


def draw_dh_scatter(ax, runs):
  """Predicted (first order, unit logit step) against measured ΔH."""
  have = _require(runs, lambda r: runs_lib.dh_pairs(r) is not None,
                  f"{runs_lib.PRED_DH_KEY} and {runs_lib.MEASURED_DH_KEY}")
  for i, run in have:
    _, p, m = runs_lib.dh_pairs(run)
    corr, n = runs_lib.pearson(p, m)
    ax.plot(p, m, ls="none", marker=".", ms=4, alpha=0.6, color=_colour(i),
            label=f"{run.name}: r={report.fmt(corr, 2)} (n={n})")
  ax.axhline(0, color="k", lw=0.5)
  ax.axvline(0, color="k", lw=0.5)
  ax.set_xlabel("predicted ΔH (unit logit step)")
  ax.set_ylabel("measured ΔH")
  ax.set_title("predicted vs measured entropy change")
  ax.legend(fontsize=7)


def draw_dh_time(ax, runs, smooth: int):
  """Measured ΔH per step and the prediction rescaled onto it (dashed)."""
  have = _require(runs, lambda r: runs_lib.dh_pairs(r) is not None,
                  f"{runs_lib.PRED_DH_KEY} and {runs_lib.MEASURED_DH_KEY}")
  for i, run in have:
    steps, p, m = runs_lib.dh_pairs(run)
    ok = np.isfinite(p) & np.isfinite(m)
    steps, p, m = steps[ok], p[ok], m[ok]
    c = _colour(i)
    _curve(ax, runs_lib.Series("measured", steps, m), c,
           f"{run.name}: measured", smooth)
    k = _scale_through_origin(p, m)
    if math.isfinite(k):
      ax.plot(steps, runs_lib.moving_average(k * p, smooth), color=c,
              ls="--", lw=1.2, label=f"{run.name}: predicted × {k:.3g}")
  ax.axhline(0, color="k", lw=0.5)
  ax.set_xlabel("step")
  ax.set_ylabel("ΔH per step (nats)")
  ax.set_title("entropy change per step")
  ax.legend(fontsize=7)


def _dh_scatter(ax, runs, pairs_fn, what, xlabel, title):
  have = _require(runs, lambda r: pairs_fn(r) is not None, what)
  lo, hi = math.inf, -math.inf
  for i, run in have:
    _, p, m = pairs_fn(run)
    corr, n = runs_lib.pearson(p, m)
    ax.plot(p, m, ls="none", marker=".", ms=4, alpha=0.6, color=_colour(i),
            label=f"{run.name}: r={report.fmt(corr, 3)} (n={n})")
    ok = np.isfinite(p) & np.isfinite(m)
    if ok.any():
      lo = min(lo, float(np.min(p[ok])), float(np.min(m[ok])))
      hi = max(hi, float(np.max(p[ok])), float(np.max(m[ok])))
  if math.isfinite(lo) and pairs_fn is runs_lib.exact_dh_pairs:
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.6, ls=":", label="y = x")
  ax.axhline(0, color="k", lw=0.5)
  ax.axvline(0, color="k", lw=0.5)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("measured ΔH")
  ax.set_title(title)
  ax.legend(fontsize=7)


def draw_exact_dh_scatter(ax, runs):
  """Exact first-order ΔH of the realised step against measured (y = x)."""
  _dh_scatter(ax, runs, runs_lib.exact_dh_pairs,
              f"{runs_lib.EXACT_DH_KEY} and {runs_lib.MEASURED_DH_KEY}",
              "exact first-order ΔH ⟨∂H/∂θ, Δθ⟩", "exact vs measured ΔH")


def draw_tabular_dh_scatter(ax, runs):
  """The tabular prediction (unit logit step) against measured, beside it."""
  _dh_scatter(ax, runs, runs_lib.dh_pairs,
              f"{runs_lib.PRED_DH_KEY} and {runs_lib.MEASURED_DH_KEY}",
              "tabular ΔH (unit logit step)", "tabular vs measured ΔH")


def draw_exact_dh_time(ax, runs, smooth: int):
  """Measured, exact (first order and trapezoid) and rescaled tabular ΔH
  per step."""
  have = _require(runs, lambda r: runs_lib.exact_dh_pairs(r) is not None,
                  f"{runs_lib.EXACT_DH_KEY} and {runs_lib.MEASURED_DH_KEY}")
  for i, run in have:
    steps, p, m = runs_lib.exact_dh_pairs(run)
    c = _colour(i)
    _curve(ax, runs_lib.Series("measured", steps, m), c,
           f"{run.name}: measured", smooth)
    ax.plot(steps, runs_lib.moving_average(p, smooth), color=c, ls="--",
            lw=1.2, label=f"{run.name}: exact")
    trap = runs_lib.trapezoid_dh_pairs(run)
    if trap is not None:
      ax.plot(trap[0], runs_lib.moving_average(trap[1], smooth), color=c,
              ls="-.", lw=1.0, label=f"{run.name}: trapezoid")
    tab = runs_lib.dh_pairs(run)
    if tab is not None:
      k = _scale_through_origin(tab[1], tab[2])
      if math.isfinite(k):
        ax.plot(tab[0], runs_lib.moving_average(k * tab[1], smooth),
                color=c, ls=":", lw=1.0,
                label=f"{run.name}: tabular × {k:.3g}")
  ax.axhline(0, color="k", lw=0.5)
  ax.set_xlabel("step")
  ax.set_ylabel("ΔH per step (nats)")
  ax.set_title("entropy change per step")
  ax.legend(fontsize=7)


def draw_dh_sources(ax, runs, smooth: int):
  """Exact ΔH by source over the run (one line per source; first run
  with sources, the others dashed)."""
  have = _require(runs, lambda r: bool(runs_lib.exact_dh_sources(r)),
                  f"{runs_lib.EXACT_DH_PREFIX}<source>")
  styles = ["-", "--", ":", "-."]
  for j, (_, run) in enumerate(have):
    for i, (name, series) in enumerate(runs_lib.exact_dh_sources(run)
                                       .items()):
      ax.plot(series.step, runs_lib.moving_average(series.value, smooth),
              color=_colour(i), ls=styles[j % len(styles)], lw=1.2,
              label=f"{run.name}: {name}" if len(have) > 1 else name)
  ax.axhline(0, color="k", lw=0.5)
  ax.set_xlabel("step")
  ax.set_ylabel("exact first-order ΔH (nats)")
  ax.set_title("ΔH by source (through the optimizer)")
  ax.legend(fontsize=7)


def plot_entropy_dynamics(runs, path: str, *,
                          smooth: int | None = None) -> str:
  """Exact vs measured, tabular vs measured, over time, by source."""
  w = _auto_smooth(runs, smooth)
  fig, axes = _new_figure(2, 2)
  axes = np.asarray(axes).ravel()
  draw_exact_dh_scatter(axes[0], runs)
  try:
    draw_tabular_dh_scatter(axes[1], runs)
  except MissingMetricsError as e:
    axes[1].set_title(f"no tabular prediction ({e})", fontsize=7)
  draw_exact_dh_time(axes[2], runs, w)
  try:
    draw_dh_sources(axes[3], runs, w)
  except MissingMetricsError as e:
    axes[3].set_title(f"no source split ({e})", fontsize=7)
  return _save(fig, path)


def draw_covariance(ax, runs, smooth: int):
  """Cui et al.'s batch covariance cov(log π, A) per step."""
  have = _require(runs, lambda r: r.has(runs_lib.COVARIANCE_KEY),
                  runs_lib.COVARIANCE_KEY)
  for i, run in have:
    _curve(ax, run.series(runs_lib.COVARIANCE_KEY), _colour(i), run.name,
           smooth)
  ax.axhline(0, color="k", lw=0.5)
  ax.set_xlabel("step")
  ax.set_ylabel("mean_i (log π_i − mean)(A_i − mean)")
  ax.set_title("covariance of log-prob and advantage")
  ax.legend(fontsize=7)


def draw_touched(ax, runs):
  """Share of valid tokens the entropy control changed, per step."""
  have = _require(runs, lambda r: runs_lib.touched_series(r) is not None,
                  "a controller fraction (entropy/<stage>/frac_selected, "
                  "frac_kept or a bonus coefficient)")
  for i, run in have:
    s = runs_lib.touched_series(run)
    ax.plot(s.step, s.value, color=_colour(i), lw=1.2,
            label=f"{run.name} ({run.method_label}): mean "
            f"{report.fmt(np.nanmean(s.value))}")
  # Sparse controls touch ~1e-3 of tokens and dense ones all of them; a
  # symlog axis shows both, and 0 (method "none").
  ax.set_yscale("symlog", linthresh=1e-4)
  ax.set_ylim(-1e-5, 1.5)
  ax.set_xlabel("step")
  ax.set_ylabel("fraction of valid tokens")
  ax.set_title("tokens touched by the entropy control")
  ax.legend(fontsize=7)


# ---------------------------------------------------------------------------
# One file per plot kind.


def plot_reward_entropy(runs, path: str, *, smooth: int | None = None) -> str:
  """Reward/accuracy and entropy against step, side by side."""
  w = _auto_smooth(runs, smooth)
  fig, (ax1, ax2) = _new_figure(1, 2)
  draw_reward(ax1, runs, w)
  draw_entropy(ax2, runs, w)
  return _save(fig, path)


def plot_entropy_law(runs, path: str, *, fit_smooth: int = 1) -> str:
  """The entropy-law fits (training and eval pairs) of every run."""
  fig, (ax,) = _new_figure(1, 1, width=6.5, height=4.5)
  draw_entropy_law(ax, runs, fit_smooth)
  return _save(fig, path)


def plot_entropy_change(runs, path: str, *, smooth: int | None = None) -> str:
  """Predicted against measured ΔH: scatter and time course."""
  w = _auto_smooth(runs, smooth)
  fig, (ax1, ax2) = _new_figure(1, 2)
  draw_dh_scatter(ax1, runs)
  draw_dh_time(ax2, runs, w)
  return _save(fig, path)


def plot_covariance(runs, path: str, *, smooth: int | None = None) -> str:
  """`entropy/covariance` against step."""
  fig, (ax,) = _new_figure(1, 1)
  draw_covariance(ax, runs, _auto_smooth(runs, smooth))
  return _save(fig, path)


def plot_tokens_touched(runs, path: str) -> str:
  """Fraction of tokens touched by the control against step."""
  fig, (ax,) = _new_figure(1, 1)
  draw_touched(ax, runs)
  return _save(fig, path)


def plot_overview(runs, path: str, *, smooth: int | None = None,
                  fit_smooth: int = 1, dpi: int = 80,
                  palette: bool = True) -> str:
  """A 2×3 summary figure (the README's): every panel that has data.

  Panels: reward/accuracy, entropy, entropy law, predicted vs measured ΔH,
  ΔH over time, covariance. Panels without data are left blank with a note.
  With `palette`, the PNG is re-encoded with a 256-colour palette (about a
  third of the size, so it can live in docs/ without bloating the repo).
  """
  w = _auto_smooth(runs, smooth)
  fig, axes = _new_figure(2, 3, width=4.6, height=3.4)
  panels = [lambda ax: draw_reward(ax, runs, w),
            lambda ax: draw_entropy(ax, runs, w),
            lambda ax: draw_entropy_law(ax, runs, fit_smooth),
            lambda ax: draw_dh_scatter(ax, runs),
            lambda ax: draw_dh_time(ax, runs, w),
            lambda ax: draw_covariance(ax, runs, w)]
  for ax, draw in zip(axes, panels):
    try:
      draw(ax)
    except MissingMetricsError as e:
      ax.text(0.5, 0.5, str(e), ha="center", va="center", wrap=True,
              fontsize=7, transform=ax.transAxes)
      ax.set_axis_off()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  if not palette:
    fig.savefig(path, dpi=dpi)
    return path
  buf = io.BytesIO()
  fig.savefig(buf, dpi=dpi)
  buf.seek(0)
  # Pillow is a matplotlib dependency, so this import cannot be missing.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(buf) as im:
    im.convert("RGB").quantize(colors=256).save(path, optimize=True)
  return path


@dataclasses.dataclass(frozen=True)
class PlotResult:
  """What `write_plots` did: kind -> path written, kind -> why skipped."""
  written: dict
  skipped: dict


def write_plots(runs: Sequence[runs_lib.Run], out_dir: str, *,
                smooth: int | None = None, fit_smooth: int = 1,
                log: Callable[[str], None] | None = None) -> PlotResult:
  """Writes every plot kind in `PLOT_FILES` that has data into `out_dir`.

  Args:
    runs: loaded runs, overlaid in every plot.
    out_dir: output directory (created).
    smooth: moving-average window for per-step curves (None: automatic).
    fit_smooth: window applied to training pairs in the entropy-law plot.
    log: called with one line per plot written or skipped.

  Returns:
    `PlotResult`.
  """
  if not runs:
    raise ValueError("write_plots needs at least one run")
  os.makedirs(out_dir, exist_ok=True)
  makers = {
      "reward_entropy": lambda p: plot_reward_entropy(runs, p, smooth=smooth),
      "entropy_law": lambda p: plot_entropy_law(runs, p,
                                                fit_smooth=fit_smooth),
      "entropy_change": lambda p: plot_entropy_change(runs, p, smooth=smooth),
      "covariance": lambda p: plot_covariance(runs, p, smooth=smooth),
      "tokens_touched": lambda p: plot_tokens_touched(runs, p),
      "entropy_dynamics": lambda p: plot_entropy_dynamics(runs, p,
                                                          smooth=smooth),
  }
  written, skipped = {}, {}
  for kind, make in makers.items():
    path = os.path.join(out_dir, PLOT_FILES[kind])
    try:
      written[kind] = make(path)
      if log:
        log(f"wrote {path}")
    except MissingMetricsError as e:
      skipped[kind] = str(e)
      if log:
        log(f"skipped {kind} plot: {e}")
  return PlotResult(written=written, skipped=skipped)
