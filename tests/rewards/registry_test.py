"""Tests for jaxrl_ent.rewards.registry."""

import pickle

from absl.testing import absltest

from jaxrl_ent.rewards import registry


class RegistryTest(absltest.TestCase):

  def test_every_reward_takes_completion_and_reference(self):
    for name, fn in registry.REWARDS.items():
      value = fn("<answer>1</answer>", {"answer": "1", "numbers": [1],
                                        "target": 1})
      self.assertIsInstance(value, float, name)

  def test_by_name(self):
    self.assertIs(registry.get_reward_fn("math"), registry.REWARDS["math"])
    with self.assertRaisesRegex(ValueError, "unknown reward 'mathh'"):
      registry.get_reward_fn("mathh")

  def test_weighted_sum(self):
    fn = registry.get_reward_fn({"math": 1.0, "format": 0.1})
    self.assertAlmostEqual(fn(r"\boxed{2}", "2"), 1.1)
    self.assertAlmostEqual(fn(r"\boxed{3}", "2"), 0.1)
    self.assertAlmostEqual(fn("2", "2"), 0.0)
    same = registry.get_reward_fn("math:1.0, format:0.1")
    self.assertEqual(same.weights, fn.weights)

  def test_weighted_sum_pickles_by_name(self):
    fn = registry.get_reward_fn("math:2,format_think:0.5")
    back = pickle.loads(pickle.dumps(fn))
    self.assertEqual(back.weights, {"math": 2.0, "format_think": 0.5})
    self.assertAlmostEqual(back(r"<think>a</think>\boxed{2}", "2"), 2.5)

  def test_bad_specs(self):
    with self.assertRaisesRegex(ValueError, "bad weight"):
      registry.parse_spec("math:abc")
    with self.assertRaisesRegex(ValueError, "unknown reward"):
      registry.parse_spec({"math": 1.0, "nope": 1.0})
    with self.assertRaisesRegex(ValueError, "at least one"):
      registry.WeightedSum({})

  def test_register(self):
    def always_one(completion, reference):
      del completion, reference
      return 1.0
    registry.register("test_always_one", always_one)
    self.addCleanup(registry.REWARDS.pop, "test_always_one")
    self.assertIs(registry.get_reward_fn("test_always_one"), always_one)
    with self.assertRaisesRegex(ValueError, "already registered"):
      registry.register("test_always_one", lambda c, r: 0.0)


if __name__ == "__main__":
  absltest.main()
