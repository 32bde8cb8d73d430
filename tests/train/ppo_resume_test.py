"""PPO with a critic (`:algo=ppo`): a stopped and resumed run ends
bit-identical to an uninterrupted one, critic included, and the critic
exports as its own folder."""

import json
import pathlib

import numpy as np
from absl.testing import absltest

from configs import grpo_tiny
from jaxrl_ent import rewards
from jaxrl_ent import sharding
from jaxrl_ent.train import critic_export
from jaxrl_ent.train import metrics as metrics_lib
from jaxrl_ent.train import rl_loop

_TIMING = ("perf/", "reward/score_seconds")


def _config(steps):
  config = grpo_tiny.get_config("algo=ppo,runlocal")
  config.reward.backend = "inline"
  config.sft.steps = 0
  config.tensorboard = False
  config.train.steps = steps
  config.train.measure_every = 0
  config.checkpoint.every = 1
  config.eval.pass_k = 0
  config.critic.kind = "model"  # The larger critic state: its own trunk.
  config.critic.warmup_steps = 1
  config.reward.spec = "ppo_resume_test_length"
  return config


def _state_checksums(workdir, step):
  path = pathlib.Path(workdir) / "ckpt" / str(step) / "integrity" / "metadata"
  record = json.loads(path.read_text())
  return {leaf["path"]: leaf["fp"] for leaf in record["state"]}


class PpoResumeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    rewards.register("ppo_resume_test_length", lambda c, r: float(len(c)),
                     overwrite=True)

  def test_resume_is_bit_identical_with_the_critic_and_it_exports(self):
    full = self.create_tempdir("full").full_path
    rl_loop.train_and_evaluate(_config(3), full)
    split = self.create_tempdir("split").full_path
    rl_loop.train_and_evaluate(_config(2), split)
    rl_loop.train_and_evaluate(_config(3), split)  # Resumes at 2.

    checksums = _state_checksums(full, 3)
    self.assertEqual(checksums, _state_checksums(split, 3))
    critic = lambda c: {k: v for k, v in c.items() if ".critic" in k}
    self.assertGreater(len(critic(checksums)), 10)  # Trunk, head, moments.
    # The critic moved in the resumed step; the policy only after warm-up.
    self.assertNotEqual(critic(checksums), critic(_state_checksums(split, 2)))
    rows_full = metrics_lib.read_jsonl(full)
    rows_split = metrics_lib.read_jsonl(split)
    self.assertEqual([r["step"] for r in rows_split], [0, 1, 2, 3])
    self.assertEqual(rows_split[1]["actor/policy_frozen"], 1.0)
    self.assertEqual(rows_split[3]["actor/policy_frozen"], 0.0)
    for a, b in zip(rows_full, rows_split):
      strip = lambda r: {k: v for k, v in r.items()
                         if not k.startswith(_TIMING)}
      self.assertEqual(strip(a), strip(b))
    self.assertIn("critic/vf_explained_var", rows_split[3])

    # Export: the critic's own folder, its head equal to the checkpoint's.
    config = _config(3)
    mesh = sharding.make_mesh(dict(config.mesh))
    out = self.create_tempdir("critic").full_path
    info = critic_export.export_critic(config, pathlib.Path(split) / "ckpt",
                                       mesh, out)
    self.assertEqual((info["kind"], info["step"]), ("model", 3))
    _, _, state, _ = critic_export.restore_critic(
        config, pathlib.Path(split) / "ckpt", mesh)
    w, b = critic_export.load_value_head(out)
    np.testing.assert_array_equal(w, np.asarray(state.params["head"]["w"][...]))
    np.testing.assert_array_equal(b, np.asarray(state.params["head"]["b"][...]))
    self.assertTrue((pathlib.Path(out) / "config.json").exists())


if __name__ == "__main__":
  absltest.main()
