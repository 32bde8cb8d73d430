"""Tests for jaxrl_ent.rewards.safe_eval."""

from absl.testing import absltest
from absl.testing import parameterized

from jaxrl_ent.rewards import safe_eval

F = safe_eval.Fraction


class EvaluateTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("precedence", "3 + 4 * 2 - 5", F(6), [3, 4, 2, 5]),
      ("parens", "(3 + 4) * 2", F(14), [3, 4, 2]),
      ("left_assoc", "8 - 3 - 2", F(3), [8, 3, 2]),
      ("exact_division", "7 / 2 * 2", F(7), [7, 2, 2]),
      ("aliases", "6 × 2 ÷ 4 − 1", F(2), [6, 2, 4, 1]),
      ("unary", "-(2 + 3) * -1", F(5), [2, 3, 1]),
  )
  def test_values(self, text, value, literals):
    got, lits = safe_eval.evaluate(text)
    self.assertEqual(got, value)
    self.assertEqual(lits, [F(x) for x in literals])

  @parameterized.named_parameters(
      ("div_zero", "1 / (2 - 2)"),
      ("power", "2 ** 10"),
      ("names", "__import__('os')"),
      ("letters", "2 x 3"),
      ("unbalanced", "(1 + 2"),
      ("trailing", "1 + 2)"),
      ("empty", "  "),
      ("dangling_op", "1 +"),
      ("too_long", "1+" * 200 + "1"),
      ("too_deep", "(" * 40 + "1" + ")" * 40),
      ("huge_literal", "1" * 30),
      ("decimal", "1.5 + 1"),
  )
  def test_rejects(self, text):
    with self.assertRaises(safe_eval.EvalError):
      safe_eval.evaluate(text)

  def test_unary_can_be_forbidden(self):
    with self.assertRaisesRegex(safe_eval.EvalError, "unary"):
      safe_eval.evaluate("-3 + 5", allow_unary=False)

  def test_uses_at_most(self):
    self.assertTrue(safe_eval.uses_at_most([F(3), F(5)], [5, 3, 7]))
    self.assertTrue(safe_eval.uses_at_most([F(3), F(3)], [3, 3]))
    self.assertFalse(safe_eval.uses_at_most([F(3), F(3)], [3, 5]))
    self.assertFalse(safe_eval.uses_at_most([F(4)], [3, 5]))


if __name__ == "__main__":
  absltest.main()
