r"""Plots and entropy-law fits for one or several run workdirs.

  python launch/analyze.py --workdirs=/tmp/grpo_tiny --out=/tmp/analysis
  python launch/analyze.py --workdirs=/tmp/none,/tmp/cc --out=/tmp/analysis
  python launch/analyze.py --workdirs='/tmp/sweep/*' --out=/tmp/analysis \
      --fit_on=val

Writes into --out one PNG per plot kind (reward_entropy, entropy_law,
entropy_change, covariance, tokens_touched; a kind no run has metrics for is
skipped with a message), overview.png (all panels in one figure) and
summary.md (the markdown table, also printed). See jaxrl_ent/analysis/.
--workdirs and --out may be gs:// URLs (globs too).
"""

import os
import sys
import tempfile

from absl import app
from absl import flags
from jaxrl_ent import launch_flags  # One-line answers for bad flags.

# Make the repository root importable when this file is run as a script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxrl_ent.analysis import plots
from jaxrl_ent.analysis import report
from jaxrl_ent.analysis import runs as runs_lib
from jaxrl_ent import storage
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "Comma-separated run workdirs; each entry "
                  "may be a glob (quote it), e.g. '/tmp/sweep/*'.")
flags.DEFINE_string("out", None, "Output directory for the PNGs and "
                    "summary.md.")
flags.DEFINE_enum("fit_on", "train", report.FIT_SOURCES,
                  "Entropy-law pairs in the table: 'train' = per-step "
                  "critic/score/mean vs rollout entropy; 'val' = "
                  "val/greedy_acc at eval steps vs the evaluated policy's "
                  "rollout entropy. The entropy_law plot shows both.")
flags.DEFINE_integer("fit_smooth", 1, "Trailing moving-average window over "
                     "steps applied to the 'train' pairs before fitting "
                     "(1 = raw).", lower_bound=1)
flags.DEFINE_integer("smooth", None, "Moving-average window for per-step "
                     "curves in plots (default: last step // 40).",
                     lower_bound=1)
flags.mark_flags_as_required(["workdirs", "out"])


def expand_workdirs(entries) -> list[storage.Path]:
  """Expands globs (local or gs://); a plain entry is kept even if missing
  (load_run says so).

  Raises:
    FileNotFoundError: a glob pattern matched nothing.
  """
  out = []
  for entry in entries:
    if storage.has_magic(entry):
      matches = [p for p in storage.glob(entry) if storage.isdir(p)]
      if not matches:
        raise FileNotFoundError(f"--workdirs pattern {entry!r} matched no "
                                "directory")
      out.extend(storage.path(p) for p in matches)
    else:
      out.append(storage.path(entry))
  return out


def _absolute(p):
  return p if storage.is_remote(p) else p.resolve()


def _unique_names(paths) -> list[str]:
  # Base names label the runs; when two collide (…/a/run, …/b/run) use the
  # last two path components instead.
  names = [_absolute(p).name for p in paths]
  return [f"{_absolute(p).parent.name}/{n}" if names.count(n) > 1 else n
          for p, n in zip(paths, names)]


def analyze(workdirs, out, *, fit_on="train", fit_smooth=1, smooth=None,
            log=print) -> str:
  """Loads the runs, writes the plots and summary.md; returns the table.

  `out` may be a gs:// folder: the files are written locally, then
  uploaded.
  """
  if storage.is_remote(out):
    with tempfile.TemporaryDirectory(prefix="jaxrl_ent_analysis_") as tmp:
      table = analyze(workdirs, tmp, fit_on=fit_on, fit_smooth=fit_smooth,
                      smooth=smooth, log=lambda *a: None)
      storage.upload_dir(tmp, out)
    log(f"wrote the plots and summary.md to {out}")
    return table
  paths = expand_workdirs(workdirs)
  runs = []
  for path, name in zip(paths, _unique_names(paths)):
    run = runs_lib.load_run(path, name=name)
    log(f"loaded {path}: {len(run.records)} records, last step "
        f"{run.last_step}, method {run.method_label} (from "
        f"{run.method_source})")
    runs.append(run)
  os.makedirs(out, exist_ok=True)
  result = plots.write_plots(runs, out, smooth=smooth, fit_smooth=fit_smooth,
                             log=log)
  overview = plots.plot_overview(runs, os.path.join(out, "overview.png"),
                                 smooth=smooth, fit_smooth=fit_smooth)
  log(f"wrote {overview}")
  summaries = [report.summarize_run(r, fit_source=fit_on, smooth=fit_smooth)
               for r in runs]
  table = report.markdown_table(summaries)
  table += "\nBoth entropy-law fits per run:\n\n" + report.fits_table(summaries)
  if result.skipped:
    table += "\nSkipped plots:\n" + "".join(
        f"- {k}: {v}\n" for k, v in result.skipped.items())
  summary_path = os.path.join(out, "summary.md")
  storage.write_text(summary_path, table)
  log(f"wrote {summary_path}")
  return table


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    table = analyze(FLAGS.workdirs, FLAGS.out, fit_on=FLAGS.fit_on,
                    fit_smooth=FLAGS.fit_smooth, smooth=FLAGS.smooth)
  except (FileNotFoundError, ValueError) as e:
    # Missing or malformed workdirs are user errors: one line, no traceback.
    print(f"analyze: error: {e}", file=sys.stderr)
    sys.exit(1)
  print()
  print(table)


if __name__ == "__main__":
  launch_flags.run(main)
