"""Evaluator's pass@k: the unbiased estimator from `eval.num_samples` samples
per prompt, checked against brute-force enumeration of the k-subsets of the
samples it actually scored; with num_samples = 0 it is "any of pass_k"."""

import itertools

from absl.testing import absltest
import jax
import numpy as np

from configs import grpo_tiny
from jaxrl_ent import rewards
from jaxrl_ent import sharding
from jaxrl_ent.train import evaluation
from jaxrl_ent.train import policy_setup

_REWARD = "evaluation_test_even_length"


def _even_length(completion, reference):
  # About half of random completions succeed, so c varies over prompts.
  del reference
  return float(len(completion) % 2 == 0)


class _Recorder:
  """The inline scorer, keeping every batch of rewards it returned."""

  def __init__(self):
    self.inner = rewards.RewardScorer(backend="inline")
    self.rewards = []

  def score(self, reward_fn, texts, refs, **kw):
    res = self.inner.score(reward_fn, texts, refs, **kw)
    self.rewards.append(np.asarray(res.rewards))
    return res


def _brute_pass_at_k(solved_row, k):
  subsets = list(itertools.combinations(solved_row, k))
  return sum(any(s) for s in subsets) / len(subsets)


class EvaluatorPassAtKTest(absltest.TestCase):

  def _evaluate(self, num_samples):
    rewards.register(_REWARD, _even_length, overwrite=True)
    config = grpo_tiny.get_config("runlocal")
    config.sft.steps = 0
    config.eval.pass_k = 2
    config.eval.num_samples = num_samples
    config.rollout.max_new_tokens = 6
    mesh = sharding.make_mesh(dict(config.mesh))
    policy, tokenizer = policy_setup.initial_policy(config, mesh)
    scorer = _Recorder()
    evaluator = evaluation.Evaluator(
        config, tokenizer, rewards.get_reward_fn(_REWARD), scorer)
    with sharding.use_mesh(mesh):
      out = evaluator(policy, jax.random.key(evaluation.EVAL_KEY_SEED), mesh)
    # One batch of 8 prompts: the greedy scores, then the sampled ones.
    self.assertLen(scorer.rewards, 2)
    return out, scorer.rewards[1]

  def test_unbiased_from_more_samples_than_k(self):
    out, sampled = self._evaluate(num_samples=6)
    self.assertEqual(sampled.shape, (8 * 6,))
    solved = sampled.reshape(8, 6) >= 1.0
    want = np.mean([_brute_pass_at_k(row, 2) for row in solved])
    self.assertAlmostEqual(out["val/pass_at_2"], want, places=12)
    # The powers of 4 up to n come from the same samples: pass@1 is the
    # sampled accuracy, pass@4 the share of solving 4-subsets.
    self.assertAlmostEqual(out["val/pass_at_1"], solved.mean(), places=12)
    self.assertAlmostEqual(
        out["val/pass_at_4"],
        np.mean([_brute_pass_at_k(row, 4) for row in solved]), places=12)
    self.assertNotIn("val/pass_at_16", out)
    # Not the plug-in "any of the 6", which overestimates pass@2.
    c = solved.sum(axis=1)
    self.assertTrue(np.any((c > 0) & (c < 5)), c)
    self.assertLess(out["val/pass_at_2"], np.mean(solved.any(axis=1)))

  def test_zero_samples_means_pass_k(self):
    out, sampled = self._evaluate(num_samples=0)
    self.assertEqual(sampled.shape, (8 * 2,))
    self.assertAlmostEqual(out["val/pass_at_2"],
                           np.mean(sampled.reshape(8, 2).any(axis=1) > 0),
                           places=12)


if __name__ == "__main__":
  absltest.main()
