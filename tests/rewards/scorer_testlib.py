"""A test case holding one two-worker process scorer for the whole class
(worker start-up is the slow part of the reward tests)."""

from absl.testing import parameterized

from jaxrl_ent.rewards import scoring


class ScorerTestCase(parameterized.TestCase):
  """`cls.scorer`: a `RewardScorer` with 2 workers, killed 0.5 s past a
  timeout; set `WARM_MATH_VERIFY` to import math-verify in the workers."""

  WARM_MATH_VERIFY = False

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.scorer = scoring.RewardScorer(
        num_workers=2, warm_math_verify=cls.WARM_MATH_VERIFY, grace_s=0.5)

  @classmethod
  def tearDownClass(cls):
    cls.scorer.close()
    super().tearDownClass()
