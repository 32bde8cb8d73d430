"""Tests for jaxrl_ent.entropy.covariance against NumPy re-implementations."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_ent.entropy import covariance


def _batch(seed=0, b=4, t=8, masked=5):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.0, 3.0, (b, t)).astype(np.float32)
  old_logp = (logp + rng.normal(0.0, 0.3, (b, t))).astype(np.float32)
  adv = rng.normal(0.0, 2.0, (b, t)).astype(np.float32)
  mask = np.ones((b, t), np.float32)
  mask.flat[rng.choice(b * t, masked, replace=False)] = 0.0
  return logp, old_logp, adv, mask


def _np_scores(logp, adv, mask):
  v = mask.astype(bool)
  return (adv - adv[v].mean()) * (logp - logp[v].mean())


def _np_clip_cov_eligible(logp, old, adv, mask, eps_lo, eps_hi, lb, ub):
  """entropy_methods.md §2.4 Clip-Cov steps 1-5 (before the random draw)."""
  v = mask.astype(bool)
  r = np.exp(logp - old)
  l1, l2 = -adv * r, -adv * np.clip(r, 1 - eps_lo, 1 + eps_hi)
  c = _np_scores(logp, adv, mask)
  c[~v] = -np.inf
  c[(l2 > l1) & v] = -np.inf
  return v & (c > lb) & (c < ub)


class CovarianceTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_scores_match_numpy_and_are_detached(self):
    logp, _, adv, mask = _batch()
    got = self.variant(covariance.cov_scores)(logp, adv, mask)
    want = np.where(mask > 0, _np_scores(logp, adv, mask), 0.0)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    grad = jax.grad(lambda lp: jnp.sum(covariance.cov_scores(lp, adv, mask)))(
        jnp.asarray(logp))
    np.testing.assert_array_equal(grad, 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_batch_covariance_is_biased_empirical_cov(self):
    logp, _, adv, mask = _batch(seed=1)
    v = mask.astype(bool)
    want = np.cov(logp[v], adv[v], bias=True)[0, 1]
    got = self.variant(covariance.batch_covariance)(logp, adv, mask)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Masked tokens change nothing, whatever their values.
    moved = self.variant(covariance.batch_covariance)(
        np.where(v, logp, 50.0), np.where(v, adv, -80.0), mask)
    np.testing.assert_allclose(moved, want, rtol=1e-5)

  @parameterized.parameters((2e-4, 5000), (2e-4, 10000), (2e-4, 4999),
                            (0.25, 8), (0.3, 10), (0.29, 10), (1e-4, 10),
                            (0.002, 1500), (1.0, 7))
  def test_num_selected_matches_python_float64(self, ratio, n):
    got = covariance.num_selected(ratio, jnp.asarray(n))
    self.assertEqual(int(got), max(int(np.floor(ratio * n)), 1))

  @chex.variants(with_jit=True, without_jit=True)
  def test_clip_cov_single_eligible_token_is_selected(self):
    # Advantages ±1 around 0 and log-probs centred at -1: c_i = ±(l_i + 1).
    logp = np.full((2, 4), -1.0, np.float32)
    adv = np.array([[1, -1, 1, -1], [1, -1, 1, -1]], np.float32)
    logp[1, 2] = 1.0  # the only token with 1 < c < 5 (after re-centering)
    mask = np.ones_like(logp)
    want = _np_clip_cov_eligible(logp, logp, adv, mask, 0.2, 0.2, 1.0, 5.0)
    self.assertEqual(want.sum(), 1)
    fn = self.variant(functools.partial(covariance.clip_cov_selection,
                                        ratio=0.5))
    got = fn(jax.random.PRNGKey(3), logp, logp, adv, mask)
    np.testing.assert_array_equal(got, want)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(2e-4, 0.1, 0.5)
  def test_clip_cov_selects_a_subset_of_the_reference_eligible_set(self, ratio):
    logp, old, adv, mask = _batch(seed=2)
    elig = _np_clip_cov_eligible(logp, old, adv, mask, 0.2, 0.2, 0.2, 5.0)
    self.assertGreater(elig.sum(), 2)
    fn = self.variant(functools.partial(covariance.clip_cov_selection,
                                        ratio=ratio, lb=0.2))
    got = np.asarray(fn(jax.random.PRNGKey(0), logp, old, adv, mask))
    n_sel = max(int(np.floor(ratio * mask.sum())), 1)
    self.assertEqual(got.sum(), min(n_sel, elig.sum()))
    self.assertTrue(np.all(elig[got]))  # selected ⊆ eligible
    again = fn(jax.random.PRNGKey(0), logp, old, adv, mask)
    np.testing.assert_array_equal(again, got)  # reproducible from the key

  def test_clip_cov_subset_is_uniform_over_keys(self):
    logp, old, adv, mask = _batch(seed=2)
    elig = _np_clip_cov_eligible(logp, old, adv, mask, 0.2, 0.2, 0.2, 5.0)
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    picks = jax.jit(jax.vmap(lambda k: covariance.clip_cov_selection(
        k, logp, old, adv, mask, ratio=0.1, lb=0.2)))(keys)
    freq = np.asarray(picks).mean(0)
    k = min(max(int(0.1 * mask.sum()), 1), elig.sum())
    np.testing.assert_array_equal(freq[~elig], 0.0)
    # Each eligible token has probability k/#eligible; 4000 draws: sd ≤ .008.
    np.testing.assert_allclose(freq[elig], k / elig.sum(), atol=0.04)

  def test_clip_cov_empty_band_selects_nothing(self):
    logp, old, adv, mask = _batch()
    got = covariance.clip_cov_selection(jax.random.PRNGKey(0), logp, old, adv,
                                        mask, lb=100.0, ub=200.0)
    self.assertEqual(int(got.sum()), 0)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(1e-4, 0.1, 0.3)
  def test_kl_cov_is_top_k_of_valid_scores(self, ratio):
    logp, _, adv, mask = _batch(seed=4)
    got = np.asarray(self.variant(functools.partial(
        covariance.kl_cov_selection, ratio=ratio))(logp, adv, mask))
    v = mask.astype(bool)
    scores = _np_scores(logp, adv, mask)[v]
    n = max(1, int(np.floor(v.sum() * ratio)))
    want = np.zeros(v.sum(), bool)
    want[np.argsort(-scores)[:n]] = True
    np.testing.assert_array_equal(got[v], want)
    self.assertFalse(np.any(got[~v]))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0.0, 0.2, 0.5, 0.8, 1.0)
  def test_masked_quantile_matches_numpy(self, q):
    _, _, x, mask = _batch(seed=5)
    got = self.variant(covariance.masked_quantile)(x, mask, q)
    np.testing.assert_allclose(got, np.quantile(x[mask > 0], q), rtol=1e-6)

  def test_score_quantiles_are_numpy_quantiles_of_valid_scores(self):
    logp, _, adv, mask = _batch(seed=7)
    qs = covariance.SCORE_QUANTILES
    got = jax.jit(covariance.score_quantiles)(logp, adv, mask)
    scores = _np_scores(logp, adv, mask)[mask > 0]
    np.testing.assert_allclose(got, np.quantile(scores, qs), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(got[-1], scores.max(), rtol=1e-6)  # q=1: max
    # No valid token: zeros (a logged metric), not the threshold's +inf.
    np.testing.assert_array_equal(
        covariance.score_quantiles(logp, adv, np.zeros_like(mask)),
        np.zeros(len(qs)))

  def test_masked_quantile_of_nothing_is_inf(self):
    got = covariance.masked_quantile(jnp.ones(3), jnp.zeros(3), 0.5)
    self.assertEqual(float(got), np.inf)

  def test_high_entropy_selection_keeps_top_fraction(self):
    _, _, ent, mask = _batch(seed=6, masked=0)
    ent = np.abs(ent)
    got, tau = covariance.high_entropy_selection(ent, mask, quantile=0.25)
    np.testing.assert_allclose(tau, np.quantile(ent, 0.75), rtol=1e-6)
    np.testing.assert_array_equal(got, ent >= np.quantile(ent, 0.75))
    self.assertEqual(int(got.sum()), 8)  # 32 distinct values, top 25 %.


if __name__ == "__main__":
  absltest.main()
