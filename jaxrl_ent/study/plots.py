"""The study's figures: per-method curves (mean over seeds, band = min–max)
and the predicted-vs-measured entropy change scatter."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from jaxrl_ent.analysis import runs as runs_lib
from jaxrl_ent.study import report


def _curves(run_dirs_by_method, key):
  """method → (steps, mean, min, max) over seeds on their common steps."""
  out = {}
  for method, dirs in run_dirs_by_method.items():
    series = [runs_lib.load_run(d).get(key) for d in dirs]
    series = [(s.step, s.value) for s in series if s is not None and len(s)]
    if not series:
      continue
    common = sorted(set.intersection(*(set(s.tolist()) for s, _ in series)))
    if not common:
      continue
    vals = np.stack([np.asarray([dict(zip(s.tolist(), v))[c]
                                 for c in common]) for s, v in series])
    out[method] = (np.asarray(common), vals.mean(0), vals.min(0),
                   vals.max(0))
  return out


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
  written = []
  curves = _curves(run_dirs_by_method, runs_lib.ENTROPY_KEYS[0])
  if curves:
    path = out_dir / "entropy_curves.png"
    _line_plot(curves, "token entropy before the update (nats)",
               "Policy entropy on its rollouts (mean over seeds, band = "
               "min–max)", path)
    written.append(str(path))
  curves = _curves(run_dirs_by_method, runs_lib.VAL_ACC_KEY)
  if curves:
    path = out_dir / "accuracy_curves.png"
    _line_plot(curves, "held-out greedy accuracy",
               "Held-out greedy accuracy (mean over seeds, band = min–max)",
               path, marker="o")
    written.append(str(path))
  pts = {}
  for method, dirs in run_dirs_by_method.items():
    xs, ys = [], []
    for d in dirs:
      pairs = runs_lib.dh_pairs(runs_lib.load_run(d))
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
    ax.set_xlabel("predicted ΔH, first order, logit-space step η = 1")
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
