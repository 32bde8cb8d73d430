"""Rows, the markdown claims table and the PNG plots of the theory lab.

Plots use matplotlib's Agg backend through `matplotlib.figure.Figure`, so
importing this module never touches a display or pyplot's global state.
"""

import os
from typing import NamedTuple

import numpy as np
from matplotlib.backends import backend_agg
from matplotlib import figure as mpl_figure


class Row(NamedTuple):
  """One checked claim: measured value next to its closed form."""
  experiment: str  # e.g. "T1"
  claim: str
  measured: str
  expected: str
  holds: bool


def fmt(x, digits=3):
  """Compact float formatting for the table."""
  x = float(x)
  if x == 0.0 or np.isnan(x) or np.isinf(x):
    return f"{x:g}"
  if 1e-3 <= abs(x) < 1e4:
    return f"{x:.{digits}g}"
  return f"{x:.{max(digits - 1, 1)}e}"


def markdown_table(rows):
  """Markdown table: # | claim | measured | closed form / expected | holds?."""
  lines = [
      "| # | claim | measured | closed form / expected | holds? |",
      "|---|---|---|---|---|",
  ]
  for row in rows:
    cells = [row.experiment, row.claim, row.measured, row.expected,
             "yes" if row.holds else "**no**"]
    lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells)
                 + " |")
  return "\n".join(lines) + "\n"


def _new_figure(ncols=1, width=5.0, height=3.8):
  fig = mpl_figure.Figure(figsize=(width * ncols, height))
  backend_agg.FigureCanvasAgg(fig)
  axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
  return fig, axes


def _save(fig, workdir, name):
  path = os.path.join(workdir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path


def plot_t1(curves, workdir):
  """Log-log error of the first/second-order entropy-change predictions."""
  fig, (ax,) = _new_figure()
  eta_e = curves["eta"]
  for key, label, color in (("err1", "first order", "C0"),
                            ("err2", "second order", "C1")):
    err_ne = curves[key]
    ax.loglog(eta_e, err_ne.T, color=color, alpha=0.2, lw=0.8)
    ax.loglog(eta_e, np.median(err_ne, axis=0), color=color, lw=2,
              label=f"{label} (slope {curves[key + '_slope']:.2f})")
  for key, power, ls in (("err1", 2, ":"), ("err2", 3, "--")):
    ref = np.median(curves[key][:, -1])
    ax.loglog(eta_e, ref * (eta_e / eta_e[-1]) ** power, "k", ls=ls, lw=0.8,
              label=f"η^{power}")
  ax.set_xlabel("η (δ = η·d)")
  ax.set_ylabel("|ΔH − prediction|")
  ax.set_title("T1: error of the entropy-change law")
  ax.legend(fontsize=8)
  return _save(fig, workdir, "t1_error_orders.png")


def plot_t2(curves, workdir):
  """Predicted vs exact entropy change for PG and natural PG."""
  fig, axes = _new_figure(ncols=2)
  for ax, name in zip(axes, ("pg", "npg")):
    exact, pred = curves[name + "_exact"], curves[name + "_pred"]
    lim = np.max(np.abs(np.concatenate([exact, pred]))) * 1.05
    ax.plot([-lim, lim], [-lim, lim], "k", lw=0.8)
    ax.scatter(exact, pred, s=10)
    ax.set_xlabel("exact ΔH")
    ax.set_ylabel("first-order prediction")
    ax.set_title(f"T2: {name.upper()} (η = {curves['eta']:g})")
  return _save(fig, workdir, "t2_pg_npg.png")


def plot_t3(curves, workdir):
  """ER suboptimality gap vs α with its bounds; bandit and MDP."""
  fig, axes = _new_figure(ncols=2)
  ax = axes[0]
  alpha = curves["alpha"]
  ax.plot(alpha, curves["gap_measured"], "o", label="measured (trained)")
  ax.plot(alpha, curves["gap_closed"], "-",
          label="r_max − E_π* r, π* = softmax(r/α)")
  ax.plot(alpha, curves["gap_bound"], "--", label="α H(π*)")
  ax.plot(alpha, curves["gap_logv"], ":", label="α log|A|")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("α")
  ax.set_ylabel("gap (seed mean)")
  ax.set_title("T3: ER bias, bandit")
  ax.legend(fontsize=8)
  ax = axes[1]
  alpha = curves["mdp_alpha"]
  ax.plot(alpha, curves["mdp_gap_measured"], "o", label="measured (trained)")
  ax.plot(alpha, curves["mdp_gap_closed"], "-", label="J* − J(π*_soft)")
  ax.plot(alpha, curves["mdp_gap_bound"], "--", label="α E[Σ_t H]")
  ax.plot(alpha, curves["mdp_gap_tlogv"], ":", label="α T log|A|")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("α")
  ax.set_title("T3: ER bias, finite-horizon MDP")
  ax.legend(fontsize=8)
  return _save(fig, workdir, "t3_er_gap.png")


def plot_t4(curves, workdir):
  """Gap and per-step bias norm over training, per method."""
  fig, axes = _new_figure(ncols=2)
  for name, gap_t in curves["gap"].items():
    axes[0].loglog(np.arange(1, gap_t.shape[0] + 1), gap_t, label=name)
    axes[1].loglog(np.arange(1, gap_t.shape[0] + 1), curves["bias"][name],
                   label=name)
  axes[0].set_xlabel("outer step")
  axes[0].set_ylabel("r_max − E_π r (seed mean)")
  axes[0].set_title("T4: constant vs annealed control")
  axes[1].set_xlabel("outer step")
  axes[1].set_ylabel("‖b_t‖ (seed mean)")
  axes[1].set_title("T4: per-step bias, dense vs sparse")
  axes[0].legend(fontsize=7)
  return _save(fig, workdir, "t4_annealing.png")


def plot_t5(curves, workdir):
  """Clip-Cov fixed-point shift vs ρ, and the annealed trajectory."""
  fig, axes = _new_figure(ncols=2)
  ax = axes[0]
  ax.loglog(curves["rho"], curves["shift_measured"], "o", label="measured")
  ax.loglog(curves["rho"], curves["shift_closed"], "-",
            label="TV(softmax((1−ρ)r/λ), softmax(r/λ))")
  ax.set_xlabel("constant selection fraction ρ")
  ax.set_ylabel("TV to the unbiased fixed point")
  ax.set_title("T5: Clip-Cov fixed-point shift")
  ax.legend(fontsize=8)
  ax = axes[1]
  for name, tv_t in curves["trajectory"].items():
    ax.loglog(np.arange(1, tv_t.shape[0] + 1), tv_t, label=name)
  ax.set_xlabel("outer step")
  ax.set_ylabel("TV to softmax(r/λ)")
  ax.set_title("T5: constant vs annealed selection")
  ax.legend(fontsize=7)
  return _save(fig, workdir, "t5_fixed_point.png")


PLOTTERS = {"T1": plot_t1, "T2": plot_t2, "T3": plot_t3, "T4": plot_t4,
            "T5": plot_t5}
