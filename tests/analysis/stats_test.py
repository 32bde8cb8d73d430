"""jaxrl_ent/analysis/stats.py against hand computations: pass@k by brute
enumeration of k-subsets, IQM by sorting and cutting, the bootstrap against
a hand-rolled resampling loop on the same RNG stream, the probability of
improvement by counting pairs, the Wilcoxon p-value by enumerating signs."""

from fractions import Fraction
import itertools
import math
import types
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from scipy import stats as sp_stats

from jaxrl_ent.analysis import stats


def brute_pass_at_k(n, c, k):
  samples = [1] * c + [0] * (n - c)
  subsets = list(itertools.combinations(range(n), k))
  return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def hand_iqm(values):
  v = sorted(np.ravel(values).tolist())
  cut = len(v) // 4  # trim_mean(0.25): floor(N / 4) from each end.
  kept = v[cut:len(v) - cut]
  return sum(kept) / len(kept)


def hand_poi(x, y):
  """Task-averaged share of (i, j) pairs with x_i > y_j, ties 1/2."""
  x, y = np.atleast_2d(np.asarray(x, float).T).T, np.atleast_2d(
      np.asarray(y, float).T).T
  per_task = []
  for t in range(x.shape[1]):
    wins = 0.0
    for a in x[:, t]:
      for b in y[:, t]:
        wins += 1.0 if a > b else 0.5 if a == b else 0.0
    per_task.append(wins / (x.shape[0] * y.shape[0]))
  return sum(per_task) / len(per_task)


def hand_percentile_ci(values, size=0.95):
  """Linear-interpolation percentiles, written out (numpy's default)."""
  v = sorted(values)
  out = []
  for q in ((1 - size) / 2, 1 - (1 - size) / 2):
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    out.append(v[lo] + (pos - lo) * (v[hi] - v[lo]))
  return np.array(out)


def normal_scores(num_runs, num_tasks=1, scale=1.0, shift=0.0):
  """Deterministic 'normal' scores: the quantiles at (i + 1/2) / R."""
  q = sp_stats.norm.ppf((np.arange(num_runs) + 0.5) / num_runs)
  return shift + scale * np.tile(q[:, None], (1, num_tasks))


class PassAtKTest(parameterized.TestCase):

  def test_matches_brute_force_enumeration(self):
    cases = [(n, c, k) for n in range(1, 8) for c in range(n + 1)
             for k in range(1, n + 1)]
    n, c, k = (np.array(v) for v in zip(*cases))
    got = stats.pass_at_k(n, c, k)
    want = [brute_pass_at_k(*case) for case in cases]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    self.assertLen(cases, 168)

  def test_closed_values(self):
    # pass@1 = c / n; n = k: solved by any sample; C(7,2)/C(10,2) = 21/45.
    np.testing.assert_allclose(
        stats.pass_at_k(16, np.arange(17), 1), np.arange(17) / 16,
        atol=1e-15)
    np.testing.assert_array_equal(
        stats.pass_at_k(4, [0, 1, 2, 4], 4), [0.0, 1.0, 1.0, 1.0])
    self.assertAlmostEqual(float(stats.pass_at_k(10, 3, 2)), 24 / 45,
                           places=15)
    self.assertEqual(float(stats.pass_at_k(10, 0, 5)), 0.0)
    self.assertEqual(float(stats.pass_at_k(10, 6, 5)), 1.0)  # n - c < k.

  def test_stable_for_large_n(self):
    # C(n, k) overflows float64 near n = 1030; the product form does not.
    for n, c, k in ((200, 100, 100), (2000, 3, 1000), (2000, 1997, 2)):
      exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
      self.assertAlmostEqual(float(stats.pass_at_k(n, c, k)), float(exact),
                             places=12)

  def test_vectorised_over_prompts(self):
    n = np.array([16, 16, 20, 5])
    c = np.array([0, 3, 20, 2])
    got = stats.pass_at_k(n, c, 4)
    self.assertEqual(got.shape, (4,))
    for g, ni, ci in zip(got, n, c):
      self.assertAlmostEqual(
          g, 1 - math.comb(ni - ci, 4) / math.comb(ni, 4), places=13)

  @parameterized.named_parameters(
      ("k_above_n", 4, 1, 5, "k=5 exceeds n"),
      ("c_above_n", 4, 5, 1, r"c \(correct samples\) exceeds n"),
      ("negative_c", 4, -1, 1, "c must be >= 0"),
      ("negative_n", -4, 0, 1, "n must be >= 0"),
      ("zero_k", 4, 1, 0, "k must be >= 1"),
      ("fractional_c", 4, 1.5, 1, "c must be integers"),
      ("bool_n", True, 1, 1, "n must be integers"))
  def test_errors_name_the_argument(self, n, c, k, message):
    with self.assertRaisesRegex(ValueError, message):
      stats.pass_at_k(n, c, k)


class IqmTest(parameterized.TestCase):

  def test_hand_values(self):
    # N = 8: cut 2 each end -> mean(3, 4, 5, 6) = 4.5 (the 100 is cut).
    self.assertAlmostEqual(
        float(stats.iqm(np.array([[1, 2, 3, 4, 5, 6, 7, 100]]).T)), 4.5)
    # N = 10 (not divisible by 4): floor(2.5) = 2 cut each end, 6 kept.
    x = np.array([[0, 1, 2, 3, 4], [5, 6, 7, 8, 90]])  # [R=2, T=5]
    self.assertAlmostEqual(float(stats.iqm(x)), (2 + 3 + 4 + 5 + 6 + 7) / 6)
    # N = 3: floor(0.75) = 0, nothing cut: the mean.
    self.assertAlmostEqual(float(stats.iqm([[1.0], [2.0], [9.0]])), 4.0)

  @parameterized.parameters((5, 1), (6, 3), (7, 2), (16, 1), (9, 4))
  def test_matches_sort_and_cut(self, num_runs, num_tasks):
    x = np.random.default_rng(num_runs).normal(size=(num_runs, num_tasks))
    self.assertAlmostEqual(float(stats.iqm(x)), hand_iqm(x), places=12)

  def test_keeps_leading_axes(self):
    x = np.random.default_rng(0).normal(size=(3, 7, 2))
    np.testing.assert_allclose(stats.iqm(x), [hand_iqm(m) for m in x],
                               atol=1e-12)

  def test_rejects_a_vector(self):
    with self.assertRaisesRegex(ValueError, r"\[runs, tasks\]"):
      stats.iqm(np.ones(5))


class BootstrapTest(parameterized.TestCase):

  def _hand_loop(self, seed, x, statistic, reps):
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(reps):
      idx = rng.integers(0, x.shape[0], size=x.shape)
      resampled = np.array([[x[idx[r, t], t] for t in range(x.shape[1])]
                            for r in range(x.shape[0])])
      values.append(statistic(resampled))
    return hand_percentile_ci(values)

  @parameterized.parameters((0, 1), (1, 3))
  def test_equals_hand_rolled_loop_on_the_same_stream(self, seed,
                                                      num_tasks):
    x = np.random.default_rng(seed + 10).normal(size=(9, num_tasks))
    point, ci = stats.bootstrap_ci(seed, x, stats.iqm, reps=400)
    self.assertAlmostEqual(point, hand_iqm(x), places=12)
    np.testing.assert_allclose(ci, self._hand_loop(seed, x, hand_iqm, 400),
                               atol=1e-12)
    # Chunked resampling draws the same stream.
    with mock.patch.object(stats, "_CHUNK_ELEMENTS", 7 * x.size):
      _, chunked = stats.bootstrap_ci(seed, x, stats.iqm, reps=400)
    np.testing.assert_array_equal(chunked, ci)

  def test_same_seed_same_interval_other_seed_other(self):
    x = np.random.default_rng(1).normal(size=(12, 2))
    a = stats.bootstrap_ci(5, x, reps=500)[1]
    np.random.seed(99)  # The global stream plays no part.
    np.testing.assert_array_equal(stats.bootstrap_ci(5, x, reps=500)[1], a)
    self.assertFalse(np.array_equal(stats.bootstrap_ci(6, x, reps=500)[1],
                                    a))

  def test_contains_point_and_shrinks_with_more_runs(self):
    widths = {}
    for num_runs in (16, 64, 256):
      x = normal_scores(num_runs, num_tasks=2, shift=0.3)
      for name, fn in (("iqm", stats.iqm), ("mean", stats.mean)):
        point, (lo, hi) = stats.bootstrap_ci(0, x, fn, reps=4000)
        self.assertLess(lo, point)
        self.assertLess(point, hi)
        widths[name, num_runs] = hi - lo
    for name in ("iqm", "mean"):
      for small, big in ((16, 64), (64, 256)):
        ratio = widths[name, small] / widths[name, big]
        self.assertBetween(ratio, 1.6, 2.5, (name, small, ratio))

  def test_resamples_within_tasks(self):
    # Task 0 scores all 0, task 1 all 1: every stratified resample has mean
    # 1/2; pooling runs across tasks would not.
    x = np.stack([np.zeros(10), np.ones(10)], axis=1)
    point, ci = stats.bootstrap_ci(0, x, stats.mean, reps=300)
    self.assertEqual(point, 0.5)
    np.testing.assert_array_equal(ci, [0.5, 0.5])

  def test_arguments_checked(self):
    with self.assertRaisesRegex(ValueError, "scores must be"):
      stats.bootstrap_ci(0, np.ones((2, 2, 2)))
    with self.assertRaisesRegex(ValueError, "non-finite"):
      stats.bootstrap_ci(0, [1.0, np.nan])
    with self.assertRaisesRegex(ValueError, "reps"):
      stats.bootstrap_ci(0, [1.0, 2.0], reps=0)
    with self.assertRaisesRegex(ValueError, "size"):
      stats.bootstrap_ci(0, [1.0, 2.0], size=95)


class ProbabilityOfImprovementTest(parameterized.TestCase):

  def test_hand_value_with_a_tie(self):
    # Pairs (1,1) tie, (1,0), (2,1), (2,0) wins: 3.5 / 4.
    self.assertEqual(float(stats.probability_of_improvement(
        [[1.0], [2.0]], [[1.0], [0.0]])), 0.875)

  @parameterized.parameters((4, 4, 1), (5, 3, 2), (8, 6, 3))
  def test_matches_pair_count_and_mann_whitney(self, n, m, num_tasks):
    rng = np.random.default_rng(n * m)
    # Integer scores, so ties are common.
    x = rng.integers(0, 4, size=(n, num_tasks)).astype(float)
    y = rng.integers(0, 4, size=(m, num_tasks)).astype(float)
    got = float(stats.probability_of_improvement(x, y))
    self.assertAlmostEqual(got, hand_poi(x, y), places=12)
    u = [sp_stats.mannwhitneyu(x[:, t], y[:, t]).statistic / (n * m)
         for t in range(num_tasks)]
    self.assertAlmostEqual(got, float(np.mean(u)), places=12)
    self.assertAlmostEqual(
        float(stats.probability_of_improvement(y, x)), 1 - got, places=12)

  def test_ci_equals_hand_loop(self):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(5, 2))
    reps = 300
    point, ci = stats.probability_of_improvement_ci(7, x, y, reps=reps)
    # rliable's independent resampling: X's indices for all replicates
    # are drawn first, then Y's (one chunk).
    r = np.random.default_rng(7)
    ix = r.integers(0, 6, size=(reps, 6, 2))
    iy = r.integers(0, 5, size=(reps, 5, 2))
    cols = np.arange(2)
    values = [hand_poi(x[ix[b], cols], y[iy[b], cols]) for b in range(reps)]
    self.assertAlmostEqual(point, hand_poi(x, y), places=12)
    np.testing.assert_allclose(ci, hand_percentile_ci(values), atol=1e-12)
    self.assertLessEqual(ci[0], point)
    self.assertLessEqual(point, ci[1])

  def test_separated_and_identical_methods(self):
    y = normal_scores(16)
    point, ci = stats.probability_of_improvement_ci(0, y + 10, y, reps=500)
    self.assertEqual(point, 1.0)
    np.testing.assert_array_equal(ci, [1.0, 1.0])
    self.assertEqual(stats.verdict(ci, "greater", null=0.5), "held")
    point, ci = stats.probability_of_improvement_ci(0, y, y, reps=2000)
    self.assertEqual(point, 0.5)
    self.assertEqual(stats.verdict(ci, "greater", null=0.5), "undecided")

  def test_shapes_checked(self):
    with self.assertRaisesRegex(ValueError, "same tasks"):
      stats.probability_of_improvement_ci(0, np.ones((3, 2)), np.ones((3, 1)))
    with self.assertRaisesRegex(ValueError, "same seeds"):
      stats.probability_of_improvement_ci(0, np.ones((3, 1)),
                                          np.ones((4, 1)), paired=True)


def exact_wilcoxon_p(d):
  """Two-sided exact signed-rank p-value, by enumerating all 2^S signs."""
  ranks = sp_stats.rankdata(np.abs(d))
  w = ranks[d > 0].sum()
  totals = [sum(r for r, s in zip(ranks, signs) if s)
            for signs in itertools.product((0, 1), repeat=len(d))]
  below = sum(t <= w for t in totals) / len(totals)
  above = sum(t >= w for t in totals) / len(totals)
  return min(1.0, 2 * min(below, above))


class PairedTest(absltest.TestCase):

  def test_constant_shift_is_held(self):
    y = np.random.default_rng(0).normal(size=(16, 2))
    res = stats.paired_test(0, y + 0.25, y, reps=1000)
    self.assertAlmostEqual(res.mean_diff, 0.25, places=12)
    np.testing.assert_allclose(res.ci, [0.25, 0.25], atol=1e-12)
    self.assertEqual(res.num_seeds, 16)
    self.assertEqual(stats.verdict(res.ci, "greater"), "held")
    self.assertEqual(stats.verdict(res.ci, "less"), "contradicted")
    # 16 equal positive differences (float noise in y + 0.25 - y is not a
    # rank): all tied at rank 8.5, so the normal approximation with the
    # tie correction: W+ = 136, mean 16·17/4 = 68, variance
    # 16·17·33/24 - (16³ - 16)/48 = 289, z = 68 / 17 = 4.
    self.assertAlmostEqual(res.p_value, 2 * sp_stats.norm.sf(4.0),
                           places=15)
    # Distinct positive differences: the exact p = 2 / 2^16.
    res = stats.paired_test(0, y[:, 0] + np.arange(1, 17) / 8, y[:, 0],
                            reps=100)
    self.assertAlmostEqual(res.p_value, 2.0 ** -15, places=15)

  def test_symmetric_noise_is_undecided(self):
    d = np.concatenate([np.arange(1, 9), -np.arange(1, 9)]) * 0.1
    y = np.random.default_rng(1).normal(size=16)
    res = stats.paired_test(0, y + d, y, reps=2000)
    self.assertAlmostEqual(res.mean_diff, 0.0, places=12)
    self.assertLess(res.ci[0], 0.0)
    self.assertGreater(res.ci[1], 0.0)
    self.assertEqual(stats.verdict(res.ci, "greater"), "undecided")
    self.assertAlmostEqual(res.p_value, 1.0, places=12)

  def test_pairing_removes_the_seed_effect(self):
    # Seeds differ a lot (shared by both methods); X is better by 0.05 on
    # every seed, give or take a little. Paired: held. Unpaired: not.
    rng = np.random.default_rng(2)
    seed_effect = 3.0 * rng.normal(size=16)
    y = seed_effect
    x = seed_effect + 0.05 + 0.01 * rng.normal(size=16)
    res = stats.paired_test(0, x, y, reps=2000)
    self.assertEqual(stats.verdict(res.ci, "greater"), "held")
    _, poi_ci = stats.probability_of_improvement_ci(0, x, y, reps=2000)
    self.assertEqual(stats.verdict(poi_ci, "greater", null=0.5), "undecided")

  def test_ci_equals_hand_loop_and_p_equals_enumeration(self):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
    res = stats.paired_test(3, x, y, reps=500)
    d = [float(np.mean(x[s] - y[s])) for s in range(10)]
    r = np.random.default_rng(3)
    values = []
    for _ in range(500):
      idx = r.integers(0, 10, size=10)
      values.append(sum(d[i] for i in idx) / 10)
    np.testing.assert_allclose(res.ci, hand_percentile_ci(values),
                               atol=1e-12)
    self.assertAlmostEqual(res.mean_diff, sum(d) / 10, places=12)
    self.assertAlmostEqual(res.p_value, exact_wilcoxon_p(np.array(d)),
                           places=12)

  def test_no_difference_at_all(self):
    y = normal_scores(8)
    res = stats.paired_test(0, y, y, reps=100)
    self.assertEqual(res.p_value, 1.0)
    np.testing.assert_array_equal(res.ci, [0.0, 0.0])
    self.assertEqual(stats.verdict(res.ci, "greater"), "undecided")

  def test_unpaired_shapes_refused(self):
    with self.assertRaisesRegex(ValueError, "same seeds"):
      stats.paired_test(0, np.ones(8), np.ones(7))


class VerdictTest(parameterized.TestCase):

  @parameterized.parameters(
      ((0.1, 0.5), "greater", 0.0, "held"),
      ((0.1, 0.5), "less", 0.0, "contradicted"),
      ((-0.5, -0.1), "less", 0.0, "held"),
      ((-0.5, -0.1), "greater", 0.0, "contradicted"),
      ((0.0, 0.5), "greater", 0.0, "undecided"),  # Touches zero.
      ((-0.5, 0.0), "less", 0.0, "undecided"),
      ((-0.1, 0.1), "greater", 0.0, "undecided"),
      ((0.0, 0.0), "greater", 0.0, "undecided"),
      ((0.55, 0.9), "greater", 0.5, "held"),
      ((0.3, 0.45), "greater", 0.5, "contradicted"),
      ((0.3, 0.5), "less", 0.5, "undecided"))
  def test_cases(self, ci, direction, null, want):
    self.assertEqual(stats.verdict(np.array(ci), direction, null=null), want)

  @parameterized.parameters(
      ((np.nan, 1.0), "greater", "finite"),
      ((0.5, 0.1), "greater", "lower <= upper"),
      ((0.1, 0.2, 0.3), "greater", r"\(lower, upper\)"),
      ((0.1, 0.2), "up", "direction"),
      ((0.1, 0.2), 1, "direction"))
  def test_bad_input(self, ci, direction, message):
    with self.assertRaisesRegex(ValueError, message):
      stats.verdict(ci, direction)


class FisherZTest(absltest.TestCase):

  def test_hand_values(self):
    # Two runs: r = 0.6 (n = 13, weight 10) and r = 0.8 (n = 23, weight 20).
    z = (10 * math.atanh(0.6) + 20 * math.atanh(0.8)) / 30
    half = 1.959963984540054 / math.sqrt(30)
    p = stats.fisher_z_mean([0.6, 0.8], [13, 23])
    self.assertAlmostEqual(p.r, math.tanh(z), places=12)
    self.assertAlmostEqual(p.ci[0], math.tanh(z - half), places=9)
    self.assertAlmostEqual(p.ci[1], math.tanh(z + half), places=9)
    self.assertEqual((p.num_runs, p.num_pairs), (2, 36))
    # Pooling is not the plain mean of r (0.7): z weights the larger r.
    self.assertGreater(p.r, 0.7)

  def test_one_run_is_itself_and_short_runs_are_dropped(self):
    p = stats.fisher_z_mean([0.5, -0.9], [50, 3])
    self.assertAlmostEqual(p.r, 0.5, places=12)
    self.assertEqual(p.num_runs, 1)
    self.assertTrue(math.isnan(stats.fisher_z_mean([0.5], [2]).r))

  def test_covers_the_true_correlation_about_95_percent(self):
    rng = np.random.default_rng(0)
    rho, cover = 0.7, 0
    cov = [[1.0, rho], [rho, 1.0]]
    for _ in range(400):
      rs, ns = [], []
      for n in (20, 40, 60):
        x = rng.multivariate_normal([0, 0], cov, size=n)
        rs.append(np.corrcoef(x[:, 0], x[:, 1])[0, 1])
        ns.append(n)
      lo, hi = stats.fisher_z_mean(rs, ns).ci
      cover += lo <= rho <= hi
    self.assertBetween(cover / 400, 0.91, 0.99)

  def test_the_analysis_table_states_the_pooled_value(self):
    from jaxrl_ent.analysis import report  # pylint: disable=g-import-not-at-top
    run = lambda r, n: types.SimpleNamespace(
        dh_corr=0.1, dh_n=2, exact_corr=r, exact_n=n,
        trapezoid_corr=math.nan, trapezoid_n=0)
    line = report.pooled_correlations([run(0.6, 13), run(0.8, 23)])
    want = stats.fisher_z_mean([0.6, 0.8], [13, 23])
    self.assertIn(f"exact {report.fmt(want.r, 3)} (95 % CI", line)
    self.assertIn("2 runs, 36 steps", line)
    self.assertNotIn("tabular", line)  # n = 2 runs carry no weight.
    self.assertEqual(report.pooled_correlations([run(0.6, 13)]), "")

  def test_arguments_checked(self):
    with self.assertRaisesRegex(ValueError, "2 correlations but 1"):
      stats.fisher_z_mean([0.1, 0.2], [10])
    with self.assertRaisesRegex(ValueError, r"in \[-1, 1\]"):
      stats.fisher_z_mean([1.5], [10])


if __name__ == "__main__":
  absltest.main()
