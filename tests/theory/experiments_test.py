"""Tests for the theory-lab experiment kernels (T1, T2, T5 closed forms)."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_ent.theory import annealing
from jaxrl_ent.theory import experiments
from jaxrl_ent.theory import report


def _np_entropy(z):
  p = np.exp(z - z.max())
  p /= p.sum()
  return -np.sum(p * np.log(p)), p


class ExperimentsTest(parameterized.TestCase):

  def test_log_log_slope_recovers_power(self):
    x = np.logspace(-3, -1, 5)
    y = np.stack([3.0 * x**2, 0.5 * x**3])
    np.testing.assert_allclose(experiments.log_log_slope(x, y), [2.0, 3.0])

  def test_t1_requires_float64(self):
    with jax.enable_x64(False):
      with self.assertRaisesRegex(ValueError, "float64"):
        experiments.require_x64()

  def test_entropy_change_error_orders(self):
    """Error slopes ≈ 2 (first order) and ≈ 3 (second order), in float64."""
    with jax.enable_x64(True):
      z = jnp.array([1.0, -0.5, 2.0, 0.3, -1.5])
      d = jnp.array([0.4, 1.0, -0.7, 0.2, 0.9])
      eta = jnp.logspace(-4, np.log10(3e-3), 5)
      err1, err2 = experiments.entropy_change_errors(z, d, eta)
    slopes = experiments.log_log_slope(eta, np.stack([err1, err2]))
    np.testing.assert_allclose(slopes, [2.0, 3.0], atol=0.05)

  def test_pg_entropy_changes_against_numpy(self):
    z = np.array([0.2, -1.0, 1.5, 0.4])
    r = np.array([0.3, 1.0, 0.1, 0.6])
    eta, alpha = 1e-3, 0.2
    with jax.enable_x64(True):
      got = jax.tree.map(float, experiments.pg_entropy_changes(
          jnp.asarray(z), jnp.asarray(r), eta, alpha))
    h, p = _np_entropy(z)
    logp = np.log(p)
    adv = r - p @ r
    # Exact changes straight from the definitions.
    self.assertAlmostEqual(got["pg_exact"],
                           _np_entropy(z + eta * p * adv)[0] - h, places=12)
    self.assertAlmostEqual(got["npg_exact"],
                           _np_entropy(z + eta * adv)[0] - h, places=12)
    # Closed-form first-order predictions (§1.3, §1.5).
    cov = lambda f, g: p @ ((f - p @ f) * (g - p @ g))
    self.assertAlmostEqual(got["pg_pred"], -eta * cov(logp, p * adv),
                           places=12)
    self.assertAlmostEqual(got["npg_pred"], -eta * cov(logp, adv), places=12)
    self.assertAlmostEqual(got["er_npg_pred"],
                           eta * alpha * (p @ logp**2 - (p @ logp) ** 2),
                           places=12)
    for name in ("pg", "npg", "er_pg", "er_npg"):
      rel = abs(got[name + "_exact"] / got[name + "_pred"] - 1)
      self.assertLess(rel, 0.05, name)

  @parameterized.parameters(0.05, 0.2)
  def test_clip_cov_fixed_point_is_stationary(self, rho):
    """softmax((1−ρ)r/λ) zeroes the expected Clip-Cov + anchor gradient."""
    with jax.enable_x64(True):
      r = jax.random.uniform(jax.random.PRNGKey(0), (6,))
      anchor = 0.3
      logits = (1 - rho) * r / anchor
      adv = r - jax.nn.softmax(logits) @ r
      pi = jax.nn.softmax(logits)
      # Every score is positive, so a fraction ρ of every token is dropped.
      keep = 1 - rho

      def objective(z):
        q = jax.nn.softmax(z)
        ent = -jnp.sum(q * jax.nn.log_softmax(z))
        return jnp.sum(q * keep * adv) + anchor * ent

      grad = jax.grad(objective)(logits)
      tv, margin = annealing.clip_cov_fixed_point(r, anchor, rho)
      expected_tv = 0.5 * jnp.sum(jnp.abs(pi - jax.nn.softmax(r / anchor)))
      np.testing.assert_allclose(grad, 0.0, atol=1e-12)
      self.assertGreater(float(margin), 0.0)
      self.assertAlmostEqual(float(tv), float(expected_tv), places=12)

  def test_markdown_table_escapes_pipes(self):
    row = report.Row("T0", "a | b", "1", "2", False)
    table = report.markdown_table([row])
    self.assertIn("a \\| b", table)
    self.assertIn("**no**", table)


if __name__ == "__main__":
  absltest.main()
