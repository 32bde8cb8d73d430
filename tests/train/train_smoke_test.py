"""End-to-end smoke runs of the main job, one per entropy control."""

import json
import math

from absl.testing import absltest
from absl.testing import parameterized

from configs import grpo_tiny
from jaxrl_ent import rewards
from jaxrl_ent.train import metrics as metrics_lib
from jaxrl_ent.train import rl_loop

METHODS = ("none", "entropy_bonus", "entropy_bonus_annealed", "clip_cov",
           "kl_cov_annealed", "high_entropy_tokens", "adaptive_entropy",
           "steer", "aent")


class TrainSmokeTest(parameterized.TestCase):

  @parameterized.parameters(*[(m,) for m in METHODS])
  def test_two_steps(self, method):
    config = grpo_tiny.get_config(f"runlocal,entropy={method}")
    config.reward.backend = "inline"  # No worker processes in unit tests.
    config.sft.steps = 0              # Random policy: only plumbing here.
    config.tensorboard = method == "none"
    workdir = self.create_tempdir().full_path
    summary = rl_loop.train_and_evaluate(config, workdir)
    rows = metrics_lib.read_jsonl(workdir)
    self.assertEqual([r["step"] for r in rows], [0, 1, 2])
    last = rows[-1]
    for name in ("actor/entropy", "actor/pg_loss", "actor/pg_clipfrac",
                 "actor/ppo_kl", "actor/grad_norm", "critic/score/mean",
                 "response_length/mean", "perf/throughput",
                 "entropy/dH_pred_tabular/total", "entropy/measured_dH",
                 "val/greedy_acc"):
      self.assertIn(name, last)
      self.assertTrue(math.isfinite(last[name]), (name, last[name]))
    self.assertEqual(last["train/skipped_steps"], 0.0)
    # The step time's parts, in order within the step: they add up to at
    # most the whole.
    parts = [last[f"perf/time_{p}"] for p in ("rollout", "reward", "update")]
    self.assertTrue(all(p > 0 for p in parts), parts)
    self.assertLessEqual(sum(parts), last["perf/step_time"] + 1e-9)
    if method != "none":
      stage = method.replace("_annealed", "")
      self.assertIn(f"entropy/dH_pred_tabular/{stage}", last)
    with open(f"{workdir}/summary.json") as f:
      self.assertEqual(json.load(f)["steps"], summary["steps"])
    # The end-of-run summary a person reads.
    with open(f"{workdir}/summary.txt") as f:
      text = f.read()
    for needle in ("run finished: 2 RL steps", "greedy accuracy",
                   "pass@2", "rollout entropy", f"{workdir}/metrics.jsonl",
                   f"{workdir}/ckpt", "launch/analyze.py"):
      self.assertIn(needle, text)

  def test_kl_in_loss_and_in_reward(self):
    config = grpo_tiny.get_config("runlocal")
    config.reward.backend = "inline"
    config.sft.steps = 0
    config.tensorboard = False
    config.loss.kl_coef = 0.05
    config.loss.kl_in_reward_coef = 0.05
    # A reward that varies within every group (completion length), so the
    # random policy gets non-zero advantages and its first update moves it
    # away from the reference.
    rewards.register("smoke_length", lambda c, r: float(len(c)),
                     overwrite=True)
    config.reward.spec = "smoke_length"
    workdir = self.create_tempdir().full_path
    rl_loop.train_and_evaluate(config, workdir)
    rows = metrics_lib.read_jsonl(workdir)
    # Step 1 starts from the reference policy: both KLs are exactly 0 there;
    # after one update the policy has moved and the loss KL is positive.
    self.assertEqual(rows[1]["critic/kl_in_reward"], 0.0)
    self.assertGreater(rows[2]["actor/kl_loss"], 0.0)
    self.assertTrue(math.isfinite(rows[2]["critic/kl_in_reward"]))

  def test_continuous_rollout_trains_like_the_static_batch(self):
    """Continuous batching draws the same completions for the same keys,
    so the whole run matches the static batch's, metric by metric."""
    rows = {}
    for continuous in (False, True):
      config = grpo_tiny.get_config("runlocal")
      config.reward.backend = "inline"
      config.sft.steps = 0
      config.tensorboard = False
      config.rollout.continuous = continuous
      config.rollout.num_slots = 3  # Of 8 rows: slots are refilled.
      workdir = self.create_tempdir().full_path
      rl_loop.train_and_evaluate(config, workdir)
      rows[continuous] = metrics_lib.read_jsonl(workdir)
    for a, b in zip(rows[False], rows[True]):
      self.assertEqual(sorted(a), sorted(b))
      for k, v in a.items():
        if not (k.startswith("perf/") or k.endswith("_seconds")):
          self.assertAlmostEqual(b[k], v, delta=1e-5 + 1e-5 * abs(v), msg=k)


if __name__ == "__main__":
  absltest.main()
