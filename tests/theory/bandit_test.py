"""Tests for jaxrl_ent.theory.bandit: gradients, closed forms, selection."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_ent.theory import bandit


def _np_softmax(z):
  e = np.exp(z - np.max(z))
  return e / e.sum()


def _finite_diff_grad(fn, z, eps=1e-4):
  z = np.asarray(z, np.float64)
  out = np.zeros_like(z)
  for i in range(z.size):
    dz = np.zeros_like(z)
    dz[i] = eps
    out[i] = (fn(z + dz) - fn(z - dz)) / (2 * eps)
  return out


_Z = np.array([0.3, -1.2, 0.8, 0.0, 2.0])
_R = np.array([0.1, 0.9, 0.4, 0.0, 0.7])


class BanditKernelTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_pg_direction_matches_finite_differences(self):
    fd = _finite_diff_grad(lambda z: _np_softmax(z) @ _R, _Z)
    got = self.variant(bandit.pg_direction)(_Z, _R)
    np.testing.assert_allclose(got, fd, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_soft_objective_gradient_matches_finite_differences(self):
    alpha = 0.3

    def soft(z):
      p = _np_softmax(z)
      return p @ _R - alpha * np.sum(p * np.log(p))

    fd = _finite_diff_grad(soft, _Z)
    got = self.variant(jax.grad(bandit.soft_objective))(_Z, _R, alpha)
    np.testing.assert_allclose(got, fd, atol=1e-5)

  @parameterized.parameters(0.05, 2.0)
  def test_soft_optimum_is_stationary_and_satisfies_value_identity(self, alpha):
    p = _np_softmax(_R / alpha)
    lhs = p @ _R - alpha * np.sum(p * np.log(p))
    rhs = alpha * np.log(np.sum(np.exp(_R / alpha)))
    self.assertAlmostEqual(lhs, rhs, places=12)

    @jax.jit
    def check(reward, alpha):
      star = bandit.soft_optimal_logits(reward, alpha)
      grad = jax.grad(bandit.soft_objective)(star, reward, alpha)
      # softmax(r/α) beats random policies on J_α.
      rand = jax.random.normal(jax.random.PRNGKey(0), (64, reward.size))
      others = jax.vmap(bandit.soft_objective, (0, None, None))(
          star + rand, reward, alpha)
      return grad, bandit.soft_value(reward, alpha), jnp.max(others)

    with jax.enable_x64(True):
      grad, value, best_other = map(np.asarray,
                                    check(jnp.asarray(_R), alpha))
    np.testing.assert_allclose(grad, 0.0, atol=1e-12)
    self.assertAlmostEqual(float(value), rhs, places=12)
    self.assertLess(float(best_other), rhs)

  @parameterized.parameters((0.5, 0.1), (1.0, 1.0), (0.2, 3.0))
  def test_two_action_gap(self, g, alpha):
    p = _np_softmax(np.array([g, 0.0]) / alpha)
    expected = g - p @ np.array([g, 0.0])
    self.assertAlmostEqual(float(bandit.two_action_gap(g, alpha)), expected,
                           places=6)

  def test_cov_scores_average_to_npg_covariance(self):
    pi = _np_softmax(_Z)
    logp = np.log(pi)
    adv = _R - pi @ _R
    c = bandit.cov_scores(_Z, jnp.asarray(adv))
    np.testing.assert_allclose(c, (logp - pi @ logp) * adv, rtol=1e-5)
    cov = pi @ (logp * adv) - (pi @ logp) * (pi @ adv)
    self.assertAlmostEqual(float(pi @ np.asarray(c)), cov, places=6)

  def test_clip_cov_drop_probabilities(self):
    pi = jnp.array([0.5, 0.3, 0.15, 0.05])
    cov = jnp.array([2.0, 0.5, 3.0, 6.0])
    # Eligible in (1, 5): actions 0 and 2, mass 0.65.
    q = bandit.clip_cov_drop(pi, cov, 0.13, 1.0, 5.0)
    np.testing.assert_allclose(q, [0.2, 0.0, 0.2, 0.0], rtol=1e-6)
    # ρ larger than the eligible mass drops every eligible token.
    q = bandit.clip_cov_drop(pi, cov, 0.9, 1.0, 5.0)
    np.testing.assert_allclose(q, [1.0, 0.0, 1.0, 0.0])
    # Nothing eligible: nothing dropped.
    q = bandit.clip_cov_drop(pi, cov, 0.1, 10.0, 20.0)
    np.testing.assert_allclose(q, 0.0)

  def test_kl_cov_select_takes_top_mass_fractionally(self):
    pi = jnp.array([0.5, 0.3, 0.15, 0.05])
    cov = jnp.array([2.0, 0.5, 3.0, 6.0])
    # Order by c: 3 (0.05), 2 (0.15), 0 (0.5); k = 0.3 takes 3, 2 fully and
    # 0.1 of action 0's mass.
    s = bandit.kl_cov_select(pi, cov, 0.3)
    np.testing.assert_allclose(s, [0.2, 0.0, 1.0, 1.0], rtol=1e-6)
    self.assertAlmostEqual(float(pi @ s), 0.3, places=6)

  def test_inverse_power_schedule(self):
    sched = bandit.inverse_power(0.5, 10.0, 0.5)
    np.testing.assert_allclose(sched(jnp.array([0.0, 30.0])),
                               [0.5, 0.25], rtol=1e-6)
    self.assertEqual(float(bandit.inverse_power(0.3, 1.0, 0.0)(1e6)), 0.3)

  def test_unknown_method_raises(self):
    hyper = bandit.Hyper(coef0=0.1, tau=1.0, power=0.0, lr=1.0)
    with self.assertRaisesRegex(ValueError, "unknown method"):
      bandit.train(jnp.zeros(3), jnp.ones(3), hyper, method="nope",
                   num_steps=2)


@functools.partial(jax.jit, static_argnames=("method", "num_inner"))
def _train(hyper, method, num_inner=1):
  return bandit.train(jnp.zeros(_R.size), jnp.asarray(_R), hyper,
                      method=method, num_steps=200, num_inner=num_inner)


class BanditTrainTest(parameterized.TestCase):

  def _run(self, method, num_inner=1, **hyper):
    values = dict(coef0=0.1, tau=10.0, power=0.0, lr=1.0, kl_frac=0.0)
    values.update(hyper)
    hyper = jax.tree.map(jnp.float32, bandit.Hyper(**values))
    return _train(hyper, method, num_inner)

  def test_vmap_over_coefficient_matches_loop(self):
    """The design test: coefficients are arrays, so vmap sweeps them."""
    alphas = jnp.array([0.05, 0.2, 1.0])

    def train(alpha):
      hyper = bandit.Hyper(coef0=alpha, tau=10.0, power=0.0, lr=1.0)
      return bandit.train(jnp.zeros(_R.size), jnp.asarray(_R), hyper,
                          method="er", num_steps=200)

    logits, metrics = jax.jit(jax.vmap(train))(alphas)
    chex.assert_shape(logits, (3, _R.size))
    chex.assert_shape(metrics["gap"], (3, 200))
    for i, alpha in enumerate(alphas):
      one, _ = self._run("er", coef0=alpha)
      np.testing.assert_allclose(logits[i], one, rtol=1e-5, atol=1e-6)

  def test_vmap_over_seeds_with_train_batch(self):
    rewards = jax.random.uniform(jax.random.PRNGKey(1), (4, 6))
    hyper = bandit.hyper_batch(4, coef0=0.1, tau=10.0, power=1.0, lr=1.0)
    logits, metrics = bandit.train_batch(
        jnp.zeros_like(rewards), rewards, hyper, method="clip_cov",
        num_steps=50)
    chex.assert_shape(logits, (4, 6))
    chex.assert_shape(metrics["policy"], (4, 50, 6))
    chex.assert_tree_all_finite(metrics)

  def test_er_converges_to_softmax_r_over_alpha(self):
    logits, _ = self._run("er", coef0=0.5, lr=2.0)
    np.testing.assert_allclose(jax.nn.softmax(logits),
                               _np_softmax(_R / 0.5), atol=1e-3)

  def test_zero_coefficient_clip_cov_and_single_step_kl_cov_equal_pg(self):
    pg, _ = self._run("pg")
    clip, _ = self._run("clip_cov", coef0=0.0)
    kl, _ = self._run("kl_cov", coef0=1.0, kl_frac=0.2)
    np.testing.assert_allclose(clip, pg, rtol=1e-6)
    # |log π − log π_old| has zero (sub)gradient on the rollout policy.
    np.testing.assert_allclose(kl, pg, rtol=1e-6)

  @parameterized.parameters(("clip_cov", 0.1, 1), ("kl_cov", 1.0, 3))
  def test_bias_is_sparse_and_bounded(self, method, coef, num_inner):
    _, m = self._run(method, num_inner=num_inner, coef0=coef, kl_frac=0.05)
    budget = coef if method == "clip_cov" else 0.05
    self.assertLessEqual(float(jnp.max(m["touched"])), budget + 1e-6)
    self.assertLessEqual(float(jnp.max(m["bias_ratio"])), 1.0 + 1e-5)
    self.assertGreater(float(jnp.max(m["bias_norm"])), 0.0)

  def test_er_bias_is_dense(self):
    _, m = self._run("er", coef0=0.1)
    # The uniform start maximises H, so ∇H = 0 there; afterwards every token.
    self.assertEqual(float(m["touched"][0]), 0.0)
    np.testing.assert_allclose(m["touched"][1:], 1.0, atol=1e-6)


if __name__ == "__main__":
  absltest.main()
