"""The batch budget: a batch of hanging verifiers costs the budget, not N × timeout.

The bounds are correctness bounds of the timeout mechanism (generous, a
few seconds over the budget on a loaded 2-core machine), not performance
claims; without the budget the same batches take items × timeout_s / workers.
"""

import os
import sys
import time

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from jaxrl_ent.rewards import math_answers
from jaxrl_ent.rewards import registry
from jaxrl_ent.rewards import scoring

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scoring_fns  # pylint: disable=g-import-not-at-top,wrong-import-position
import scorer_testlib  # pylint: disable=g-import-not-at-top,wrong-import-position

_BUDGET = 1.0
_SLACK = 4.0  # Killing and respawning two workers, on a busy machine.


class BudgetTest(scorer_testlib.ScorerTestCase):

  def _check_budget(self, result, n, start):
    wall = time.perf_counter() - start
    self.assertLess(wall, _BUDGET + _SLACK)
    self.assertEqual(result.counts["timeouts"], n - result.counts["ok"])
    self.assertGreater(result.counts["over_budget"], 0)
    np.testing.assert_array_equal(result.rewards[result.status != 0], 0.0)
    self.assertTrue(np.all(result.status >= 0))
    return wall

  @parameterized.parameters("hangs_on_hang", "stubborn_on_hang")
  def test_every_item_hangs(self, name):
    # 16 hangs × timeout 2 s on 2 workers is ≥ 16 s without a budget.
    fn, n = getattr(scoring_fns, name), 16
    start = time.perf_counter()
    result = self.scorer.score(fn, ["hang"] * n, [None] * n, timeout_s=2.0,
                               batch_timeout_s=_BUDGET)
    self._check_budget(result, n, start)
    self.assertEqual(result.counts["ok"], 0)
    self.assertGreaterEqual(result.counts["restarts"], 1)
    # The replaced workers score the next batch normally.
    after = self.scorer.score(scoring_fns.correct, ["a", "b"], ["a", "c"],
                              timeout_s=5.0, batch_timeout_s=30.0)
    np.testing.assert_array_equal(after.rewards, [1.0, 0.0])
    self.assertEqual(after.counts["over_budget"], 0)

  def test_weighted_sum_shares_one_budget(self):
    registry.register("budget_test_hang", scoring_fns.hangs_on_hang,
                      overwrite=True)
    registry.register("budget_test_correct", scoring_fns.correct,
                      overwrite=True)
    fn = registry.get_reward_fn("budget_test_hang:1,budget_test_correct:1")
    start = time.perf_counter()
    result = self.scorer.score(fn, ["hang"] * 8, ["hang"] * 8, timeout_s=2.0,
                               batch_timeout_s=_BUDGET)
    self.assertLess(time.perf_counter() - start, _BUDGET + _SLACK)
    self.assertGreater(result.counts["over_budget"], 0)

  def test_fast_batch_is_untouched_by_the_budget(self):
    result = self.scorer.score(scoring_fns.correct, ["a"] * 50, ["a"] * 50,
                               timeout_s=5.0, batch_timeout_s=30.0)
    np.testing.assert_array_equal(result.rewards, 1.0)
    self.assertEqual(result.counts["over_budget"], 0)

  @parameterized.parameters("thread", "inline")
  def test_other_backends(self, backend):
    scorer = scoring.RewardScorer(backend=backend)
    n = 16
    start = time.perf_counter()
    result = scorer.score(scoring_fns.hangs_on_hang, ["hang"] * n, [None] * n,
                          timeout_s=2.0, batch_timeout_s=_BUDGET)
    self._check_budget(result, n, start)

  def test_bad_budget(self):
    with self.assertRaisesRegex(ValueError, "batch_timeout_s"):
      self.scorer.score(scoring_fns.correct, ["a"], ["a"],
                        batch_timeout_s=0.0)

  def test_the_issue_batch(self):
    # The issue's case: exponent towers and deep nesting under math_reward,
    # which took > 60 s and 53 s each before the input limits.
    texts = (["\\boxed{9^{9^{9^{9}}}}", "\\boxed{" + "(" * 5000 + ")" * 5000
              + "}"] * 8)
    start = time.perf_counter()
    result = self.scorer.score(math_answers.math_reward, texts,
                               ["3"] * len(texts), timeout_s=2.0,
                               batch_timeout_s=_BUDGET)
    self.assertLess(time.perf_counter() - start, _BUDGET + _SLACK)
    np.testing.assert_array_equal(result.rewards, 0.0)


if __name__ == "__main__":
  absltest.main()
