"""The study's figures: per-method curves (mean over seeds, band = 95 %
bootstrap interval of that mean over seeds), ΔH by source, and the
predicted-vs-measured entropy change scatter."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from jaxrl_ent.analysis import runs as runs_lib
from jaxrl_ent.study import report


def _on_common_steps(series):
  """(steps, values [runs, steps]) of `(step, value)` pairs on the steps
  every run logged, or None when there are none."""
  if not series:
    return None
  common = sorted(set.intersection(*(set(s.tolist()) for s, _ in series)))
  if not common:
    return None
  vals = np.stack([np.asarray([dict(zip(s.tolist(), v))[c] for c in common])
                   for s, v in series])
  return np.asarray(common), vals


def _curves(runs_by_method, key):
  """method → (steps, mean, lo, hi) over seeds on their common steps (lo, hi:
  `mean_band`)."""
  out = {}
  for method, runs in runs_by_method.items():
    series = [run.get(key) for run in runs]
    aligned = _on_common_steps([(s.step, s.value) for s in series
                                if s is not None and len(s)])
    if aligned is not None:
      steps, vals = aligned
      out[method] = (steps, vals.mean(0), *mean_band(vals))
  return out


def mean_band(vals, *, reps: int = 1000, size: float = 0.95, seed: int = 0):
  """Per column of `vals` [seeds, steps]: the percentile bootstrap interval
  of the mean over seeds (seeds resampled with replacement, one draw of
  indices for every step, so the band is that of whole curves)."""
  vals = np.asarray(vals, float)
  if vals.shape[0] < 2:
    return vals[0], vals[0]
  idx = np.random.default_rng(seed).integers(
      0, vals.shape[0], size=(reps, vals.shape[0]))
  means = vals[idx].mean(axis=1)  # [reps, steps]
  alpha = 100 * (1 - size) / 2
  lo, hi = np.percentile(means, [alpha, 100 - alpha], axis=0)
  return lo, hi


def _line_plot(curves, ylabel, title, path, *, marker=None):
  fig, ax = plt.subplots(figsize=(8, 4.8))
  cmap = plt.get_cmap("tab20")
  for i, (method, (s, mean, lo, hi)) in enumerate(curves.items()):
    color = cmap(i % 20)
    ax.plot(s, mean, label=method, color=color, marker=marker, lw=1.4,
            ms=3)
    ax.fill_between(s, lo, hi, color=color, alpha=0.12, lw=0)
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def write_plots(run_dirs_by_method: dict[str, list], out_dir) -> list[str]:
  """Writes the PNGs into `out_dir`; returns their paths."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  # Each run's metrics.jsonl is read once, for every figure.
  runs_by_method = {m: [runs_lib.load_run(d) for d in dirs]
                    for m, dirs in run_dirs_by_method.items()}
  written = []
  curves = _curves(runs_by_method, runs_lib.ENTROPY_KEYS[0])
  if curves:
    path = out_dir / "entropy_curves.png"
    _line_plot(curves, "token entropy before the update (nats)",
               "Policy entropy on its rollouts (mean over seeds, band = "
               "95 % CI)", path)
    written.append(str(path))
  curves = _curves(runs_by_method, runs_lib.VAL_ACC_KEY)
  if curves:
    path = out_dir / "accuracy_curves.png"
    _line_plot(curves, "held-out greedy accuracy",
               "Held-out greedy accuracy (mean over seeds, band = 95 % CI)",
               path, marker="o")
    written.append(str(path))
  for k in (16, 4):
    curves = _curves(runs_by_method, f"val/pass_at_{k}")
    if curves:
      path = out_dir / f"pass_at_{k}_curves.png"
      _line_plot(curves, f"held-out pass@{k}",
                 f"Held-out pass@{k}, unbiased estimator (mean over seeds, "
                 "band = 95 % CI)", path, marker="o")
      written.append(str(path))
      break
  path = _sources_plot(runs_by_method, out_dir)
  if path:
    written.append(path)
  pts = {}
  for method, runs in runs_by_method.items():
    xs, ys = [], []
    for run in runs:
      pairs = runs_lib.exact_dh_pairs(run)
      if pairs is not None:
        xs.append(pairs[1])
        ys.append(pairs[2])
    if xs and sum(map(len, xs)):
      pts[method] = (np.concatenate(xs), np.concatenate(ys))
  if pts:
    fig, ax = plt.subplots(figsize=(6.4, 5))
    cmap = plt.get_cmap("tab20")
    for i, (method, (x, y)) in enumerate(pts.items()):
      ax.scatter(x, y, s=5, alpha=0.5, color=cmap(i % 20), label=method)
    allx = np.concatenate([x for x, _ in pts.values()])
    ally = np.concatenate([y for _, y in pts.values()])
    ax.set_title(f"Entropy change per step: predicted vs measured "
                 f"(pooled r = {report.pearson(allx, ally):.2f})",
                 fontsize=9)
    ax.set_xlabel("exact first-order ΔH ⟨∂H/∂θ, Δθ⟩ (nats)")
    ax.set_ylabel("measured ΔH on the batch (nats)")
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(0, color="k", lw=0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, markerscale=2)
    fig.tight_layout()
    path = out_dir / "dH_predicted_vs_measured.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(str(path))
  return written


def _sources_plot(runs_by_method, out_dir):
  """Cumulative exact ΔH by source over the accounted steps, one panel per
  method (mean over seeds), beside the cumulative measured ΔH."""
  panels = {}
  for method, runs in runs_by_method.items():
    sums = {}
    for run in runs:
      srcs = dict(runs_lib.exact_dh_sources(run))
      m = run.get(runs_lib.MEASURED_DH_KEY)
      if m is not None:
        srcs["measured"] = m
      for name, series in srcs.items():
        sums.setdefault(name, []).append((series.step,
                                          np.cumsum(series.value)))
    curves = {}
    for name, series in sums.items():
      aligned = _on_common_steps(series)
      if aligned is not None:
        curves[name] = (aligned[0], aligned[1].mean(0))
    if len(curves) > 1:
      panels[method] = curves
  if not panels:
    return None
  n = len(panels)
  cols = min(4, n)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows),
                           squeeze=False, sharey=True)
  names = sorted({k for c in panels.values() for k in c} - {"measured"})
  cmap = plt.get_cmap("tab10")
  for ax, (method, curves) in zip(axes.ravel(), panels.items()):
    for i, name in enumerate(names):
      if name in curves:
        ax.plot(*curves[name], label=name, color=cmap(i % 10), lw=1.2)
    if "measured" in curves:
      ax.plot(*curves["measured"], label="measured", color="k", lw=1.2,
              ls="--")
    ax.axhline(0, color="k", lw=0.4)
    ax.set_title(method, fontsize=8)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
  for ax in axes.ravel()[n:]:
    ax.axis("off")
  axes[0, 0].legend(fontsize=6)
  fig.suptitle("Entropy change by source, summed over the accounted steps "
               "(exact first order; mean over seeds)", fontsize=9)
  fig.tight_layout()
  path = pathlib.Path(out_dir) / "dH_by_source.png"
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return str(path)
