r"""Compiles a TPU config's programs ahead of time and checks they fit.

  python launch/aot_check.py --config=configs/tpu_grpo.py:job=qwen2_5_0_5b_v5e8
  python launch/aot_check.py --config=configs/tpu_grpo.py:job=qwen2_5_7b_v5p_16 \
      --programs=train --json_out=/tmp/aot.json

Needs libtpu (`pip install -e ".[tpu]"`), not a TPU: the programs are
compiled for `config.topology` on abstract devices. Prints per-device
memory against the chip's HBM, FLOPs, bytes, a roofline step time and the
collectives of each program; exits 1 when any program does not fit.
"""

import dataclasses
import json
import os
import sys

# Compile-only: jax itself must stay on the CPU here (no TPU to grab, no
# start-up probing); libtpu is loaded by the topology code alone.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from jaxrl_ent import launch_flags  # One-line answers for bad flags.
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A TPU config file.",
                                lock_config=True)
flags.DEFINE_list("programs", ["prefill", "decode", "logp", "train"],
                  "Programs to compile.")
flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")
flags.DEFINE_bool("rollout_estimate", False,
                  "Also compile the decode step at 10/50/100 % cache fill "
                  "and estimate the rollout's decode time under long-tail "
                  "lengths (jaxrl_ent/aot/decode_estimate.py).")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from jaxrl_ent.aot import programs  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.aot import report
  setup, reports, estimate = programs.check(FLAGS.config,
                                            which=tuple(FLAGS.programs))
  print(report.format_reports(setup, reports, estimate))
  rollout = None
  if FLAGS.rollout_estimate:
    from jaxrl_ent.aot import decode_estimate  # pylint: disable=g-import-not-at-top
    rollout = decode_estimate.estimate(FLAGS.config, setup)
    print(rollout.format())
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      out = report.to_dict(setup, reports, estimate)
      if rollout is not None:
        out["rollout_estimate"] = json.loads(json.dumps(
            dataclasses.asdict(rollout), default=str))
      json.dump(out, f, indent=2)
  if not all(r.fits for r in reports):
    sys.exit(1)


if __name__ == "__main__":
  launch_flags.run(main)
