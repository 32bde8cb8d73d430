"""One process of the multi-host test job (run by two_process_test.py).

  python tests/multihost/train_driver.py WORKDIR STEPS \
      [--coordinator=127.0.0.1:PORT --num_processes=N --process_id=I]

Registers the test reward (a reward must be registered in every process),
builds the tiny config, joins the coordinator when given one, and runs
`rl_loop.train_and_evaluate`. Set XLA_FLAGS/JAX_PLATFORMS in the environment.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from configs import grpo_tiny
from jaxrl_ent import rewards
from jaxrl_ent.train import rl_loop

# The suite's compile settings (tests/conftest.py), in both runs compared.
jax.config.update("jax_disable_most_optimizations", True)


def length_reward(completion, reference):
  # Varies within every group, so each update moves the policy.
  del reference
  return float(len(completion))


def config_for(steps: int):
  config = grpo_tiny.get_config("runlocal")
  config.reward.backend = "inline"
  config.reward.spec = "multihost_test_length"
  # No warm start: it would cost ~10 s of CPU per process. (With
  # sft.steps=2 the two layouts also end bitwise equal; checked by hand.)
  config.sft.steps = 0
  config.tensorboard = False
  config.train.steps = steps
  config.checkpoint.every = 1
  # pass@k would compile one more sampler program; greedy eval (initial,
  # step 2, final) already runs the Evaluator's multi-host path.
  config.eval.pass_k = 0
  return config


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("steps", type=int)
  parser.add_argument("--coordinator", default="")
  parser.add_argument("--num_processes", type=int, default=0)
  parser.add_argument("--process_id", type=int, default=-1)
  args = parser.parse_args()
  rewards.register("multihost_test_length", length_reward, overwrite=True)
  config = config_for(args.steps)
  if args.coordinator:
    config.distributed.coordinator_address = args.coordinator
    config.distributed.num_processes = args.num_processes
    config.distributed.process_id = args.process_id
  else:
    config.distributed.initialize = "never"
  rl_loop.train_and_evaluate(config, args.workdir)
  print(f"driver: process {jax.process_index()} of {jax.process_count()} "
        f"done, {jax.device_count()} devices", flush=True)


if __name__ == "__main__":
  main()
