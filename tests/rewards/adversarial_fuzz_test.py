"""Adversarial completions against every verifier: bounded, in [0, 1] or counted.

Property-based (hypothesis, derandomized, bounded examples): each example is
one batch of generated hostile strings (exponent towers, deep nesting,
megabyte strings, NUL, lone surrogates, undecoded bytes, random text)
scored by math, exact-match, format, digits, arithmetic and countdown
rewards through the process scorer with a batch budget. Every item must
come back as a reward in [0, 1] with status ok, or as a counted error or
timeout, and the batch must finish within its budget plus slack.
"""

import os
import sys
import time

from absl.testing import absltest
import hypothesis
from hypothesis import strategies as st
import numpy as np

from jaxrl_ent.rewards import registry
from jaxrl_ent.rewards import scoring

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scorer_testlib  # pylint: disable=g-import-not-at-top,wrong-import-position

REWARDS = ("math", "math_lenient", "gsm8k", "boxed", "exact_match",
           "exact_match_ci", "format", "format_boxed", "format_gsm8k",
           "format_think", "format_think_answer", "digits", "digits_partial",
           "arithmetic", "countdown")
REFERENCE = {"answer": "3", "numbers": [1, 2], "target": 3}
EXAMPLES = 40
BUDGET_S, SLACK_S = 3.0, 4.0


def _tower(depth, base="9"):
  text = base
  for _ in range(depth):
    text = f"{base}^{{{text}}}"
  return text


_WRAPS = st.sampled_from([
    "\\boxed{{{}}}", "#### {}", "<answer>{}</answer>", "The answer is {}",
    "{}", "<think>x</think><answer>{}</answer>", "{} = 3"])
_CORES = st.one_of(
    st.integers(1, 12).map(_tower),
    st.integers(1, 6000).map(lambda d: "(" * d + "1" + ")" * d),
    st.integers(1, 6000).map(lambda d: "{" * d + "1" + "}" * d),
    st.integers(1, 3000).map(lambda d: "\\frac{" * d + "1" + "}{2}" * d),
    st.sampled_from(["9^9^9^9", "((9^9)^9)^9", "2^{1000000}", "99999!",
                     "\x00", "\ud800", "\udfff\ud800", "1" * 64, "-0", "nan",
                     "1e999999", "<answer>" * 12000, "\\boxed{" * 5000]),
    st.text(max_size=200),
    st.text(alphabet="0123456789+-*/()^{}\\ .=", max_size=300),
)
_BIG = st.sampled_from(["x" * 1_000_000, "1" * 1_000_000,
                        "\\boxed{" + "9" * 999_000 + "}", "(" * 200_000])
_TEXTS = st.one_of(
    st.tuples(_WRAPS, _CORES).map(lambda wc: wc[0].format(wc[1])),
    _BIG,
    st.binary(max_size=64),  # Undecoded bytes: a type error, counted.
)


class AdversarialFuzzTest(scorer_testlib.ScorerTestCase):

  WARM_MATH_VERIFY = True

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.fns = {name: registry.get_reward_fn(name) for name in REWARDS}
    cls.scorer.score(cls.fns["math"], ["\\boxed{1}"], ["1"])  # Warm up.
    cls.cases = 0

  @classmethod
  def tearDownClass(cls):
    print(f"adversarial fuzz: {cls.cases} (string, reward) cases")
    super().tearDownClass()

  @hypothesis.settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
                       database=None,
                       suppress_health_check=list(hypothesis.HealthCheck))
  @hypothesis.given(texts=st.lists(_TEXTS, min_size=1, max_size=3))
  def test_every_verifier_is_bounded(self, texts):
    start = time.perf_counter()
    for name, fn in self.fns.items():
      result = self.scorer.score(fn, texts, [REFERENCE] * len(texts),
                                 timeout_s=1.0, batch_timeout_s=BUDGET_S)
      type(self).cases += len(texts)
      ok = result.status == scoring.OK
      self.assertTrue(np.all((result.rewards[ok] >= 0) &
                             (result.rewards[ok] <= 1)), name)
      np.testing.assert_array_equal(result.rewards[~ok], 0.0)
      self.assertTrue(np.all(np.isin(result.status, [
          scoring.OK, scoring.ERROR, scoring.TIMEOUT])), (name, result))
    # 15 rewards, each within its own budget.
    self.assertLess(time.perf_counter() - start,
                    len(self.fns) * (BUDGET_S + SLACK_S))

  def test_known_hostile_inputs_cost_milliseconds(self):
    texts = ["\\boxed{" + _tower(4) + "}", "\\boxed{" + "(" * 5000 + ")" *
             5000 + "}", "<answer>" * 12000, "x" * 1_000_000, "\x00\ud800"]
    for name in ("math", "format", "countdown", "arithmetic", "exact_match"):
      start = time.perf_counter()
      result = self.scorer.score(self.fns[name], texts,
                                 [REFERENCE] * len(texts), timeout_s=5.0)
      self.assertLess(time.perf_counter() - start, 3.0, name)
      self.assertEqual(result.counts["timeouts"], 0, name)


if __name__ == "__main__":
  absltest.main()
