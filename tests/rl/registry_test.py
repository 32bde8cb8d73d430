"""Tests for jaxrl_ent.rl.registry: names, lookups, shared signatures."""

from absl.testing import absltest
from absl.testing import parameterized
import jax.numpy as jnp
import numpy as np

from jaxrl_ent import rl
from jaxrl_ent.rl import registry


class RegistryTest(parameterized.TestCase):

  def test_expected_names(self):
    self.assertEqual(registry.ADVANTAGE_ESTIMATORS.names(),
                     ("batch_norm", "dr_grpo", "gae", "grpo", "rloo"))
    self.assertTrue(registry.needs_critic("gae"))
    self.assertFalse(registry.needs_critic("grpo"))
    self.assertEqual(registry.POLICY_LOSSES.names(),
                     ("gspo", "ppo_clip", "reinforce", "vanilla"))
    self.assertCountEqual(registry.KL_ESTIMATORS.names(), rl.kl.KL_KINDS)
    self.assertCountEqual(registry.AGG_MODES.names(),
                          rl.aggregation.AGG_MODES)
    self.assertIs(registry.get_policy_loss("vanilla"),
                  rl.policy_losses.ppo_clip_loss)
    self.assertIs(registry.get_advantage_estimator("grpo"),
                  rl.advantages.grpo_advantages)

  def test_unknown_and_duplicate_names_raise(self):
    with self.assertRaisesRegex(ValueError, "expected one of .*grpo"):
      registry.get_advantage_estimator("gpro")
    for get in (registry.get_policy_loss, registry.get_kl_estimator,
                registry.get_agg_loss):
      with self.assertRaises(ValueError):
        get("nope")
    with self.assertRaisesRegex(ValueError, "already registered"):
      registry.POLICY_LOSSES.register("gspo", rl.policy_losses.gspo_loss)
    reg = registry.Registry("thing")
    with self.assertRaises(ValueError):
      reg.register("", len)
    with self.assertRaises(ValueError):
      reg.register("x", 3)

    @reg.register("double")
    def double(x):
      return 2 * x

    self.assertEqual(reg.get("double")(2), 4)
    self.assertIn("double", reg)
    self.assertEqual(reg.validate("double"), "double")
    with self.assertRaises(TypeError):
      reg.as_mapping()["y"] = len

  def test_entries_share_their_registry_signature(self):
    rng = np.random.default_rng(0)
    mask = np.ones((4, 3), np.float32)
    logp = -rng.uniform(0.1, 2.0, (4, 3)).astype(np.float32)
    for name in registry.ADVANTAGE_ESTIMATORS.names():
      adv = registry.get_advantage_estimator(name)(
          jnp.array([1.0, 0.0, 0.0, 1.0]), mask, group_size=2)
      self.assertEqual(adv.shape, (4, 3))
    for name in registry.POLICY_LOSSES.names():
      loss_bt, metrics = registry.get_policy_loss(name)(
          logp, logp + 0.1, adv, mask)
      self.assertEqual(loss_bt.shape, (4, 3))
      self.assertEqual(set(metrics),
                       {"pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"})
    for name in registry.KL_ESTIMATORS.names():
      np.testing.assert_array_equal(registry.get_kl_estimator(name)(
          logp, logp - 0.3), rl.kl.kl_penalty(logp, logp - 0.3, name))
    for name in registry.AGG_MODES.names():
      np.testing.assert_array_equal(registry.get_agg_loss(name)(logp, mask),
                                    rl.agg_loss(logp, mask, name))


if __name__ == "__main__":
  absltest.main()
