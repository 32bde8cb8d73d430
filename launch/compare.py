r"""The comparison study: entropy controls × seeds, one table, plots, claims.

  python launch/compare.py --config=configs/compare_tiny.py \
      --workdir=/tmp/compare_tiny
  python launch/compare.py --config=configs/compare_tiny.py \
      --config.study.methods=grpo,clip_cov_annealed --workdir=...

Resumable: rerunning the same command skips finished runs and continues
interrupted ones from their checkpoints. Writes to the workdir:
`study.md` (the table, the regime and the claim checks), `study.json`
(per-run and per-method numbers), `entropy_curves.png`,
`accuracy_curves.png`, `pass_at_16_curves.png`, `dH_by_source.png`,
`dH_predicted_vs_measured.png`; each run's own workdir is
`runs/<method>/seed<k>` (readable by `launch/analyze.py`).
"""

import json
import os
import pathlib
import sys
import time

from absl import app
from absl import flags
from jaxrl_ent import launch_flags  # One-line answers for bad flags.
from absl import logging as absl_logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Study config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Study directory.")
flags.DEFINE_bool("report_only", False,
                  "Only rebuild the report from the runs already finished.")
flags.mark_flags_as_required(["config", "workdir"])


def write_report(config, workdir, results) -> str:
  """study.md / study.json / plots from the finished runs; returns the md."""
  from jaxrl_ent.study import plots  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.study import report  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  per_run, dirs = [], {}
  for res in results:
    if res.status not in ("done", "skipped"):
      continue
    row = report.summarize_run(res.spec.run_dir,
                               final_fraction=config.study.final_fraction)
    row.update(method=res.spec.method, seed=res.spec.seed,
               seconds=res.seconds)
    per_run.append(row)
    dirs.setdefault(res.spec.method, []).append(res.spec.run_dir)
  missing = [f"{r.spec.method}/seed{r.spec.seed} ({r.status}"
             f"{': ' + r.error if r.error else ''})"
             for r in results if r.status not in ("done", "skipped")]
  agg = report.aggregate(per_run)
  # Claim 2 compares the annealed bonus with the constant one at its α₀.
  annealed = config.variants.get("entropy_bonus_annealed", {})
  claims = report.check_claims(per_run, annealed_alpha=float(
      annealed.get("entropy", {}).get("coef", 1e-2)))
  pngs = plots.write_plots(dirs, workdir)
  steps = config.base.train.steps
  seeds = sorted({r["seed"] for r in per_run})
  wall = sum(r["seconds"] for r in per_run)
  md = [f"# Comparison study ({len(per_run)} runs: {len(agg)} methods × "
        f"{len(seeds)} seeds, {steps} steps each)", "",
        "Each cell: interquartile mean over seeds [95 % stratified bootstrap "
        "interval]; P(· > grpo): probability of improvement over GRPO on "
        "the same seeds [95 % paired bootstrap interval]. pass@k is the "
        "unbiased estimator from "
        f"{config.base.eval.num_samples or config.base.eval.pass_k} samples "
        f"on each of {config.base.eval.num_examples} held-out prompts at "
        "the last evaluation; final entropy averages the last "
        f"{config.study.final_fraction:.0%} of steps. Runs took "
        f"{wall:.0f} s in all.", "",
        report.markdown_table(agg), "",
        "## The regime", "",
        "Shares of steps on which the PPO clip binds and on which KL-Cov's "
        "penalty has a non-zero gradient; the mean share of tokens whose "
        "log-prob moved off the rollout's; and the per-step quantiles of "
        "the covariance score (lp − mean)(A − mean), averaged over steps, "
        "which set Clip-Cov's band and KL-Cov's top-ratio threshold.", "",
        report.regime_markdown(per_run), "",
        "## Claims", "", report.claims_markdown(claims), ""]
  if missing:
    md += ["Runs not included: " + "; ".join(missing), ""]
  md += [f"![{pathlib.Path(p).stem}]({pathlib.Path(p).name})" for p in pngs]
  text = "\n".join(md) + "\n"
  (workdir / "study.md").write_text(text)
  (workdir / "study.json").write_text(json.dumps(
      {"runs": per_run, "methods": agg, "claims": claims,
       "missing": missing}, indent=1, default=float))
  return text


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  absl_logging.set_verbosity(absl_logging.WARNING)
  from jaxrl_ent.study import runner  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.study import plan  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  if FLAGS.report_only:
    results = [runner.RunResult(s, "skipped" if runner.is_finished(
        s.run_dir, s.config.train.steps) else "stopped",
                                runner.wall_time(s.run_dir))
               for s in plan.expand(FLAGS.config, FLAGS.workdir)]
  else:
    results = runner.run_study(FLAGS.config, FLAGS.workdir)
  print(write_report(FLAGS.config, FLAGS.workdir, results))
  print(f"study wall time this launch: {time.perf_counter() - start:.0f} s")
  failed = [r for r in results if r.status == "failed"]
  if failed:
    raise SystemExit(f"{len(failed)} run(s) failed; see their log.txt / "
                     "the messages above. Rerun the same command to retry "
                     "them (finished runs are kept).")


if __name__ == "__main__":
  launch_flags.run(main)
