"""A run stopped and resumed ends bit-identical to an uninterrupted run."""

import json
import os
import pathlib
import signal

from absl.testing import absltest

from configs import grpo_tiny
from jaxrl_ent import rewards
from jaxrl_ent.train import metrics as metrics_lib
from jaxrl_ent.train import rl_loop

# Timings differ between runs; everything else must be identical.
_TIMING = ("perf/", "reward/score_seconds")


def _config(steps):
  config = grpo_tiny.get_config("runlocal")
  config.reward.backend = "inline"
  config.sft.steps = 0
  config.tensorboard = False
  config.train.steps = steps
  config.checkpoint.every = 1
  # A reward that varies within every group, so each update moves the policy.
  config.reward.spec = "resume_test_length"
  return config


def _state_checksums(workdir, step):
  """Per-leaf checksums of the saved train state (params, optimizer,
  controller state, step), from the checkpoint's integrity record."""
  path = pathlib.Path(workdir) / "ckpt" / str(step) / "integrity" / "metadata"
  record = json.loads(path.read_text())
  return {leaf["path"]: leaf["fp"] for leaf in record["state"]}


class ResumeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    rewards.register("resume_test_length", lambda c, r: float(len(c)),
                     overwrite=True)

  def test_resume_is_bit_identical(self):
    full = self.create_tempdir("full").full_path
    rl_loop.train_and_evaluate(_config(4), full)
    split = self.create_tempdir("split").full_path
    rl_loop.train_and_evaluate(_config(2), split)
    summary = rl_loop.train_and_evaluate(_config(4), split)  # Resumes at 2.
    self.assertIn("initial_eval", summary)

    checksums = _state_checksums(full, 4)
    self.assertGreater(len(checksums), 10)
    self.assertEqual(checksums, _state_checksums(split, 4))
    # The parameters really moved between step 2 and step 4.
    params = lambda c: {k: v for k, v in c.items() if ".params" in k}
    self.assertNotEqual(params(checksums), params(_state_checksums(split, 2)))
    rows_full = metrics_lib.read_jsonl(full)
    rows_split = metrics_lib.read_jsonl(split)
    self.assertEqual([r["step"] for r in rows_split], [0, 1, 2, 3, 4])
    for a, b in zip(rows_full, rows_split):
      strip = lambda r: {k: v for k, v in r.items()
                         if not k.startswith(_TIMING)}
      self.assertEqual(strip(a), strip(b))
    with open(pathlib.Path(split) / "summary.json") as f:
      self.assertEqual(json.load(f)["steps"], 4)

  def test_sigterm_saves_and_the_next_launch_continues(self):
    calls = []

    def preempting_reward(completion, reference):
      # The scheduler's preemption notice arrives during step 2.
      calls.append(1)
      if len(calls) == 17:  # 8 initial-eval calls, then 8 per step.
        os.kill(os.getpid(), signal.SIGTERM)
      return float(len(completion))

    rewards.register("resume_test_preempt", preempting_reward,
                     overwrite=True)
    workdir = self.create_tempdir("preempt").full_path
    config = _config(4)
    config.reward.spec = "resume_test_preempt"
    config.eval.pass_k = 0
    config.eval.every = 0
    summary = rl_loop.train_and_evaluate(config, workdir)
    self.assertEqual(summary["preempted_at"], 2)
    self.assertTrue((pathlib.Path(workdir) / "ckpt" / "2").exists())
    # The default SIGTERM behaviour is back after the run.
    self.assertEqual(signal.getsignal(signal.SIGTERM), signal.SIG_DFL)
    summary = rl_loop.train_and_evaluate(config, workdir)
    self.assertNotIn("preempted_at", summary)
    steps = [r["step"] for r in metrics_lib.read_jsonl(workdir)]
    self.assertEqual(steps, [0, 1, 2, 3, 4])


if __name__ == "__main__":
  absltest.main()
