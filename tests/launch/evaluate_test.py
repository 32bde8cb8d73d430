"""launch/evaluate.py reproduces the trainer's held-out numbers.

A seconds-long run (`grpo_tiny.py:runlocal`, evaluated after every step) is
made once; the launcher then evaluates its checkpoints and an HF folder of
its initial policy, and each result must equal what the trainer's own
evaluation logged for that policy in metrics.jsonl (and, for the folder, the
`Evaluator` called directly).
"""

import contextlib
import io
import json
import os

from absl import app
from absl.testing import absltest
import jax

from jaxrl_ent import models
from jaxrl_ent import rewards
from jaxrl_ent import sharding
from jaxrl_ent.train import metrics as metrics_lib
from jaxrl_ent.train import policy_setup
from jaxrl_ent.train import evaluation

import launcher_testlib


class EvaluateLaunchTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = launcher_testlib.tiny_run()
    cls.logged = {row["step"]: {k: v for k, v in row.items()
                                if k.startswith("val/")}
                  for row in metrics_lib.read_jsonl(cls.workdir)}

  def _evaluate(self, *args):
    output = self.create_tempfile().full_path
    stdout = io.StringIO()
    with launcher_testlib.launcher("evaluate") as launcher:
      with contextlib.redirect_stdout(stdout):
        launcher_testlib.run_main(launcher, "evaluate",
                                  *launcher_testlib.RUN_CONFIG_ARGS,
                                  f"--output={output}", *args)
    with open(output) as f:
      return json.load(f), stdout.getvalue()

  def _assert_metrics_equal(self, got, want):
    self.assertEqual(sorted(got), sorted(want))
    for name in want:
      self.assertAlmostEqual(got[name], want[name], places=6, msg=name)

  def test_latest_checkpoint_equals_the_runs_last_evaluation(self):
    record, stdout = self._evaluate(f"--workdir={self.workdir}")
    self.assertEqual(record["step"], 2)
    self.assertEqual(record["checkpoint_dir"],
                     os.path.join(self.workdir, "ckpt"))
    self.assertIn("val/pass_at_2", record["metrics"])
    self.assertGreater(record["metrics"]["val/greedy_reward"], 0.0)
    self._assert_metrics_equal(record["metrics"], self.logged[2])
    self.assertIn("| policy | step | val/greedy_acc |", stdout)
    self.assertIn(f"| {self.workdir}/ckpt | 2 |", stdout)

  def test_step_flag_picks_that_checkpoint(self):
    record, _ = self._evaluate(f"--workdir={self.workdir}", "--step=1")
    self.assertEqual(record["step"], 1)
    self._assert_metrics_equal(record["metrics"], self.logged[1])

  def test_hf_folder_equals_the_evaluator_called_directly(self):
    # The policy the run started from (seeded init), as an HF folder.
    config = launcher_testlib.run_config()
    mesh = sharding.make_mesh(dict(config.mesh))
    policy, tokenizer = policy_setup.initial_policy(config, mesh)
    folder = self.create_tempdir().full_path
    models.save_pretrained(policy, folder, tokenizer=tokenizer)
    workdir = self.create_tempdir().full_path
    record, _ = self._evaluate(f"--workdir={workdir}", f"--policy={folder}")
    self.assertEqual(record["policy"], folder)
    self.assertIsNone(record["step"])
    # The run's step-0 evaluation was of this policy.
    self._assert_metrics_equal(record["metrics"], self.logged[0])
    # And the trainer's Evaluator, called here by hand.
    evaluator = evaluation.Evaluator(
        config, models.load_tokenizer(folder),
        rewards.get_reward_fn(launcher_testlib.LENGTH_REWARD),
        rewards.RewardScorer(backend="inline"))
    with sharding.use_mesh(mesh):
      direct = evaluator(models.from_pretrained(folder, mesh),
                         jax.random.key(10_000), mesh)
    self._assert_metrics_equal(record["metrics"], direct)
    # Without --output, eval.json goes to the workdir.
    with launcher_testlib.launcher("evaluate") as launcher:
      record = launcher.run(config, workdir, policy_path=folder)
    self.assertEqual(record["output"], os.path.join(workdir, "eval.json"))
    self.assertTrue(os.path.exists(record["output"]))

  def test_errors_name_the_path_and_the_steps(self):
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(FileNotFoundError,
                                f"no checkpoint directory {empty}/ckpt"):
      self._evaluate(f"--workdir={empty}")
    with self.assertRaisesRegex(FileNotFoundError,
                                r"no step 7; saved steps: \[1, 2\]"):
      self._evaluate(f"--workdir={self.workdir}", "--step=7")
    with self.assertRaisesRegex(app.UsageError, "--policy"):
      self._evaluate(f"--workdir={self.workdir}", "--step=1",
                     f"--policy={self.workdir}")
    with self.assertRaisesRegex(FileNotFoundError, "no config.json"):
      self._evaluate(f"--workdir={self.workdir}", f"--policy={empty}")
    # A config that does not describe the run: the message says which
    # fields differ from the config saved with the checkpoint.
    with self.assertRaisesRegex(ValueError,
                                "entropy.method: 'none' -> 'clip_cov'"):
      self._evaluate(f"--workdir={self.workdir}",
                     "--config.entropy.method=clip_cov")


if __name__ == "__main__":
  absltest.main()
