"""Tests for jaxrl_ent.rewards.scoring: failures become counted zeros."""

import os
import sys
import threading
import time

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from jaxrl_ent.rewards import registry
from jaxrl_ent.rewards import scoring

# The misbehaving rewards live in a plain module so that the worker
# processes can import them, under pytest and under `python this_file.py`.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scoring_fns  # pylint: disable=g-import-not-at-top,wrong-import-position
import scorer_testlib  # pylint: disable=g-import-not-at-top,wrong-import-position

_TIMEOUT = 0.4


class ProcessScorerTest(scorer_testlib.ScorerTestCase):

  def score(self, fn, completions, references=None):
    references = references or [None] * len(completions)
    return self.scorer.score(fn, completions, references, timeout_s=_TIMEOUT)

  def test_correct_rewards(self):
    res = self.score(scoring_fns.correct, ["a", "b", "c"], ["a", "x", "c"])
    np.testing.assert_array_equal(res.rewards, [1.0, 0.0, 1.0])
    self.assertEqual(res.rewards.dtype, np.float32)
    self.assertEqual(res.counts["ok"], 3)

  def test_raising(self):
    res = self.score(scoring_fns.raising, ["a"] * 5)
    np.testing.assert_array_equal(res.rewards, np.zeros(5))
    self.assertEqual(res.counts["errors"], 5)
    self.assertIn("RuntimeError: verifier bug", res.errors[0])
    np.testing.assert_array_equal(res.status, [scoring.ERROR] * 5)

  def test_hanging_is_interrupted_without_restart(self):
    t0 = time.perf_counter()
    res = self.score(scoring_fns.hangs_on_hang, ["ok", "hang", "ok", "ok"])
    self.assertLess(time.perf_counter() - t0, 5.0)
    np.testing.assert_array_equal(res.rewards, [1.0, 0.0, 1.0, 1.0])
    self.assertEqual(res.counts["timeouts"], 1)
    self.assertEqual(res.counts["restarts"], 0)

  def test_stuck_worker_is_killed_and_replaced(self):
    t0 = time.perf_counter()
    res = self.score(scoring_fns.stubborn_on_hang,
                     ["ok", "ok", "hang", "ok", "ok", "ok"])
    self.assertLess(time.perf_counter() - t0, 8.0)
    np.testing.assert_array_equal(res.rewards, [0.5, 0.5, 0.0, 0.5, 0.5, 0.5])
    self.assertEqual(res.counts["timeouts"], 1)
    self.assertEqual(res.counts["restarts"], 1)
    # The pool is whole again and the next (large) batch is quick.
    completions = [str(i % 3) for i in range(2000)]
    t0 = time.perf_counter()
    res = self.score(scoring_fns.correct, completions, ["0"] * 2000)
    self.assertLess(time.perf_counter() - t0, 3.0)
    self.assertAlmostEqual(float(res.rewards.sum()), 667.0)
    self.assertEqual(res.counts["ok"], 2000)

  def test_crashed_worker_is_replaced(self):
    res = self.score(scoring_fns.exits_on_exit, ["ok", "exit", "ok", "ok"])
    np.testing.assert_array_equal(res.rewards, [1.0, 0.0, 1.0, 1.0])
    self.assertEqual(res.counts["errors"], 1)
    self.assertEqual(res.counts["restarts"], 1)
    self.assertIn("worker died (exit code 3)", res.errors[0])

  def test_nonfinite_and_non_numbers(self):
    res = self.score(scoring_fns.nan_on_nan, ["nan", "x", "inf"])
    np.testing.assert_array_equal(res.rewards, [0.0, 1.0, 0.0])
    self.assertEqual(res.counts["nonfinite"], 2)
    res = self.score(scoring_fns.text_result, ["x"])
    self.assertEqual(res.counts["invalid"], 1)
    self.assertEqual(float(res.rewards[0]), 0.0)

  def test_then_a_normal_batch_is_fast(self):
    self.score(scoring_fns.hangs_on_hang, ["hang"])
    t0 = time.perf_counter()
    res = self.score(scoring_fns.correct, ["a"] * 100, ["a"] * 100)
    self.assertLess(time.perf_counter() - t0, 1.0)
    self.assertEqual(res.counts["ok"], 100)

  def test_weighted_sum_scores_components_separately(self):
    fn = registry.get_reward_fn({"math": 1.0, "format": 0.5})
    res = self.score(fn, [r"\boxed{2}", r"\boxed{3}", "2"], ["2", "2", "2"])
    np.testing.assert_allclose(res.rewards, [1.5, 0.5, 0.0])
    np.testing.assert_array_equal(res.components["math"], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(res.components["format"], [1.0, 1.0, 0.0])
    metrics = res.metrics()
    self.assertAlmostEqual(metrics["reward/mean"], 2.0 / 3.0, places=6)
    self.assertAlmostEqual(metrics["reward/format/mean"], 2.0 / 3.0, places=6)
    self.assertEqual(metrics["reward/errors"], 0.0)

  def test_lambda_runs_in_workers(self):
    res = self.score(lambda c, r: float(len(c)), ["a", "bb"])
    np.testing.assert_array_equal(res.rewards, [1.0, 2.0])
    self.assertEqual(res.counts["ok"], 2)

  def test_unpicklable_reward_falls_back_to_threads(self):
    lock = threading.Lock()

    def locked(completion, reference):
      del completion, reference
      with lock:
        return 2.0

    with self.assertWarnsRegex(UserWarning, "not picklable"):
      res = self.score(locked, ["a", "b"])
    np.testing.assert_array_equal(res.rewards, [2.0, 2.0])

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "2 completions but 1"):
      self.scorer.score(scoring_fns.correct, ["a", "b"], ["a"])
    with self.assertRaisesRegex(ValueError, "timeout_s"):
      self.scorer.score(scoring_fns.correct, ["a"], ["a"], timeout_s=0)
    res = self.score(scoring_fns.correct, [])
    self.assertEqual(res.rewards.shape, (0,))


class OtherBackendsTest(parameterized.TestCase):

  @parameterized.parameters("thread", "inline")
  def test_failures_counted(self, backend):
    scorer = scoring.RewardScorer(backend)
    t0 = time.perf_counter()
    res = scorer.score(scoring_fns.hangs_on_hang, ["ok", "hang", "ok"],
                       [None] * 3, timeout_s=_TIMEOUT)
    self.assertLess(time.perf_counter() - t0, 3.0)
    np.testing.assert_array_equal(res.rewards, [1.0, 0.0, 1.0])
    self.assertEqual(res.counts["timeouts"], 1)
    res = scorer.score(scoring_fns.raising, ["a"], ["a"], timeout_s=_TIMEOUT)
    self.assertEqual(res.counts["errors"], 1)
    res = scorer.score(scoring_fns.nan_on_nan, ["nan", "x"], [None] * 2,
                       timeout_s=_TIMEOUT)
    self.assertEqual(res.counts["nonfinite"], 1)

  def test_thread_abandons_hung_call(self):
    res = scoring.RewardScorer("thread").score(
        scoring_fns.hangs_on_hang, ["hang", "ok"], [None] * 2,
        timeout_s=_TIMEOUT)
    self.assertEqual(res.counts["abandoned"], 1)
    np.testing.assert_array_equal(res.rewards, [0.0, 1.0])

  def test_score_batch_entry_point(self):
    res = scoring.score_batch(scoring_fns.correct, ["a", "b"], ["a", "a"],
                              backend="inline")
    np.testing.assert_array_equal(res.rewards, [1.0, 0.0])
    with self.assertRaisesRegex(ValueError, "backend"):
      scoring.RewardScorer("gpu")


class ConcatenateTest(absltest.TestCase):

  def test_blocks_scored_apart_equal_one_batch(self):
    # What the processes of a multi-host run do: each scores its block.
    spec = registry.get_reward_fn("exact_match:1.0,format:0.5")
    texts = ["<answer>1</answer>", "2", "<answer>3</answer>", "x"]
    refs = [{"answer": "1"}, {"answer": "2"}, {"answer": "4"}, {"answer": "x"}]
    whole = scoring.score_batch(spec, texts, refs, backend="inline")
    parts = [scoring.score_batch(spec, texts[i:i + 2], refs[i:i + 2],
                                 backend="inline") for i in (0, 2)]
    merged = scoring.ScoreResult.concatenate(parts)
    np.testing.assert_array_equal(merged.rewards, whole.rewards)
    np.testing.assert_array_equal(merged.status, whole.status)
    self.assertEqual(sorted(merged.components), sorted(whole.components))
    for name in whole.components:
      np.testing.assert_array_equal(merged.components[name],
                                    whole.components[name])
    self.assertEqual(merged.counts, whole.counts)
    self.assertEqual(merged.seconds, max(p.seconds for p in parts))
    strip = lambda m: {k: v for k, v in m.items() if "seconds" not in k}
    self.assertEqual(strip(merged.metrics()), strip(whole.metrics()))
    with self.assertRaisesRegex(ValueError, "no parts"):
      scoring.ScoreResult.concatenate([])


if __name__ == "__main__":
  absltest.main()
