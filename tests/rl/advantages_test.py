"""Tests for jaxrl_ent.rl.advantages against NumPy ports of verl and TRL."""

import collections
import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_ent.rl import advantages


def _mask(b, t, seed=0):
  lengths = np.random.default_rng(seed).integers(1, t + 1, size=b)
  return (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)


def _np_verl_outcome(rewards, mask, index, mode, eps=1e-6):
  """verl compute_{grpo,rloo}_outcome_advantage: index-dict loops, float64."""
  scores = rewards.astype(np.float64).copy()
  groups = collections.defaultdict(list)
  for i, idx in enumerate(index):
    groups[idx].append(scores[i])
  out = np.empty_like(scores)
  for i, idx in enumerate(index):
    g = np.array(groups[idx])
    n = len(g)
    mean, std = (0.0, 1.0) if n == 1 else (g.mean(), g.std(ddof=1))
    if mode == "grpo":
      out[i] = (scores[i] - mean) / (std + eps)
    elif mode == "dr_grpo":
      out[i] = scores[i] - mean
    elif mode == "rloo":
      out[i] = scores[i] if n == 1 else (scores[i] - mean) * n / (n - 1)
  return out[:, None] * mask


def _np_trl_batch(rewards, group_size):
  """TRL GRPOTrainer scale_rewards="batch"."""
  r = rewards.astype(np.float64)
  mean = np.repeat(r.reshape(-1, group_size).mean(1), group_size)
  std = r.std(ddof=1) if r.size > 1 else 0.0
  return (r - mean) / (std + 1e-4)


def _np_masked_whiten(x, mask):
  """verl masked_whiten (masked_mean with +1e-8, Bessel-corrected var)."""
  mean = (x * mask).sum() / (mask.sum() + 1e-8)
  var = ((x - mean) ** 2 * mask).sum() / (mask.sum() + 1e-8)
  var *= mask.sum() / (mask.sum() - 1)
  return (x - mean) / np.sqrt(var + 1e-8)


def _np_verl_gae(rewards, values, mask, gamma, lam):
  """verl compute_gae_advantage_return before whitening, loop over t."""
  b, t = rewards.shape
  next_v, last = np.zeros(b), np.zeros(b)
  adv = np.zeros((b, t))
  for s in reversed(range(t)):
    delta = rewards[:, s] + gamma * next_v - values[:, s]
    new = delta + gamma * lam * last
    next_v = values[:, s] * mask[:, s] + (1 - mask[:, s]) * next_v
    last = new * mask[:, s] + (1 - mask[:, s]) * last
    adv[:, s] = last
  return adv, adv + values


class OutcomeAdvantagesTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_grpo_hand_computed_unbiased_std(self):
    rewards = np.array([1.0, 0.0, 0.0, 1.0], np.float32)
    mask = np.ones((4, 2), np.float32)
    # One group of 4: mean 1/2, unbiased std sqrt(1/3) -> ±sqrt(3)/2.
    got = self.variant(functools.partial(advantages.grpo_advantages,
                                         group_size=4))(rewards, mask)
    want = np.array([1, -1, -1, 1])[:, None] * np.sqrt(3) / 2 * mask
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Two groups of 2: mean 1/2, std sqrt(1/2) -> ±1/sqrt(2).
    got = self.variant(functools.partial(advantages.grpo_advantages,
                                         group_size=2))(rewards, mask)
    np.testing.assert_allclose(got[:, 0], [0.70710678, -0.70710678,
                                           -0.70710678, 0.70710678],
                               rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(("grpo", 4), ("grpo", 1), ("dr_grpo", 4),
                            ("dr_grpo", 1), ("rloo", 4), ("rloo", 2),
                            ("rloo", 1))
  def test_matches_verl_reference(self, mode, group_size):
    rng = np.random.default_rng(group_size)
    rewards = rng.normal(size=8).astype(np.float32)
    mask = _mask(8, 5)
    fn = {"grpo": advantages.grpo_advantages,
          "dr_grpo": advantages.dr_grpo_advantages,
          "rloo": advantages.rloo_advantages}[mode]
    got = self.variant(functools.partial(fn, group_size=group_size))(
        rewards, mask)
    index = np.repeat(np.arange(8 // group_size), group_size)
    np.testing.assert_allclose(
        got, _np_verl_outcome(rewards, mask, index, mode), rtol=1e-5,
        atol=1e-6)

  def test_rloo_is_leave_one_out_mean(self):
    rewards = np.array([3.0, 1.0, 0.0, 2.0], np.float32)
    got = advantages.rloo_advantages(rewards, np.ones((4, 1)), group_size=4)
    want = [r - (rewards.sum() - r) / 3 for r in rewards]
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-6)

  def test_equal_rewards_give_zero_and_singletons_keep_reward(self):
    mask = np.ones((4, 3), np.float32)
    for fn in (advantages.grpo_advantages, advantages.dr_grpo_advantages,
               advantages.rloo_advantages,
               advantages.batch_normalized_advantages):
      np.testing.assert_array_equal(fn(jnp.full((4,), 0.7), mask,
                                       group_size=4), 0.0)
    rewards = np.array([2.0, -1.0, 0.5, 0.0], np.float32)
    np.testing.assert_allclose(advantages.grpo_advantages(
        rewards, mask, group_size=1)[:, 0], rewards / (1 + 1e-6), rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(2, 4, 1)
  def test_batch_normalized_matches_trl(self, group_size):
    rewards = np.random.default_rng(7).uniform(size=8).astype(np.float32)
    mask = _mask(8, 4, seed=1)
    got = self.variant(functools.partial(
        advantages.batch_normalized_advantages, group_size=group_size))(
            rewards, mask)
    want = _np_trl_batch(rewards, group_size)[:, None] * mask
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  def test_masked_tokens_are_zero_and_vmap_over_seeds(self):
    rewards = np.random.default_rng(3).normal(size=(3, 6)).astype(np.float32)
    mask = _mask(6, 4, seed=2)
    got = jax.vmap(functools.partial(advantages.grpo_advantages,
                                     group_size=3), in_axes=(0, None))(
                                         rewards, mask)
    self.assertEqual(got.shape, (3, 6, 4))
    np.testing.assert_array_equal(np.asarray(got)[:, mask == 0], 0.0)
    for s in range(3):
      np.testing.assert_allclose(got[s], advantages.grpo_advantages(
          rewards[s], mask, group_size=3), rtol=1e-6)

  def test_invalid_group_size_raises(self):
    with self.assertRaisesRegex(ValueError, "groups"):
      advantages.grpo_advantages(jnp.zeros(6), jnp.ones((6, 2)), group_size=4)
    with self.assertRaises(ValueError):
      advantages.rloo_advantages(jnp.zeros(6), jnp.ones((6, 2)), group_size=0)


class GaeTest(parameterized.TestCase):

  def _inputs(self, seed=0, b=4, t=6):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(b, t)).astype(np.float32)
    values = rng.normal(size=(b, t)).astype(np.float32)
    mask = _mask(b, t, seed)
    mask[0, 1] = 0.0  # an observation token in the middle of a response
    return rewards, values, mask

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((1.0, 1.0), (0.99, 0.95), (0.9, 0.0))
  def test_matches_verl_loop(self, gamma, lam):
    rewards, values, mask = self._inputs()
    adv, ret = self.variant(functools.partial(
        advantages.gae_advantages, gamma=gamma, lam=lam, whiten=False))(
            rewards, values, mask)
    want_adv, want_ret = _np_verl_gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, want_adv * mask, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, want_ret * mask, rtol=1e-5, atol=1e-5)
    white, _ = self.variant(functools.partial(
        advantages.gae_advantages, gamma=gamma, lam=lam))(
            rewards, values, mask)
    np.testing.assert_allclose(
        white, _np_masked_whiten(want_adv, mask) * mask, rtol=1e-4,
        atol=1e-5)

  def test_lambda_gamma_one_is_reward_to_go_minus_value(self):
    rewards, values, _ = self._inputs(seed=1)
    mask = _mask(4, 6, seed=5)
    adv, ret = advantages.gae_advantages(rewards, values, mask, whiten=False)
    rtg = np.flip(np.cumsum(np.flip(rewards * mask, -1), -1), -1)
    np.testing.assert_allclose(adv, (rtg - values) * mask, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(ret, rtg * mask, rtol=1e-5, atol=1e-5)

  def test_masked_tokens_change_nothing(self):
    rewards, values, mask = self._inputs(seed=2)
    junk = np.where(mask > 0, 0.0, 1e3).astype(np.float32)
    for whiten in (False, True):
      got = advantages.gae_advantages(rewards + junk, values - junk, mask,
                                      gamma=0.9, lam=0.8, whiten=whiten)
      want = advantages.gae_advantages(rewards, values, mask, gamma=0.9,
                                       lam=0.8, whiten=whiten)
      chex.assert_trees_all_close(got, want, rtol=1e-6)

  def test_vmaps_over_gamma(self):
    rewards, values, mask = self._inputs(seed=3)
    gammas = jnp.array([1.0, 0.9, 0.5])
    adv = jax.jit(jax.vmap(lambda g: advantages.gae_advantages(
        rewards, values, mask, gamma=g, lam=0.7)[0]))(gammas)
    for i, g in enumerate([1.0, 0.9, 0.5]):
      np.testing.assert_allclose(adv[i], advantages.gae_advantages(
          rewards, values, mask, gamma=g, lam=0.7)[0], rtol=1e-5, atol=1e-6)

  def test_last_token_rewards_and_whiten(self):
    mask = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 1]], np.float32)
    got = advantages.last_token_rewards(jnp.array([2.0, 5.0, -1.0]), mask)
    np.testing.assert_array_equal(got, [[0, 2, 0], [0, 0, 0], [0, 0, -1]])
    x = np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32)
    mask[1, 0] = 1.0
    np.testing.assert_allclose(advantages.masked_whiten(x, mask),
                               _np_masked_whiten(x, mask) * mask, rtol=1e-5)


if __name__ == "__main__":
  absltest.main()
