r"""Theory lab launcher: checks the claims of entropy_methods.md §1 (T1–T5).

  python launch/theory.py --config=configs/theory_bandit.py \
      --workdir=/tmp/theory

Writes `theory_table.md` (claim | measured | closed form | holds?) and one
PNG per experiment to the workdir, and prints the table. Everything runs in
float64 inside a `jax.enable_x64(True)` context opened here; nothing is
configured globally.
"""

import os
import time

from absl import app
from absl import flags
from jaxrl_ent import launch_flags  # One-line answers for bad flags.
from absl import logging
import jax
from ml_collections import config_flags
import tqdm

from jaxrl_ent.theory import annealing
from jaxrl_ent.theory import experiments
from jaxrl_ent.theory import report

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Theory-lab config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")

# Experiment name -> (function, config field holding its keyword arguments).
EXPERIMENTS = {
    "T1": (experiments.t1_error_orders, "t1"),
    "T2": (experiments.t2_pg_npg, "t2"),
    "T3": (experiments.t3_entropy_regularisation, "t3"),
    "T4": (annealing.t4_constant_vs_annealed, "t4"),
    "T5": (annealing.t5_fixed_point_shift, "t5"),
}
TABLE_FILE = "theory_table.md"


def run(config, workdir):
  """Runs the configured experiments; writes the table and plots.

  Args:
    config: the ConfigDict of `configs/theory_bandit.py`.
    workdir: output directory (created if needed).

  Returns:
    (rows, markdown table string).
  """
  unknown = set(config.experiments) - set(EXPERIMENTS)
  if unknown:
    raise ValueError(f"unknown experiments {sorted(unknown)}; expected "
                     f"{sorted(EXPERIMENTS)}")
  os.makedirs(workdir, exist_ok=True)
  rows = []
  base_key = jax.random.PRNGKey(config.seed)
  with jax.enable_x64(True):
    for name in tqdm.tqdm(config.experiments, desc="theory lab"):
      fn, field = EXPERIMENTS[name]
      # The key depends on the name only, so subsets reproduce the full run.
      key = jax.random.fold_in(base_key, sorted(EXPERIMENTS).index(name))
      start = time.perf_counter()
      exp_rows, curves = fn(key, **config[field].to_dict())
      rows.extend(exp_rows)
      if config.plots:
        path = report.PLOTTERS[name](curves, workdir)
        logging.info("wrote %s", path)
      logging.info("%s: %d claims in %.1fs", name, len(exp_rows),
                   time.perf_counter() - start)
  table = report.markdown_table(rows)
  with open(os.path.join(workdir, TABLE_FILE), "w") as f:
    f.write(table)
  return rows, table


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required.")
  rows, table = run(_CONFIG.value, _WORKDIR.value)
  print(table)
  failed = [r.claim for r in rows if not r.holds]
  if failed:
    logging.warning("%d claim(s) did not hold: %s", len(failed), failed)


if __name__ == "__main__":
  launch_flags.run(main)
