r"""RL post-training (GRPO/PPO) with a selectable entropy control.

  python launch/train.py --config=configs/grpo_tiny.py --workdir=/tmp/grpo_tiny
  python launch/train.py --config=configs/grpo_tiny.py \
      --config.entropy.method=kl_cov --config.train.steps=100 --workdir=...

Any config field can be overridden with --config.<path>=<value>.

Multi-host: run the same command once per host with
JAX_COORDINATOR_ADDRESS=<host0>:<port> JAX_NUM_PROCESSES=<n>
JAX_PROCESS_ID=<i> (or --config.distributed.*); on a TPU pod slice,
--config.distributed.initialize=always.
"""

import os
import sys

from absl import app
from absl import flags
from jaxrl_ent import launch_flags  # One-line answers for bad flags.
from absl import logging as absl_logging
from ml_collections import config_flags

# Configs import `configs.common`: make the repository root importable when
# this file is run as a script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (metrics, checkpoints).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # orbax, jax and grain are chatty at INFO; the progress bar and the
  # warnings (resume, skipped updates, preemption) are what users read.
  absl_logging.set_verbosity(absl_logging.WARNING)
  # Multi-host: join the other processes before anything counts devices
  # (validation does); see jaxrl_ent/train/distributed.py.
  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.train import distributed
  try:
    distributed.maybe_initialize(FLAGS.config)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  # All config problems at once, before any model is built or compiled
  # (train_and_evaluate checks again for callers that skip this launcher).
  from jaxrl_ent.train import validate
  try:
    validate.validate_config(FLAGS.config)
  except validate.ConfigError as e:
    launch_flags.fail(str(e))
  # Overridden fields the selected methods do not read: say so, then run.
  for line in validate.ignored_field_warnings(FLAGS.config,
                                              launch_flags.overrides()):
    launch_flags.warn(line)
  import jax  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.train import rl_loop  # pylint: disable=g-import-not-at-top
  summary = rl_loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if jax.process_index() != 0:
    return  # Every process holds the same numbers; one prints them.
  if "replicas" not in summary:
    from jaxrl_ent import storage  # pylint: disable=g-import-not-at-top
    print(storage.read_text(storage.join(FLAGS.workdir, "summary.txt")),
          end="")
    return
  # A sweep: one line per replica, the full summaries in their directories.
  print(f"{len(summary['replicas'])} replicas, held-out greedy accuracy "
        "before -> after:")
  for name, s in summary["replicas"].items():
    print(f"  {name}: {s['initial_eval']['val/greedy_acc']:.3f} -> "
          f"{s['final_eval']['val/greedy_acc']:.3f}   "
          f"({s['workdir']}/summary.txt)")


if __name__ == "__main__":
  launch_flags.run(main)
