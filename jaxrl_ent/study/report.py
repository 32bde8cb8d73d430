"""Turns a study's finished runs into its table, claim checks and plots.

Per run (from `metrics.jsonl`, `summarize_run`):
  * held-out greedy accuracy and pass@1/4/16 at the last evaluation (the
    unbiased estimator from `eval.num_samples` samples per prompt),
  * final entropy: the mean of `actor/entropy_before_update` (the current
    policy's token entropy on its own rollouts) over the last
    `final_fraction` of steps, which smooths the per-batch noise,
  * tokens touched by the control (`analysis.runs.touched_series`),
  * the off-policy regime: the share of steps on which the PPO clip binds
    (`actor/pg_clipfrac > 0`), the mean share of tokens whose log-prob moved
    off the rollout's (`actor/frac_off_policy`), and for KL-Cov the share of
    steps on which its penalty has a non-zero gradient
    (`entropy/kl_cov/frac_active > 0`),
  * the correlation of the exact first-order entropy change
    (`entropy/dH_pred_exact/total`) with the change measured on the same
    batch, and its step count (for Fisher-z pooling),
  * the entropy change by source summed over the accounted steps
    (`entropy/dH_pred_exact/<source>`).

Across seeds (`aggregate`, `check_claims`): the interquartile mean with a
95 % stratified-bootstrap interval per method, and against the baseline
(GRPO) the probability of improvement and the paired difference (the same
seed index shares initial weights and data order) with its bootstrap
interval and a Wilcoxon signed-rank p-value (`analysis.stats`). A claim is
"held" only when its interval excludes the null on the claimed side.
"""

import math
import re

import numpy as np

from jaxrl_ent.analysis import report as analysis_report
from jaxrl_ent.analysis import runs as runs_lib
from jaxrl_ent.analysis import stats

BONUS_RE = re.compile(r"^entropy_bonus_(\d+(?:\.\d+)?e-?\d+)$")
PASS_KS = (1, 4, 16)
CLIP_KEY = "actor/pg_clipfrac"
OFF_POLICY_KEY = "actor/frac_off_policy"
KL_COV_ACTIVE_KEY = "entropy/kl_cov/frac_active"
COV_SCORE_PREFIX = "entropy/cov_score/"
# Bootstrap replicates and the seed of every interval in the report: the
# same runs give the same report.
REPS = 10_000
SEED = 0
# Greedy accuracy may fall by at most this much for "without losing
# accuracy" (non-inferiority: the interval's lower end must lie above it).
ACC_MARGIN = 0.02
# "Tracks the measured change": the pooled r's interval lies above this.
TRACK_R = 0.8


def pearson(x, y) -> float:
  return runs_lib.pearson(np.asarray(x, float), np.asarray(y, float))[0]


def _mean(series, f=lambda v: v) -> float:
  """Mean of `f` over the finite values of `series` (NaN when none)."""
  if series is None or not len(series.finite()):
    return math.nan
  return float(np.mean(f(series.finite().value)))


def _share(series) -> float:
  """Share of the finite values of `series` that are > 0."""
  return _mean(series, lambda v: v > 0)


def _at(series, i) -> float:
  """The `i`-th finite value of `series` (NaN when none)."""
  s = series.finite() if series is not None else None
  return float(s.value[i]) if s is not None and len(s) else math.nan


def summarize_run(run_dir, *, final_fraction: float = 0.1) -> dict:
  """The per-run numbers listed in the module docstring."""
  run = runs_lib.load_run(run_dir)
  row = analysis_report.summarize_run(run)
  h = runs_lib.entropy_series(run)
  has_h = h is not None and len(h) > 0
  n_final = max(1, math.ceil(final_fraction * len(h))) if has_h else 1

  out = {
      "steps": row.steps, "final_acc": row.final_acc,
      "initial_acc": _at(run.get(runs_lib.VAL_ACC_KEY), 0),
      "final_entropy": (float(np.mean(h.value[-n_final:])) if has_h
                        else math.nan),
      "initial_entropy": float(h.value[0]) if has_h else math.nan,
      "touched": row.mean_touched,
      "clip_bind": _share(run.get(CLIP_KEY)),
      "off_policy": _mean(run.get(OFF_POLICY_KEY)),
      "kl_cov_active": _share(run.get(KL_COV_ACTIVE_KEY)),
      "exact_corr": row.exact_corr, "exact_n": row.exact_n,
      "tabular_corr": row.dh_corr, "tabular_n": row.dh_n,
  }
  for k in PASS_KS:
    out[f"pass{k}"] = _at(run.get(f"val/pass_at_{k}"), -1)
    out[f"initial_pass{k}"] = _at(run.get(f"val/pass_at_{k}"), 0)
  for source, s in runs_lib.exact_dh_sources(run).items():
    out[f"dH_{source}"] = float(np.sum(s.finite().value))
  for key in run.keys:
    if key.startswith(COV_SCORE_PREFIX):
      out["cov_" + key[len(COV_SCORE_PREFIX):]] = _mean(run.get(key))
  return out


# (row key, column title, digits, direction that is better or None).
COLUMNS = (("final_acc", "greedy acc", 3, "greater"),
           ("pass1", "pass@1", 3, "greater"),
           ("pass4", "pass@4", 3, "greater"),
           ("pass16", "pass@16", 3, "greater"),
           ("final_entropy", "final entropy (nats)", 3, None),
           ("touched", "tokens touched", 4, None),
           ("clip_bind", "steps clip binds", 2, None),
           ("kl_cov_active", "steps KL-Cov active", 2, None))
# Against the baseline: probability of improvement on these.
POI_COLUMNS = ("final_acc", "pass16")


def _by_method(per_run):
  by = {}
  for r in per_run:
    by.setdefault(r["method"], []).append(r)
  return by


def _values(rows, key):
  return np.asarray([r.get(key, math.nan) for r in rows], float)


def _paired(rows_x, rows_y, key):
  """Scores of `key` on the seeds both methods ran, in seed order."""
  x = {r["seed"]: r.get(key, math.nan) for r in rows_x}
  y = {r["seed"]: r.get(key, math.nan) for r in rows_y}
  seeds = sorted(s for s in set(x) & set(y)
                 if np.isfinite(x[s]) and np.isfinite(y[s]))
  return (np.asarray([x[s] for s in seeds], float),
          np.asarray([y[s] for s in seeds], float))


def iqm_ci(values) -> dict:
  """{"iqm", "ci", "n"} of the finite values (NaNs when none)."""
  v = np.asarray(values, float)
  v = v[np.isfinite(v)]
  if not len(v):
    return {"iqm": math.nan, "ci": [math.nan, math.nan], "n": 0}
  point, ci = stats.bootstrap_ci(SEED, v, stats.iqm, reps=REPS)
  return {"iqm": point, "ci": [float(ci[0]), float(ci[1])], "n": int(len(v))}


def paired_diff(rows_x, rows_y, key) -> dict:
  """Paired X − Y on `key`: mean difference, its CI, Wilcoxon p, seeds."""
  x, y = _paired(rows_x, rows_y, key)
  if len(x) < 2:
    return {"diff": math.nan, "ci": [math.nan, math.nan], "p": math.nan,
            "n": int(len(x))}
  res = stats.paired_test(SEED, x, y, reps=REPS)
  return {"diff": res.mean_diff, "ci": [float(res.ci[0]), float(res.ci[1])],
          "p": res.p_value, "n": res.num_seeds}


def poi(rows_x, rows_y, key) -> dict:
  """P(X > Y) on `key` over paired seeds, with its paired bootstrap CI."""
  x, y = _paired(rows_x, rows_y, key)
  if len(x) < 2:
    return {"poi": math.nan, "ci": [math.nan, math.nan]}
  point, ci = stats.probability_of_improvement_ci(SEED, x, y, paired=True,
                                                  reps=REPS)
  return {"poi": point, "ci": [float(ci[0]), float(ci[1])]}


def aggregate(per_run: list[dict], *, baseline: str = "grpo"
              ) -> dict[str, dict]:
  """method → {"seeds", column: iqm_ci, "poi_<column>": vs baseline}."""
  by = _by_method(per_run)
  out = {}
  for m, rows in by.items():
    a = {"seeds": len(rows)}
    for key, _, _, _ in COLUMNS:
      a[key] = iqm_ci(_values(rows, key))
    if m != baseline and baseline in by:
      for key in POI_COLUMNS:
        a[f"poi_{key}"] = poi(rows, by[baseline], key)
    out[m] = a
  return out


def _fmt_ci(d, digits=3) -> str:
  if not np.isfinite(d.get("iqm", d.get("poi", d.get("diff", math.nan)))):
    return "—"
  v = d.get("iqm", d.get("poi", d.get("diff")))
  return f"{v:.{digits}f} [{d['ci'][0]:.{digits}f}, {d['ci'][1]:.{digits}f}]"


def markdown_table(agg: dict[str, dict], *, baseline: str = "grpo") -> str:
  """IQM [95 % CI] per method; P(>GRPO) on greedy accuracy and pass@16."""
  head = (["method", "seeds"] + [t for _, t, _, _ in COLUMNS] +
          [f"P(acc > {baseline})", f"P(pass@16 > {baseline})"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for m, a in agg.items():
    cells = [m, str(a["seeds"])] + [_fmt_ci(a[k], d)
                                    for k, _, d, _ in COLUMNS]
    cells += [_fmt_ci(a[f"poi_{k}"], 2) if f"poi_{k}" in a else "—"
              for k in POI_COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _claim(claim, evidence, verdict):
  return {"claim": claim, "evidence": evidence, "verdict": verdict}


def _diff_text(name, d, digits=3):
  if not np.isfinite(d["diff"]):
    return f"{name}: —"
  return (f"{name} {d['diff']:+.{digits}f} [{d['ci'][0]:+.{digits}f}, "
          f"{d['ci'][1]:+.{digits}f}] (p={d['p']:.2g}, {d['n']} seeds)")


def _verdict(d, direction, null=0.0):
  if not np.all(np.isfinite(d["ci"])):
    return "not testable: fewer than 2 paired seeds"
  return stats.verdict(d["ci"], direction, null)


def _all_held(verdicts):
  if any(v.startswith("not testable") for v in verdicts):
    return next(v for v in verdicts if v.startswith("not testable"))
  if all(v == "held" for v in verdicts):
    return "held"
  if any(v == "contradicted" for v in verdicts):
    return "contradicted"
  return "undecided"


def check_claims(per_run: list[dict], *, baseline: str = "grpo",
                 annealed_alpha: float = 1e-2) -> list[dict]:
  """The claims of entropy_methods.md, each with evidence and a verdict.

  Differences are paired over seeds (same seed index = same initial weights
  and data order); the evidence gives the mean paired difference, its 95 %
  bootstrap interval and the Wilcoxon p-value. "held": the interval
  excludes 0 on the claimed side; "contradicted": on the other side;
  "undecided": it contains 0. A compound claim holds when every part does.
  `annealed_alpha`: α₀ of `entropy_bonus_annealed`, whose constant twin
  `entropy_bonus_<α₀>` claim 2 compares it with.
  """
  by = _by_method(per_run)
  out = []
  base = by.get(baseline)

  # 1. A constant bonus biases the final policy, more with larger α.
  alphas = sorted((float(BONUS_RE.match(m).group(1)), m)
                  for m in by if BONUS_RE.match(m))
  claim = ("A constant entropy bonus biases the final policy: greedy "
           f"accuracy below {baseline}'s, and further below as α grows "
           "(§1.5)")
  if base and alphas:
    diffs = [(a, m, paired_diff(by[m], base, "final_acc")) for a, m in alphas]
    parts = [_verdict(diffs[-1][2], "less")]
    evidence = [_diff_text(f"α={a:g} − {baseline}: acc", d)
                for a, _, d in diffs]
    if len(alphas) > 1:
      grow = paired_diff(by[alphas[-1][1]], by[alphas[0][1]], "final_acc")
      parts.append(_verdict(grow, "less"))
      evidence.append(_diff_text(f"α={alphas[-1][0]:g} − "
                                 f"α={alphas[0][0]:g}: acc", grow))
    out.append(_claim(claim, "; ".join(evidence), _all_held(parts)))
  else:
    out.append(_claim(claim, "", "not testable: needs grpo and "
                      "entropy_bonus_<α>"))

  # 2. Annealing removes the bias: the annealed bonus (α₀ = the preset's)
  # keeps more accuracy than the constant bonus at that α.
  claim = ("Annealing the bonus removes its bias: the annealed bonus keeps "
           "more greedy accuracy than the constant one at the same α₀ "
           "(§1.6)")
  annealed = by.get("entropy_bonus_annealed")
  alpha0 = next((m for a, m in alphas if math.isclose(a, annealed_alpha)),
                None)
  if annealed and alpha0:
    d = paired_diff(annealed, by[alpha0], "final_acc")
    d0 = paired_diff(annealed, base, "final_acc") if base else None
    evidence = _diff_text(f"annealed − {alpha0}: acc", d)
    if d0:
      evidence += "; " + _diff_text(f"annealed − {baseline}: acc", d0)
    out.append(_claim(claim, evidence, _verdict(d, "greater")))
  else:
    out.append(_claim(claim, "", "not testable: needs entropy_bonus_annealed "
                      f"and a constant entropy_bonus_<α> at α₀ = "
                      f"{annealed_alpha:g}"))

  # 3. Annealed covariance controls: higher entropy, higher pass@16, greedy
  # accuracy not lower by more than ACC_MARGIN.
  for m in ("clip_cov_annealed", "kl_cov_annealed"):
    claim = (f"Annealed {m.split('_annealed')[0]} keeps entropy higher than "
             f"{baseline} and raises pass@16 without losing greedy accuracy "
             f"(more than {ACC_MARGIN}) (§1.6)")
    if m not in by or not base:
      out.append(_claim(claim, "", f"not testable: needs {baseline} and {m}"))
      continue
    dh = paired_diff(by[m], base, "final_entropy")
    dp = paired_diff(by[m], base, "pass16")
    da = paired_diff(by[m], base, "final_acc")
    parts = [_verdict(dh, "greater"), _verdict(dp, "greater"),
             _verdict(da, "greater", -ACC_MARGIN)]
    evidence = "; ".join([_diff_text("entropy", dh), _diff_text("pass@16", dp),
                          _diff_text("greedy acc", da)])
    v = _all_held(parts)
    if v != "held" and not v.startswith("not testable"):
      v += (" (entropy " + parts[0] + ", pass@16 " + parts[1] +
            ", accuracy kept " + parts[2] + ")")
    out.append(_claim(claim, evidence, v))

  # 4. The exact first-order prediction tracks the measured change.
  claim = ("The exact first-order prediction tracks the measured entropy "
           f"change: per-run r, Fisher-z pooled, 95 % CI above {TRACK_R}")
  rs = [(r["exact_corr"], r["exact_n"]) for r in per_run
        if np.isfinite(r.get("exact_corr", math.nan))]
  if rs:
    p = stats.fisher_z_mean(*zip(*rs))
    tab = [(r["tabular_corr"], r["tabular_n"]) for r in per_run
           if np.isfinite(r.get("tabular_corr", math.nan))]
    pt = stats.fisher_z_mean(*zip(*tab)) if tab else None
    evidence = (f"exact: r = {p.r:.3f} [{p.ci[0]:.3f}, {p.ci[1]:.3f}] over "
                f"{p.num_runs} runs, {p.num_pairs} steps")
    if pt is not None and np.isfinite(pt.r):
      evidence += (f"; tabular (unit logit step): r = {pt.r:.3f} "
                   f"[{pt.ci[0]:.3f}, {pt.ci[1]:.3f}]")
    out.append(_claim(claim, evidence,
                      stats.verdict(p.ci, "greater", TRACK_R)
                      if np.isfinite(p.r) else "not testable: too few steps"))
  else:
    out.append(_claim(claim, "", "not testable: no exact ΔH metrics"))

  # 5. Which source drives the collapse (GRPO's runs, ΔH summed over the
  # accounted steps, by source).
  claim = (f"The policy-gradient term drives {baseline}'s entropy collapse: "
           "its summed exact ΔH is negative and the largest in magnitude")
  sources = sorted({k[3:] for r in (base or []) for k in r
                    if k.startswith("dH_")})
  if base and sources:
    cis = {s: iqm_ci(_values(base, f"dH_{s}")) for s in sources}
    evidence = "; ".join(f"{s}: {_fmt_ci(c, 4)}" for s, c in cis.items())
    pg = cis.get("pg")
    if pg is None or not np.isfinite(pg["iqm"]):
      v = "not testable: no pg source"
    else:
      v = stats.verdict(pg["ci"], "less")
      biggest = max(cis, key=lambda s: abs(cis[s]["iqm"])
                    if np.isfinite(cis[s]["iqm"]) else -1)
      if v == "held" and biggest != "pg":
        v = f"undecided: {biggest} is larger"
    out.append(_claim(claim, "ΔH summed over the accounted steps, IQM "
                      "[95 % CI] over seeds: " + evidence, v))
  else:
    out.append(_claim(claim, "", "not testable: no ΔH by source"))
  return out


def claims_markdown(claims: list[dict]) -> str:
  lines = ["| claim | evidence | verdict |", "|---|---|---|"]
  lines += [f"| {c['claim']} | {c['evidence']} | {c['verdict']} |"
            for c in claims]
  return "\n".join(lines)


def regime_markdown(per_run: list[dict]) -> str:
  """Per method: the off-policy regime and where the covariance scores fall
  (means over seeds of the per-run means)."""
  by = _by_method(per_run)
  qs = [k for k in ("cov_q50", "cov_q90", "cov_q99", "cov_q99.9", "cov_max")
        if any(k in r for r in per_run)]
  head = (["method", "steps clip binds", "tokens off-policy",
           "steps KL-Cov active"] + [k[4:] for k in qs])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for m, rows in by.items():
    def mean(key, digits):
      v = _values(rows, key)
      v = v[np.isfinite(v)]
      return f"{v.mean():.{digits}g}" if len(v) else "—"
    lines.append("| " + " | ".join(
        [m, mean("clip_bind", 3), mean("off_policy", 3),
         mean("kl_cov_active", 3)] + [mean(k, 3) for k in qs]) + " |")
  return "\n".join(lines)
