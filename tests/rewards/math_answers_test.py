"""Tests for jaxrl_ent.rewards.math_answers (hand-written expected values)."""

from absl.testing import absltest
from absl.testing import parameterized

from jaxrl_ent.rewards import math_answers


class ExtractTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("boxed_nested", r"so \boxed{\frac{1}{2}} done", r"\frac{1}{2}"),
      ("last_boxed", r"\boxed{1} then \boxed{2}", "2"),
      ("gsm8k", "She has 3.\n#### 1,234", "1,234"),
      ("answer_tag", "<think>hm</think><answer> 7 </answer>", "7"),
      ("unbalanced", r"\boxed{1", None),
      ("nothing", "I think it is 42", None),
  )
  def test_strict(self, text, expected):
    self.assertEqual(math_answers.extract_answer(text), expected)

  def test_lenient_falls_back_to_answer_is_then_last_number(self):
    lenient = math_answers.LENIENT_FORMATS
    self.assertEqual(
        math_answers.extract_answer("The answer is 12.", lenient), "12.")
    self.assertEqual(
        math_answers.extract_answer("3 apples, then 1,200,", lenient), "1,200")

  def test_reference_answer(self):
    self.assertEqual(math_answers.reference_answer("step\n#### 72"), "72")
    self.assertEqual(math_answers.reference_answer({"answer": " 5 "}), "5")
    with self.assertRaisesRegex(KeyError, "answer"):
      math_answers.reference_answer({"gold": "5"})


class EquivalenceTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("gsm8k_commas", "#### 1,234", "1234", 1.0),
      ("boxed_frac_vs_decimal", r"\boxed{\frac{1}{2}}", "0.5", 1.0),
      ("dfrac_shorthand", r"\boxed{\dfrac12}", "1/2", 1.0),
      ("dollar_and_period", "#### $1,234.", "1234", 1.0),
      ("trailing_zeros", "#### 1234.00", "1234", 1.0),
      ("negative_frac", r"\boxed{-\frac{3}{4}}", "-0.75", 1.0),
      ("percent", r"\boxed{50\%}", "50", 1.0),
      ("units", r"\boxed{5 \text{ cm}}", "5", 1.0),
      ("answer_tag", "<answer>-3</answer>", "-3", 1.0),
      ("full_gsm8k_reference", "#### 72", "Half of 144 is 72.\n#### 72", 1.0),
      ("dict_reference", r"\boxed{72}", {"answer": "72", "id": "q1"}, 1.0),
      ("wrong", "#### 41", "42", 0.0),
      ("close_is_not_equal", r"\boxed{\frac{1}{3}}", "0.33", 0.0),
      ("not_thousands", r"\boxed{1,2}", "12", 0.0),
      ("no_final_answer", "the result is 42", "42", 0.0),
  )
  def test_math_reward(self, completion, reference, expected):
    self.assertEqual(math_answers.math_reward(completion, reference), expected)

  def test_lenient_accepts_a_bare_number(self):
    self.assertEqual(math_answers.math_lenient_reward("so 42", "42"), 1.0)
    self.assertEqual(math_answers.math_lenient_reward("so 41", "42"), 0.0)

  def test_gsm8k_and_boxed_require_their_format(self):
    self.assertEqual(math_answers.gsm8k_reward(r"\boxed{4}", "4"), 0.0)
    self.assertEqual(math_answers.gsm8k_reward("#### 4", "4"), 1.0)
    self.assertEqual(math_answers.boxed_reward("#### 4", "4"), 0.0)
    self.assertEqual(math_answers.boxed_reward(r"\boxed{4}", "4"), 1.0)

  def test_parse_number(self):
    self.assertEqual(math_answers.parse_number("$1,234.50"),
                     math_answers.Fraction(2469, 2))
    self.assertEqual(math_answers.parse_number(r"\frac{-1}{2}"),
                     math_answers.Fraction(-1, 2))
    self.assertIsNone(math_answers.parse_number(r"\sqrt{2}"))
    self.assertIsNone(math_answers.parse_number("1/0"))


@absltest.skipUnless(math_answers.math_verify_available(), "no math-verify")
class MathVerifyTest(parameterized.TestCase):
  """Symbolic answers that only math-verify decides."""

  @parameterized.named_parameters(
      ("radical", r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}", 1.0),
      ("polynomial", r"\boxed{x^2 + 1}", "1 + x^2", 1.0),
      ("radical_vs_number", r"\boxed{\sqrt{4}}", "2", 1.0),
      ("wrong_radical", r"\boxed{\sqrt{3}}", r"\sqrt{2}", 0.0),
  )
  def test_symbolic(self, completion, reference, expected):
    self.assertEqual(math_answers.math_reward(completion, reference), expected)

  def test_numeric_path_needs_no_math_verify(self):
    self.assertTrue(math_answers.answers_equal("1,234", "1234",
                                               use_math_verify=False))
    self.assertFalse(math_answers.answers_equal(r"\sqrt{4}", "2",
                                                use_math_verify=False))


if __name__ == "__main__":
  absltest.main()
