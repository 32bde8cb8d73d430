"""fit_entropy_law against closed forms and independent numpy fits."""

import math

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from jaxrl_ent.analysis import entropy_law


class FitEntropyLawTest(parameterized.TestCase):

  def test_recovers_noiseless_coefficients(self):
    a, b = 0.35, 0.9
    h = np.linspace(0.05, 1.8, 25)
    r = -a * np.exp(h) + b
    fit = entropy_law.fit_entropy_law(h, r)
    self.assertTrue(fit.ok, fit.reason)
    self.assertAlmostEqual(fit.a, a, places=12)
    self.assertAlmostEqual(fit.b, b, places=12)
    self.assertAlmostEqual(fit.ceiling, b - a, places=12)
    self.assertAlmostEqual(fit.r2, 1.0, places=12)
    self.assertAlmostEqual(fit.rmse, 0.0, places=12)
    self.assertEqual(fit.n, 25)
    np.testing.assert_allclose(fit.predict(h), r, atol=1e-12)
    # The ceiling is the prediction at zero entropy.
    self.assertAlmostEqual(float(fit.predict(0.0)), b - a, places=12)

  @parameterized.parameters(0, 1, 2)
  def test_noisy_matches_polyfit_and_closed_form(self, seed):
    rng = np.random.default_rng(seed)
    h = rng.uniform(0.05, 2.0, size=200)
    r = -0.1 * np.exp(h) + 0.6 + rng.normal(0.0, 0.05, size=200)
    fit = entropy_law.fit_entropy_law(h, r)
    # R = slope·x + intercept with x = e^H, so a = −slope, b = intercept.
    x = np.exp(h)
    slope, intercept = np.polyfit(x, r, 1)
    np.testing.assert_allclose([fit.a, fit.b], [-slope, intercept],
                               rtol=1e-9)
    # Simple-regression closed form: slope = cov(x, R) / var(x).
    cov = np.mean((x - x.mean()) * (r - r.mean()))
    np.testing.assert_allclose(fit.a, -cov / np.var(x), rtol=1e-9)
    # R² by its definition, and (one regressor) as the squared correlation.
    pred = slope * x + intercept
    r2 = 1 - np.sum((r - pred) ** 2) / np.sum((r - r.mean()) ** 2)
    np.testing.assert_allclose(fit.r2, r2, rtol=1e-9)
    np.testing.assert_allclose(fit.r2, np.corrcoef(x, r)[0, 1] ** 2,
                               rtol=1e-9)
    np.testing.assert_allclose(fit.rmse, np.sqrt(np.mean((r - pred) ** 2)),
                               rtol=1e-9)
    self.assertEqual(fit.ceiling, fit.b - fit.a)

  def test_non_finite_pairs_are_dropped(self):
    h = np.array([0.1, 0.5, np.nan, 1.0, 1.5, 0.7])
    r = np.array([0.8, 0.7, 0.5, np.inf, 0.2, 0.6])
    fit = entropy_law.fit_entropy_law(h, r)
    keep = np.isfinite(h) & np.isfinite(r)
    ref = entropy_law.fit_entropy_law(h[keep], r[keep])
    self.assertEqual(fit.n, 4)
    self.assertEqual((fit.a, fit.b, fit.r2), (ref.a, ref.b, ref.r2))

  @parameterized.named_parameters(
      ("empty", [], []),
      ("two_points", [0.1, 0.2], [0.5, 0.4]),
      ("too_few_finite", [0.1, np.nan, 0.3, 0.4], [0.5, 0.4, np.nan, np.inf]),
  )
  def test_too_few_pairs_give_nan_fit(self, h, r):
    fit = entropy_law.fit_entropy_law(h, r)
    self.assertFalse(fit.ok)
    self.assertIn("need at least 3", fit.reason)
    for v in (fit.a, fit.b, fit.ceiling, fit.r2, fit.rmse):
      self.assertTrue(math.isnan(v))

  def test_constant_entropy_gives_nan_fit(self):
    fit = entropy_law.fit_entropy_law([0.4] * 5, [0.1, 0.2, 0.3, 0.2, 0.1])
    self.assertFalse(fit.ok)
    self.assertIn("constant", fit.reason)
    self.assertTrue(math.isnan(fit.a))
    self.assertEqual(fit.n, 5)

  def test_constant_reward_fits_flat_line_with_undefined_r2(self):
    fit = entropy_law.fit_entropy_law([0.1, 0.5, 1.0, 2.0], [0.3] * 4)
    self.assertTrue(fit.ok)
    self.assertAlmostEqual(fit.a, 0.0, places=12)
    self.assertAlmostEqual(fit.b, 0.3, places=12)
    self.assertTrue(math.isnan(fit.r2))

  @parameterized.named_parameters(
      ("length_mismatch", [0.1, 0.2, 0.3], [0.1, 0.2]),
      ("two_dimensional", [[0.1, 0.2, 0.3]], [[0.1, 0.2, 0.3]]),
  )
  def test_malformed_arguments_raise(self, h, r):
    with self.assertRaisesRegex(ValueError, "1-D arrays of equal length"):
      entropy_law.fit_entropy_law(h, r)


if __name__ == "__main__":
  absltest.main()
