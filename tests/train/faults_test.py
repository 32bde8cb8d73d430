"""Faults inside a run of the main job: non-finite updates and bad rewards.

Both run the tiny config in-process for a few steps; what is checked is what
README "Failure behaviour" promises.
"""

import json
import math
import pathlib
import signal
import time
from unittest import mock

import jax.numpy as jnp
from absl.testing import absltest

from configs import grpo_tiny
from jaxrl_ent import rewards
from jaxrl_ent.train import metrics as metrics_lib
from jaxrl_ent.train import rl_loop


def _config(steps):
  config = grpo_tiny.get_config("runlocal")
  config.reward.backend = "inline"
  config.sft.steps = 0
  config.tensorboard = False
  config.eval.pass_k = 0
  config.eval.every = 0
  config.train.steps = steps
  config.checkpoint.every = 1
  config.checkpoint.keep = 10
  # A reward that varies within every group, so each good update moves the
  # policy (otherwise "state unchanged" would hold trivially).
  config.reward.spec = "faults_test_length"
  return config


def _state_checksums(workdir, step):
  """Per-leaf checksums of the saved train state (its integrity record)."""
  path = pathlib.Path(workdir) / "ckpt" / str(step) / "integrity" / "metadata"
  record = json.loads(path.read_text())
  return {leaf["path"]: leaf["fp"] for leaf in record["state"]}


class NonFiniteUpdateTest(absltest.TestCase):

  def test_nan_updates_are_skipped_counted_and_abort_the_run(self):
    rewards.register("faults_test_length", lambda c, r: float(len(c)),
                     overwrite=True)
    config = _config(10)
    config.train.max_consecutive_skips = 3
    good_steps = 2
    mini = config.train.num_mini_batches
    calls = []
    real_jit = rl_loop.update_lib.jit_update

    def jit_poisoned_update(*args, **kwargs):
      real_update = real_jit(*args, **kwargs)

      def update(state, batch, key, ref):
        # From step 3 on, NaN rewards: the advantages, the loss and the
        # gradient of every mini-batch become non-finite inside the jit.
        calls.append(1)
        if len(calls) > good_steps:
          batch = batch.replace(rewards=batch.rewards * jnp.nan)
        return real_update(state, batch, key, ref)

      return update

    workdir = self.create_tempdir().full_path
    with mock.patch.object(rl_loop.update_lib, "jit_update",
                           jit_poisoned_update):
      with self.assertRaisesRegex(
          FloatingPointError,
          r"3 consecutive steps.*train\.max_consecutive_skips=3.*step 5"):
        rl_loop.train_and_evaluate(config, workdir)

    # The abort leaves the process as a normal return does.
    self.assertEqual(signal.getsignal(signal.SIGTERM), signal.SIG_DFL)
    rows = {r["step"]: r for r in metrics_lib.read_jsonl(workdir)}
    self.assertEqual(sorted(rows), [0, 1, 2, 3, 4, 5])
    self.assertEqual([rows[s]["train/update_finite"] for s in range(1, 6)],
                     [1.0, 1.0, 0.0, 0.0, 0.0])
    # One skipped optimizer update per mini-batch of each poisoned step.
    self.assertEqual([rows[s]["train/skipped_steps"] for s in range(1, 6)],
                     [0.0, 0.0, mini, 2 * mini, 3 * mini])
    # metrics.jsonl stores non-finite values as strings ("NaN").
    self.assertFalse(math.isfinite(float(rows[3]["actor/loss"])))

    # Steps 3 and 4 saved the unchanged (finite) state of step 2; the abort
    # at step 5 saved nothing. Only the skip counter and the RL-step clock
    # differ.
    ckpt = pathlib.Path(workdir) / "ckpt"
    self.assertEqual(sorted(int(p.name) for p in ckpt.iterdir()
                            if p.name.isdigit()), [1, 2, 3, 4])
    good = _state_checksums(workdir, 2)
    params = lambda c: {k: v for k, v in c.items() if ".params" in k}
    self.assertNotEqual(params(_state_checksums(workdir, 1)), params(good))
    for step in (3, 4):
      saved = _state_checksums(workdir, step)
      self.assertEqual(saved.keys(), good.keys())
      changed = sorted(k for k in good if saved[k] != good[k])
      self.assertEqual(changed, [".skipped", ".step"], step)


class RewardFaultTest(absltest.TestCase):

  def test_failing_rewards_score_zero_are_counted_and_training_continues(self):
    calls = []

    def flaky(completion, reference):
      del reference
      calls.append(1)
      # Calls 1-8 are the initial held-out eval (8 greedy prompts); the
      # faults are injected in training batches, at fixed call indices.
      i = len(calls) - 8
      if i == 3:
        time.sleep(60)  # Interrupted by reward.timeout_s.
      if i > 0 and i % 8 == 1:
        raise RuntimeError("verifier crashed")
      if i > 0 and i % 8 == 2:
        return float("nan")
      return float(len(completion))

    rewards.register("faults_test_flaky", flaky, overwrite=True)
    config = _config(3)
    config.reward.spec = "faults_test_flaky"
    config.reward.timeout_s = 0.3
    config.checkpoint.every = 10
    workdir = self.create_tempdir().full_path
    start = time.perf_counter()
    summary = rl_loop.train_and_evaluate(config, workdir)
    self.assertEqual(summary["steps"], 3)
    self.assertLess(time.perf_counter() - start, 50)  # The hang was cut.
    rows = metrics_lib.read_jsonl(workdir)[1:]
    self.assertEqual([r["step"] for r in rows], [1, 2, 3])
    total = lambda name: sum(r.get(f"reward/{name}", 0.0) for r in rows)
    self.assertEqual(total("errors"), 3.0)     # One per step.
    self.assertEqual(total("nonfinite"), 3.0)
    self.assertEqual(total("timeouts"), 1.0)
    for r in rows:
      # Failed samples score 0, so the batch reward stays finite and no
      # update is skipped because of them.
      self.assertTrue(math.isfinite(r["critic/score/mean"]))
      self.assertEqual(r["train/update_finite"], 1.0)
      self.assertTrue(math.isfinite(r["actor/loss"]))


if __name__ == "__main__":
  absltest.main()
