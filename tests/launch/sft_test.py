"""launch/sft.py runs the trainer's warm start as its own job.

Its folder must hold exactly the policy `launch/train.py` would warm-start
(`policy_setup.build_policy` with the same config, run here separately), be
reused by a train launch with the same workdir, and its reported evaluation
must equal the trainer's `Evaluator` called directly on the folder.
"""

import contextlib
import io
import json
import os

from absl import app
from absl.testing import absltest
import jax
from flax import nnx

from jaxrl_ent import models
from jaxrl_ent import rewards
from jaxrl_ent import sharding
from jaxrl_ent.train import checkpoint
from jaxrl_ent.train import policy_setup
from jaxrl_ent.train import evaluation

import launcher_testlib

_STEPS = 15
_ARGS = (f"--config={launcher_testlib.ROOT}/configs/grpo_tiny.py:runlocal",
         "--config.reward.backend=inline",
         f"--config.reward.spec={launcher_testlib.LENGTH_REWARD}",
         f"--config.sft.steps={_STEPS}", "--config.sft.batch_size=16")


def _config():
  config = launcher_testlib.run_config()
  config.sft.steps = _STEPS
  config.sft.batch_size = 16
  return config


def _params_fingerprint(policy):
  return checkpoint.state_fingerprint(nnx.state(policy, nnx.Param))


class SftLaunchTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    launcher_testlib.register_length_reward()

  def _sft(self, *args):
    stdout = io.StringIO()
    with launcher_testlib.launcher("sft") as launcher:
      with contextlib.redirect_stdout(stdout):
        launcher_testlib.run_main(launcher, "sft", *_ARGS, *args)
    return stdout.getvalue()

  def test_warm_start_job_writes_the_trainers_warm_start(self):
    workdir = self.create_tempdir().full_path
    stdout = self._sft(f"--workdir={workdir}")
    folder = os.path.join(workdir, "sft_policy")
    with open(os.path.join(workdir, "sft.json")) as f:
      record = json.load(f)
    self.assertFalse(record["reused"])
    self.assertEqual(record["output_dir"], folder)
    self.assertIn(f"warm start ({_STEPS} supervised steps) -> {folder}",
                  stdout)
    # Held-out demonstrations: near-uniform (ln V) before, learnt after.
    self.assertGreater(record["heldout_nll_before"], 4.0)
    self.assertLess(record["heldout_nll_after"],
                    record["heldout_nll_before"] - 1.0)

    config = _config()
    mesh = sharding.make_mesh(dict(config.mesh))
    policy = models.from_pretrained(folder, mesh)
    tokenizer = models.load_tokenizer(folder)
    # The trainer's own warm start, in another workdir, is the same policy.
    other = self.create_tempdir().full_path
    trainer_policy, _ = policy_setup.build_policy(config, mesh, other)
    self.assertEqual(_params_fingerprint(policy),
                     _params_fingerprint(trainer_policy))
    # The evaluation it reports is the trainer's Evaluator on the folder.
    evaluator = evaluation.Evaluator(
        config, tokenizer,
        rewards.get_reward_fn(launcher_testlib.LENGTH_REWARD),
        rewards.RewardScorer(backend="inline"))
    with sharding.use_mesh(mesh):
      direct = evaluator(policy, jax.random.key(10_000), mesh)
    self.assertEqual(sorted(record["eval"]), sorted(direct))
    for name, value in direct.items():
      self.assertAlmostEqual(record["eval"][name], value, places=6, msg=name)
    self.assertEqual(direct["val/num_prompts"], 8.0)

    # A train launch with this workdir reuses the folder (no new training).
    weights = os.path.join(folder, "model.safetensors")
    mtime = os.path.getmtime(weights)
    reused, _ = policy_setup.build_policy(config, mesh, workdir)
    self.assertEqual(_params_fingerprint(reused), _params_fingerprint(policy))
    # So does relaunching this job; --overwrite trains again.
    stdout = self._sft(f"--workdir={workdir}", "--noeval")
    self.assertIn("(reused)", stdout)
    self.assertEqual(os.path.getmtime(weights), mtime)
    with open(os.path.join(workdir, "sft.json")) as f:
      again = json.load(f)
    self.assertTrue(again["reused"])
    self.assertAlmostEqual(again["heldout_nll_after"],
                           record["heldout_nll_after"], places=5)
    self.assertNotIn("eval", again)
    stdout = self._sft(f"--workdir={workdir}", f"--output_dir={folder}",
                       "--noeval", "--config.sft.steps=1", "--overwrite")
    self.assertIn("(1 supervised steps)", stdout)
    self.assertGreater(os.path.getmtime(weights), mtime)

  def test_nothing_to_train_names_the_field(self):
    workdir = self.create_tempdir().full_path
    with self.assertRaisesRegex(app.UsageError, "config.sft.steps=0"):
      self._sft(f"--workdir={workdir}", "--config.sft.steps=0")
    with self.assertRaisesRegex(app.UsageError, "config.data.task"):
      self._sft(f"--workdir={workdir}", "--config.data.task=")


if __name__ == "__main__":
  absltest.main()
