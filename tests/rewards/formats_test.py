"""Tests for jaxrl_ent.rewards.formats."""

from absl.testing import absltest
from absl.testing import parameterized

from jaxrl_ent.rewards import formats


class FormatsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("same", " 4 1  3\n", "4 1 3", 1.0),
      ("dict", "yes", {"answer": "yes"}, 1.0),
      ("different", "4 1 2", "4 1 3", 0.0),
      ("case", "Yes", "yes", 0.0),
  )
  def test_exact_match(self, completion, reference, expected):
    self.assertEqual(formats.exact_match_reward(completion, reference),
                     expected)

  def test_exact_match_ci(self):
    self.assertEqual(formats.exact_match_ci_reward("Yes", "yes"), 1.0)

  @parameterized.named_parameters(
      ("ok", "<think>add them</think> so \\boxed{4}", 1.0),
      ("leading_space", "\n <think>x</think>4", 1.0),
      ("empty_think", "<think> </think>4", 0.0),
      ("no_answer", "<think>x</think>  ", 0.0),
      ("two_blocks", "<think>a</think><think>b</think>4", 0.0),
      ("text_before", "hi <think>a</think>4", 0.0),
      ("unclosed", "<think>a 4", 0.0),
  )
  def test_think(self, completion, expected):
    self.assertEqual(formats.think_format_reward(completion, None), expected)

  @parameterized.named_parameters(
      ("ok", "<think>a</think>\n<answer>4</answer>\n", 1.0),
      ("trailing_text", "<think>a</think><answer>4</answer> bye", 0.0),
      ("no_think", "<answer>4</answer>", 0.0),
      ("empty_answer", "<think>a</think><answer></answer>", 0.0),
  )
  def test_think_answer(self, completion, expected):
    self.assertEqual(formats.think_answer_format_reward(completion), expected)

  @parameterized.named_parameters(
      ("boxed", r"so \boxed{x}", 1.0, 1.0, 0.0),
      ("gsm8k", "so\n#### 1,234", 1.0, 0.0, 1.0),
      ("gsm8k_not_last", "#### 4\nmore text", 1.0, 0.0, 0.0),
      ("gsm8k_not_number", "#### four", 1.0, 0.0, 0.0),
      ("none", "so 4", 0.0, 0.0, 0.0),
  )
  def test_answer_formats(self, completion, any_fmt, boxed, gsm8k):
    self.assertEqual(formats.answer_format_reward(completion), any_fmt)
    self.assertEqual(formats.boxed_format_reward(completion), boxed)
    self.assertEqual(formats.gsm8k_format_reward(completion), gsm8k)


if __name__ == "__main__":
  absltest.main()
