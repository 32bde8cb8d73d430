"""Decode step vs cache fill and the long-tail rollout estimate (AOT)."""

import aot_testlib  # First: CPU platform, repository path, libtpu.

from absl.testing import absltest

from configs import tpu_grpo
from jaxrl_ent.aot import decode_estimate

HAVE_LIBTPU = aot_testlib.HAVE_LIBTPU
needs_libtpu = aot_testlib.needs_libtpu


class ScheduleTest(absltest.TestCase):

  def test_continuous_schedule_by_hand(self):
    # Rows of 3, 1, 2 tokens through 2 slots: row 1 stops after one step and
    # its slot takes row 2; the slot furthest along has done 1, 2, 3 tokens.
    self.assertEqual(decode_estimate.continuous_schedule([3, 1, 2], 2),
                     [1, 2, 3])
    # One slot: rows run one after the other.
    self.assertEqual(decode_estimate.continuous_schedule([2, 1], 1),
                     [1, 2, 1])

  def test_long_tail_lengths(self):
    lengths = decode_estimate.long_tail_lengths(20000, 800)
    self.assertLessEqual(lengths.max(), 800)
    self.assertGreaterEqual(lengths.min(), 1)
    # Geometric with mean 100, capped at 800: mean 100·(1 - e^-8) ≈ 100.
    self.assertAlmostEqual(lengths.mean() / 100.0, 1.0, delta=0.03)


@needs_libtpu
class EstimateTest(absltest.TestCase):

  def test_small_model_step_time_grows_with_fill(self):
    c = tpu_grpo.get_config("job=qwen2_5_0_5b_v5e8")
    for k, v in dict(num_layers=2, vocab_size=8192, hidden_size=256,
                     intermediate_size=512, num_heads=4, num_kv_heads=2,
                     head_dim=64).items():
      c.model[k] = v
    c.rollout.max_new_tokens = 2048
    est = decode_estimate.estimate(c)
    for kind in ("static", "continuous"):
      times = list(est.step_s[kind].values())
      self.assertTrue(est.fits[kind])
      self.assertLess(times[0], times[1])
      self.assertLess(times[1], times[2])
    self.assertLess(est.step_s["continuous"][1.0], est.step_s["static"][1.0])
    # Length-aware reads less than the whole cache, continuous less again.
    t = list(est.rollout_s.values())
    self.assertLess(t[1], t[0])
    self.assertLess(t[2], t[1])


if __name__ == "__main__":
  absltest.main()
