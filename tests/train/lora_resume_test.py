"""A LoRA run: checkpoints hold adapters only, and a run stopped and resumed
ends bit-identical to an uninterrupted one (mirrors resume_test.py)."""

import json
import pathlib

import jax
from absl.testing import absltest

from configs import grpo_tiny
from jaxrl_ent import rewards
from jaxrl_ent.train import rl_loop

# Compile time dominates these tiny runs.
jax.config.update("jax_disable_most_optimizations", True)


def _config(steps):
  config = grpo_tiny.get_config("runlocal,lora")
  config.reward.backend = "inline"
  config.sft.steps = 0
  config.tensorboard = False
  config.train.steps = steps
  config.checkpoint.every = 1
  config.eval.every = 100  # initial and final evals only
  config.loss.kl_coef = 0.01  # the reference policy (B = 0 adapters) too
  config.reward.spec = "lora_resume_test_length"
  return config


def _state_checksums(workdir, step):
  path = pathlib.Path(workdir) / "ckpt" / str(step) / "integrity" / "metadata"
  record = json.loads(path.read_text())
  return {leaf["path"]: leaf["fp"] for leaf in record["state"]}


class LoraResumeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    rewards.register("lora_resume_test_length", lambda c, r: float(len(c)),
                     overwrite=True)

  def test_adapter_checkpoints_resume_bit_identical(self):
    full = self.create_tempdir("full").full_path
    rl_loop.train_and_evaluate(_config(2), full)
    split = self.create_tempdir("split").full_path
    rl_loop.train_and_evaluate(_config(1), split)
    rl_loop.train_and_evaluate(_config(2), split)  # Resumes at 1.

    checksums = _state_checksums(full, 2)
    params = {k for k in checksums if k.startswith(".params")}
    self.assertLen(params, 14)  # A and B of 7 projections, no base weight.
    self.assertTrue(all("_lora_" in k for k in params), params)
    self.assertFalse([k for k in checksums if "frozen" in k])
    self.assertEqual(checksums, _state_checksums(split, 2))
    moved = {k: v for k, v in checksums.items() if k in params}
    self.assertNotEqual(moved, {k: v for k, v in _state_checksums(
        split, 1).items() if k in params})


if __name__ == "__main__":
  absltest.main()
