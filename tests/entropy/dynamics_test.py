"""Tests for the token-space entropy dynamics in jaxrl_ent.entropy.dynamics.

The sign convention is checked from first principles: the logit step is
`Δz = −η ∂L/∂z` with `∂L/∂z` taken by jax.grad of a loss linear in the
per-token stats, and the entropy change is measured in float64.
"""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_ent.entropy import dynamics
from jaxrl_ent.entropy import token_stats
from jaxrl_ent.entropy import types


def _np_entropy(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -(np.exp(logp) * logp).sum(-1)


def _problem(seed=0, n=6, v=9):
  k_z, k_y, k_g = jax.random.split(jax.random.PRNGKey(seed), 3)
  logits = 2.0 * jax.random.normal(k_z, (n, v))
  tokens = jax.random.randint(k_y, (n,), 0, v)
  g = jax.random.normal(k_g, (2, n))
  return logits, tokens, types.TokenGrads(logp=g[0], entropy=g[1])


def _logit_step(logits, tokens, grads, lr):
  """Δz = −η ∂L/∂z for L = Σ_t g_l,t logp_t(z) + g_H,t H_t(z)."""

  def loss(z):
    logp = jax.nn.log_softmax(z)
    ent = -(jnp.exp(logp) * logp).sum(-1)
    logp_y = jnp.take_along_axis(logp, tokens[:, None], 1)[:, 0]
    return jnp.sum(grads.logp * logp_y + grads.entropy * ent)

  return -lr * jax.grad(loss)(logits)


class TokenEntropyChangeTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_equals_exact_logit_first_order_prediction(self):
    logits, tokens, grads = _problem()
    stats = token_stats.token_stats_from_logits(logits, tokens)
    got = self.variant(functools.partial(dynamics.token_entropy_change,
                                         lr=0.3))(stats, grads)
    delta = _logit_step(logits, tokens, grads, 0.3)
    want = dynamics.entropy_change_first_order(logits, delta)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)

  def test_matches_finite_differences_with_second_order_error(self):
    logits, tokens, grads = _problem(seed=1)
    stats = token_stats.token_stats_from_logits(logits, tokens)
    errors = []
    for lr in (1e-1, 1e-2):
      delta = _logit_step(logits, tokens, grads, lr)
      measured = _np_entropy(logits + delta) - _np_entropy(logits)
      predicted = np.asarray(dynamics.token_entropy_change(stats, grads, lr))
      # Same sign as the measured change wherever that change is not tiny.
      big = np.abs(measured) > 10 * lr**2
      self.assertTrue(np.all(np.sign(predicted[big]) == np.sign(measured[big])))
      errors.append(np.abs(predicted - measured).max())
    # First-order prediction: error O(η²), i.e. ~100× smaller per decade.
    self.assertGreater(errors[0] / errors[1], 30.0)
    self.assertLess(errors[0] / errors[1], 300.0)

  def test_special_cases_of_entropy_methods_section_1(self):
    logits, tokens, _ = _problem(seed=2)
    stats = token_stats.token_stats_from_logits(logits, tokens)
    pi_y = np.exp(stats.logp)
    w, alpha, lr = 0.7, 0.05, 0.1
    zeros = jnp.zeros_like(stats.logp)
    # Surrogate L = −w logp: −ηw[π_y(log π_y + H) − m2] (§1.3 third row).
    got = dynamics.token_entropy_change(
        stats, types.TokenGrads(logp=zeros - w, entropy=zeros), lr)
    want = -lr * w * (pi_y * (stats.logp + stats.entropy) - stats.m2)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Entropy bonus L = −αH: +ηα m3 ≥ 0 (§1.5).
    got = dynamics.token_entropy_change(
        stats, types.TokenGrads(logp=zeros, entropy=zeros - alpha), lr)
    np.testing.assert_allclose(got, lr * alpha * stats.m3, rtol=1e-6)
    self.assertTrue(np.all(np.asarray(got) >= 0.0))

  def test_high_probability_positive_advantage_lowers_entropy(self):
    # Cui et al. reading: reinforcing a likely token lowers H, a rare one
    # raises it (§1.3).
    logits = jnp.array([[3.0, 1.0, 0.0, -1.0]] * 2)
    tokens = jnp.array([0, 3])
    stats = token_stats.token_stats_from_logits(logits, tokens)
    grads = types.TokenGrads(logp=-jnp.ones(2), entropy=jnp.zeros(2))
    change = dynamics.token_entropy_change(stats, grads, 0.1)
    self.assertLess(float(change[0]), 0.0)
    self.assertGreater(float(change[1]), 0.0)


class LogitStepEntropyChangeTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(1.0, 0.5)
  def test_prediction_and_measurement(self, temperature):
    logits, _, _ = _problem(seed=3)
    direction = jax.random.normal(jax.random.PRNGKey(9), logits.shape)
    fn = self.variant(functools.partial(
        dynamics.logit_step_entropy_change, temperature=temperature))
    errors = []
    for scale in (1e-1, 1e-2):
      new_logits = logits + scale * direction
      predicted, measured = fn(logits, new_logits)
      want = (_np_entropy(np.asarray(new_logits) / temperature)
              - _np_entropy(np.asarray(logits) / temperature))
      np.testing.assert_allclose(measured, want, atol=2e-6)
      errors.append(np.abs(predicted - want).max())
    # −Cov_π(log π, Δz) is the exact first-order term: error O(|δ|²).
    self.assertGreater(errors[0] / errors[1], 30.0)
    self.assertLess(errors[0] / errors[1], 300.0)


if __name__ == "__main__":
  absltest.main()
