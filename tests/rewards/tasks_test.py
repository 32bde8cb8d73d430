"""Tests for jaxrl_ent.rewards.tasks: generators, splits and verifiers."""

from absl.testing import absltest
from absl.testing import parameterized

from jaxrl_ent.rewards import registry
from jaxrl_ent.rewards import tasks

_COUNTDOWN = {"numbers": [3, 5, 7], "target": 22, "answer": "3 * 5 + 7"}


class VerifierTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("plain", "3*5+7", 1.0),
      ("answer_tag", "I try.\n<answer>(3 * 5) + 7</answer>", 1.0),
      ("with_equals", "3 * 5 + 7 = 22", 1.0),
      ("last_line", "let me see\n7 + 5 * 3", 1.0),
      ("unknown_number", "<answer>(7 + 5 + 10)</answer>", 0.0),
      ("reused_number", "7 * 3 + 7 - 5 - 1", 0.0),
      ("reuse_5", "5 * 5 - 3", 0.0),
      ("wrong_value", "3 * 7 + 5", 0.0),
      ("target_literal", "22", 0.0),
      ("unary_minus", "-3 + 5 * 5", 0.0),
      ("code", "__import__('os').system('true')", 0.0),
      ("garbage", "", 0.0),
      ("div_zero", "7 / (5 - 5)", 0.0),
  )
  def test_countdown(self, completion, expected):
    self.assertEqual(tasks.countdown_reward(completion, _COUNTDOWN), expected)

  def test_countdown_at_most_once_allows_unused_numbers(self):
    ref = {"numbers": [3, 5, 7], "target": 8, "answer": "3 + 5"}
    self.assertEqual(tasks.countdown_reward("3 + 5", ref), 1.0)

  @parameterized.named_parameters(
      ("exact", "4 1 3", 1.0, 1.0),
      ("no_spaces", "413", 1.0, 1.0),
      ("one_wrong", "4 1 2", 0.0, 2 / 3),
      ("too_long", "4 1 3 3", 0.0, 3 / 4),
      ("empty", "", 0.0, 0.0),
  )
  def test_digits(self, completion, exact, partial):
    ref = {"answer": "4 1 3"}
    self.assertEqual(tasks.digits_reward(completion, ref), exact)
    self.assertAlmostEqual(tasks.digits_partial_reward(completion, ref),
                           partial)

  @parameterized.named_parameters(
      ("bare", "6", 1.0), ("boxed", r"\boxed{6}", 1.0),
      ("sentence", "3 + 8 - 5 = 6", 1.0), ("wrong", "7", 0.0),
      ("none", "six", 0.0))
  def test_arithmetic(self, completion, expected):
    ref = {"answer": "6"}
    self.assertEqual(tasks.arithmetic_reward(completion, ref), expected)


class GenerateTest(parameterized.TestCase):

  def test_digits_example_by_hand(self):
    ex = tasks.generate("digits", 1, seed=3, ops=("reverse",))[0]
    digits = ex["prompt"].removeprefix("reverse: ").removesuffix(" =").split()
    self.assertEqual(ex["answer"].split(), digits[::-1])
    self.assertEqual(ex["op"], "reverse")

  def test_arithmetic_answer_matches_python(self):
    for ex in tasks.generate("arithmetic", 50, num_operands=4, paren_prob=0.5):
      expr = ex["expression"]
      self.assertRegex(expr, r"^[\d +\-*()]+$")
      # Our own generated text, checked against Python's arithmetic.
      self.assertEqual(int(ex["answer"]), eval(expr))  # pylint: disable=W0123

  @parameterized.parameters("digits", "arithmetic", "countdown")
  def test_answers_pass_their_verifier(self, task):
    fn = registry.get_reward_fn(tasks.TASKS[task].reward)
    for split in tasks.SPLITS:
      for ex in tasks.generate(task, 40, split=split):
        self.assertEqual(fn(ex["answer"], ex), 1.0, ex)

  @parameterized.parameters("digits", "arithmetic", "countdown")
  def test_deterministic_and_seeded(self, task):
    a = tasks.generate(task, 20, seed=1)
    self.assertEqual(a, tasks.generate(task, 20, seed=1))
    self.assertNotEqual(a, tasks.generate(task, 20, seed=2))
    self.assertLen({ex["id"] for ex in a}, 20)

  def test_heldout_prompts_never_in_train(self):
    # A small prompt space (10^3 + 10^2 digit strings) to force collisions.
    kw = dict(min_len=2, max_len=3)
    test = tasks.generate("digits", 60, split="test", **kw)
    train = {ex["prompt"] for seed in range(3)
             for ex in tasks.generate("digits", 2000, seed=seed, **kw)}
    test_prompts = [ex["prompt"] for ex in test]
    self.assertLen(set(test_prompts), 60)  # Held-out prompts are unique.
    self.assertEmpty(train & set(test_prompts))
    self.assertTrue(all(tasks.is_heldout("digits", p, 0.1)
                        for p in test_prompts))

  def test_difficulty_knob(self):
    for ex in tasks.generate("digits", 50, min_len=6, max_len=8,
                             ops=("copy", "sort")):
      self.assertBetween(ex["length"], 6, 8)
      self.assertIn(ex["op"], ("copy", "sort"))
    for ex in tasks.generate("countdown", 20, num_numbers=4, max_target=50):
      self.assertLen(ex["numbers"], 4)
      self.assertBetween(ex["target"], 1, 50)

  def test_too_small_space_raises(self):
    with self.assertRaisesRegex(ValueError, "too small"):
      tasks.generate("digits", 50, split="test", min_len=1, max_len=1)

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "unknown task"):
      tasks.generate("chess", 1)
    with self.assertRaisesRegex(ValueError, "split"):
      tasks.generate("digits", 1, split="valid")
    with self.assertRaisesRegex(ValueError, "ops"):
      tasks.generate("digits", 1, ops=("shuffle",))



class DemonstrationsTest(parameterized.TestCase):

  def test_digits_mistake_is_the_other_operation(self):
    # Written out by hand, not through _DIGIT_OPS.
    cases = [({"prompt": "reverse: 3 1 4 =", "op": "reverse"}, "3 1 4"),
             ({"prompt": "sort: 3 1 4 =", "op": "sort"}, "3 1 4"),
             ({"prompt": "copy: 3 1 4 =", "op": "copy"}, "4 1 3")]
    for example, wrong in cases:
      self.assertEqual(tasks.digits_mistake(example), wrong)

  @parameterized.parameters(("2 + 3 * 4", 20), ("7 - 2 * 3", 15),
                            ("(9 - 3) * 2 - 1", 11), ("8 * 2 - 3", 13))
  def test_arithmetic_mistake_reads_left_to_right(self, expression, value):
    self.assertEqual(tasks.arithmetic_mistake({"expression": expression}),
                     str(value))

  def test_share_of_right_answers_and_determinism(self):
    examples = tasks.generate("digits", 2000, min_len=3, max_len=4)
    demos = tasks.demonstrations("digits", examples, accuracy=0.3, seed=7)
    again = tasks.demonstrations("digits", examples, accuracy=0.3, seed=7)
    other = tasks.demonstrations("digits", examples, accuracy=0.3, seed=8)
    self.assertEqual(demos, again)
    self.assertNotEqual(demos, other)
    kept = [not d.get("demo_mistake") for d in demos]
    # Binomial(2000, 0.3): sd ~0.010, so 0.3 +- 0.04 is a 4-sigma band.
    # (Right answers are a little more: a palindrome's copy is its reverse.)
    self.assertAlmostEqual(sum(kept) / len(kept), 0.3, delta=0.04)
    for d, e in zip(demos, examples):
      self.assertEqual(d["prompt"], e["prompt"])
      if d.get("demo_mistake"):
        digits = e["prompt"].split(":")[1].rstrip("= ").split()
        self.assertEqual(d["answer"], " ".join(digits))  # The copy.
      else:
        self.assertEqual(d["answer"], e["answer"])
    # A mistake scores 0 under the task's verifier unless the digits are a
    # palindrome.
    for d, e in zip(demos, examples):
      if d.get("demo_mistake"):
        digits = e["prompt"].split(":")[1].rstrip("= ").split()
        self.assertEqual(tasks.digits_reward(d["answer"], e),
                         float(digits == digits[::-1]))

  def test_accuracy_one_keeps_the_examples(self):
    examples = tasks.generate("digits", 20)
    self.assertEqual(tasks.demonstrations("digits", examples, accuracy=1.0,
                                          seed=0), examples)

  def test_errors(self):
    examples = tasks.generate("countdown", 3)
    with self.assertRaisesRegex(ValueError, "no typical mistake"):
      tasks.demonstrations("countdown", examples, accuracy=0.5, seed=0)
    with self.assertRaisesRegex(ValueError, r"\[0, 1\]"):
      tasks.demonstrations("digits", examples, accuracy=1.5, seed=0)


if __name__ == "__main__":
  absltest.main()
