r"""Seeds as replicas in one program vs one run per seed, in one process.

  python benchmarks/seed_sweep.py                      # 16 seeds × 20 steps
  python benchmarks/seed_sweep.py --seeds=4 --steps=3  # quick look

Both sides run the README's main job (`configs/grpo_tiny.py`, GRPO, 32
prompts × 8 samples per step) through `rl_loop.train_and_evaluate`, from
the same random initial weights per seed (`sft.steps=0`: the warm start is
the same work on both sides and would only dilute the ratio), with the
held-out evaluation shrunk to 8 greedy prompts at the start and end, and one
checkpoint at the end:

* vectorised: `--config.sweep.seeds=0:S`, S replicas stacked, one vmapped
  rollout and one vmapped `update` per step;
* sequential: S separate runs, one after another, in this process (each
  compiles its own programs, as separate runs do).

Rewards are scored on the host for every completion on both sides. Prints
the wall time of each side (compilation included: what a user waits for),
the steady-state step time (median `perf/step_time` after the first step;
for the sequential side the sum over runs), and
`seed sweep speed-up ratio: <x>` (wall time).
"""

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from benchmarks import common

_SEEDS = flags.DEFINE_integer("seeds", 16, "replicas / runs")
_STEPS = flags.DEFINE_integer("steps", 20, "RL steps per run")
_OUT = flags.DEFINE_string("out", "benchmarks/results/seed_sweep.json",
                           "JSON results")


def _config(steps):
  from configs import grpo_tiny  # pylint: disable=g-import-not-at-top
  c = grpo_tiny.get_config()
  c.train.steps = steps
  c.sft.steps = 0
  c.eval.every = 0
  c.eval.num_examples = 8
  c.eval.batch_size = 8
  c.eval.pass_k = 0
  c.checkpoint.every = steps
  c.checkpoint.async_save = False
  c.tensorboard = False
  return c


def _steady(rows):
  times = [r["perf/step_time"] for r in rows if r["step"] > 1
           and "perf/step_time" in r]
  return statistics.median(times) if times else float("nan")


def main(argv):
  del argv
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty.
  from jaxrl_ent.train import metrics  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.train import rl_loop  # pylint: disable=g-import-not-at-top
  s, steps = _SEEDS.value, _STEPS.value
  root = tempfile.mkdtemp(prefix="seed_sweep_")

  config = _config(steps)
  config.sweep.seeds = f"0:{s}"
  start = time.perf_counter()
  rl_loop.train_and_evaluate(config, f"{root}/vectorised")
  vec_wall = time.perf_counter() - start
  vec_step = _steady(metrics.read_jsonl(
      f"{root}/vectorised/replicas/seed0"))

  start = time.perf_counter()
  seq_steps = []
  for seed in range(s):
    config = _config(steps)
    config.seed = seed
    rl_loop.train_and_evaluate(config, f"{root}/seed{seed}")
    seq_steps.append(_steady(metrics.read_jsonl(f"{root}/seed{seed}")))
  seq_wall = time.perf_counter() - start

  rows = [{"side": "vectorised (one program)", "wall_s": f"{vec_wall:.1f}",
           "step_s": f"{vec_step:.3f}"},
          {"side": f"sequential ({s} runs)", "wall_s": f"{seq_wall:.1f}",
           "step_s": f"{sum(seq_steps):.3f}"}]
  print(f"{s} seeds × {steps} RL steps of configs/grpo_tiny.py "
        f"(step_s: steady-state time of one RL step of all seeds)")
  common.print_table(rows, ["side", "wall_s", "step_s"])
  ratio = seq_wall / vec_wall
  print(f"steady-state step speed-up ratio: {sum(seq_steps) / vec_step:.2f}")
  print(f"seed sweep speed-up ratio: {ratio:.2f}")
  common.write_json(_OUT.value, {
      "machine": common.machine(), "seeds": s, "steps": steps,
      "vectorised_wall_s": vec_wall, "sequential_wall_s": seq_wall,
      "vectorised_step_s": vec_step, "sequential_step_s": sum(seq_steps),
      "speedup": ratio})


if __name__ == "__main__":
  app.run(main)
