"""Synthetic verifiable tasks, generated from a seed, with their verifiers.

Every example is a dict with `id`, `prompt`, `answer`, `task` and
task-specific fields; the dict itself is the `reference` its verifier takes.

Splits are hash-based on the prompt text (and the task name), independent of
the seed and the difficulty settings: a prompt is either held-out or train
for good, so no held-out prompt is ever generated into a training set.

Tasks (difficulty knobs in brackets):
- `digits`: copy / reverse / sort a digit string, e.g. `reverse: 3 1 4 =`
  -> `4 1 3` [min_len, max_len, ops, alphabet]. Made for tiny-model smoke RL.
- `arithmetic`: `Compute 3 + 4 * 2 - 5.` -> `6` [num_operands, max_value,
  ops, paren_prob].
- `countdown`: reach a target with given numbers, each at most once, with
  `+ - * /` -> an expression [num_numbers, max_number, max_target].
"""

import dataclasses
import hashlib
import random
import re
from typing import Callable

from jaxrl_ent.rewards import math_answers
from jaxrl_ent.rewards import safe_eval

SPLITS = ("train", "test")


def heldout_score(task: str, prompt: str) -> float:
  """Uniform in [0, 1), fixed by (task, prompt); < fraction = held out."""
  digest = hashlib.blake2b(f"{task}\x00{prompt}".encode(), digest_size=8)
  return int.from_bytes(digest.digest(), "big") / 2.0**64


def is_heldout(task: str, prompt: str, heldout_fraction: float) -> bool:
  return heldout_score(task, prompt) < heldout_fraction


# --------------------------------------------------------------------------
# digits: copy / reverse / sort.

_DIGIT_OPS = {
    "copy": lambda xs: list(xs),
    "reverse": lambda xs: list(reversed(xs)),
    "sort": sorted,
}


def make_digits(rng: random.Random, *, min_len: int = 3, max_len: int = 5,
                ops=("reverse",), alphabet: str = "0123456789",
                sep: str = " ") -> dict:
  """`{op}: d1 d2 ... =` -> the transformed digit string."""
  if not 1 <= min_len <= max_len:
    raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
  unknown = set(ops) - set(_DIGIT_OPS)
  if not ops or unknown:
    raise ValueError(f"ops must be a non-empty subset of {sorted(_DIGIT_OPS)}")
  op = ops[rng.randrange(len(ops))]
  xs = [alphabet[rng.randrange(len(alphabet))]
        for _ in range(rng.randint(min_len, max_len))]
  ys = _DIGIT_OPS[op](xs)
  return dict(prompt=f"{op}: {sep.join(xs)} =", answer=sep.join(ys), op=op,
              length=len(xs))


def _tokens(text: str) -> list[str]:
  """Digit strings compare as symbol sequences: spaces are separators."""
  squashed = math_answers.check_completion(text).split()
  if len(squashed) == 1 and len(squashed[0]) > 1:
    return list(squashed[0])  # "413" written without separators.
  return squashed


def digits_reward(completion: str, reference) -> float:
  """1.0 iff the completion is exactly the answer sequence (spacing free)."""
  return float(_tokens(completion) == _tokens(reference["answer"]))


def digits_mistake(example: dict) -> str:
  """The answer of the wrong operation: reverse/sort -> copy, copy -> reverse.

  The typical slip of a demonstrator who knows the format and the digits
  but not which transformation was asked (see `demonstrations`)."""
  xs = example["prompt"].split(":", 1)[1].rstrip("= ").split()
  wrong = "reverse" if example["op"] == "copy" else "copy"
  return " ".join(_DIGIT_OPS[wrong](xs))


def digits_partial_reward(completion: str, reference) -> float:
  """Fraction of positions right, over max(len(pred), len(answer)): dense."""
  pred, gold = _tokens(completion), _tokens(reference["answer"])
  hits = sum(p == g for p, g in zip(pred, gold))
  return hits / max(len(pred), len(gold), 1)


# --------------------------------------------------------------------------
# arithmetic: multi-step integer expressions with precedence.


def make_arithmetic(rng: random.Random, *, num_operands: int = 3,
                    max_value: int = 9, ops: str = "+-*",
                    paren_prob: float = 0.0) -> dict:
  """`Compute 3 + 4 * 2 - 5.` -> `6` (exact integer arithmetic)."""
  if num_operands < 2 or max_value < 1 or not set(ops) <= set("+-*"):
    raise ValueError("need num_operands >= 2, max_value >= 1, ops in '+-*'")
  nums = [str(rng.randint(1, max_value)) for _ in range(num_operands)]
  signs = [ops[rng.randrange(len(ops))] for _ in range(num_operands - 1)]
  parts = [nums[0]]
  for s, x in zip(signs, nums[1:]):
    parts += [s, x]
  if num_operands > 2 and rng.random() < paren_prob:
    i = rng.randrange(num_operands - 1)            # Operand index to open at,
    j = rng.randrange(i + 1, num_operands)         # and to close after,
    if (i, j) != (0, num_operands - 1):            # never the whole thing.
      parts[2 * i] = "(" + parts[2 * i]
      parts[2 * j] += ")"
  expression = " ".join(parts)
  value, _ = safe_eval.evaluate(expression)
  return dict(prompt=f"Compute {expression}.", answer=str(int(value)),
              expression=expression)


def arithmetic_reward(completion: str, reference) -> float:
  """1.0 if the final number (boxed, ####, <answer>, last number) is right."""
  pred = math_answers.extract_answer(completion, math_answers.LENIENT_FORMATS)
  if pred is None:
    return 0.0
  return float(math_answers.answers_equal(pred, reference["answer"],
                                          use_math_verify=False))


def arithmetic_mistake(example: dict) -> str:
  """The value read strictly left to right, ignoring precedence (a slip)."""
  parts = example["expression"].replace("(", "").replace(")", "").split()
  value = int(parts[0])
  for op, x in zip(parts[1::2], parts[2::2]):
    value = {"+": value + int(x), "-": value - int(x),
             "*": value * int(x)}[op]
  return str(value)


# --------------------------------------------------------------------------
# countdown: reach a target with given numbers.


def _random_tree(rng, items, ops):
  """A random full binary expression (as text) over `items`, in order."""
  if len(items) == 1:
    return items[0]
  k = rng.randrange(1, len(items))
  left, right = _random_tree(rng, items[:k], ops), _random_tree(
      rng, items[k:], ops)
  op = ops[rng.randrange(len(ops))]
  left = f"({left})" if " " in left else left
  right = f"({right})" if " " in right else right
  return f"{left} {op} {right}"


def make_countdown(rng: random.Random, *, num_numbers: int = 3,
                   max_number: int = 20, max_target: int = 100,
                   ops: str = "+-*/") -> dict:
  """Numbers and a reachable target; `answer` is one solution expression."""
  if num_numbers < 2 or max_number < 1 or max_target < 1:
    raise ValueError("need num_numbers >= 2, max_number >= 1, max_target >= 1")
  numbers = [rng.randint(1, max_number) for _ in range(num_numbers)]
  for _ in range(100):
    order = [str(x) for x in rng.sample(numbers, len(numbers))]
    expression = _random_tree(rng, order, ops)
    try:
      value, _ = safe_eval.evaluate(expression, allow_unary=False)
    except safe_eval.EvalError:  # Division by zero.
      continue
    if value.denominator == 1 and 1 <= value <= max_target:
      break
  else:  # Rare: fall back to the sum, which is always valid.
    expression = " + ".join(str(x) for x in numbers)
    value = sum(numbers)
  nums_text = ", ".join(str(x) for x in numbers)
  return dict(
      prompt=(f"Using the numbers {nums_text}, each at most once, and + - * /"
              f" with parentheses, write an expression equal to {int(value)}."),
      answer=expression, numbers=numbers, target=int(value))


_EXPR_LINE_RE = re.compile(r"[\d\s()+\-*/×÷−.]+")


def countdown_expression(completion: str) -> str | None:
  """The expression a completion proposes: `<answer>`, boxed, or last line."""
  expr = math_answers.extract_answer(completion, ("answer_tag", "boxed"))
  if expr is None:
    lines = [ln for ln in completion.strip().splitlines() if ln.strip()]
    if not lines:
      return None
    expr = lines[-1]
  expr = expr.split("=")[0]  # "3 * 5 + 7 = 22" -> the left-hand side.
  return expr.strip() or None


def countdown_reward(completion: str, reference) -> float:
  """1.0 iff the expression uses given numbers at most once and hits target.

  Unparseable or unsafe text (anything but numbers, `+ - * /` and
  parentheses; no unary minus) scores 0; nothing is ever `eval`-ed.
  """
  expr = countdown_expression(completion)
  if expr is None or not _EXPR_LINE_RE.fullmatch(expr):
    return 0.0
  try:
    value, literals = safe_eval.evaluate(expr, allow_unary=False)
  except safe_eval.EvalError:
    return 0.0
  if not safe_eval.uses_at_most(literals, reference["numbers"]):
    return 0.0
  return float(value == reference["target"])


# --------------------------------------------------------------------------
# Registry and generation.


@dataclasses.dataclass(frozen=True)
class Task:
  """A synthetic task: `make(rng, **difficulty) -> fields`, and its reward."""
  name: str
  make: Callable[..., dict]
  reward: str  # Name in rewards.registry.REWARDS.
  # A plausible wrong answer for an example (for imperfect demonstrations),
  # or None where the task has no single typical slip.
  mistake: Callable[[dict], str] | None = None


TASKS = {
    "digits": Task("digits", make_digits, "digits", digits_mistake),
    "arithmetic": Task("arithmetic", make_arithmetic, "arithmetic",
                       arithmetic_mistake),
    "countdown": Task("countdown", make_countdown, "countdown"),
}


def generate(task: str, n: int, *, split: str = "train", seed: int = 0,
             heldout_fraction: float = 0.1, **difficulty) -> list[dict]:
  """`n` examples of `task` in `split`, deterministic in (seed, difficulty).

  Example i is drawn from `random.Random(f"{task}:{seed}:{i}")` and kept iff
  its prompt hashes into `split`; held-out (`test`) examples are also
  de-duplicated by prompt.

  Args:
    task: a name in `TASKS`.
    n: number of examples.
    split: `train` or `test` (held out).
    seed: generation seed (does not move the split).
    heldout_fraction: share of the prompt space that is held out.
    **difficulty: the task's knobs (see the module docstring).

  Returns:
    A list of example dicts (`id`, `prompt`, `answer`, `task`, ...).

  Raises:
    ValueError: unknown task/split, or the split's prompt space is too small
      for `n` distinct held-out prompts.
  """
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if not 0.0 < heldout_fraction < 1.0:
    raise ValueError(f"heldout_fraction must be in (0, 1): {heldout_fraction}")
  make, want_heldout = TASKS[task].make, split == "test"
  out, seen, i = [], set(), 0
  max_draws = 100 * n + 10_000
  while len(out) < n:
    if i >= max_draws:
      raise ValueError(
          f"{task}: found only {len(out)} of {n} {split} examples in "
          f"{max_draws} draws; the prompt space is too small for this "
          f"difficulty (raise lengths/ranges or lower n)")
    ex = make(random.Random(f"{task}:{seed}:{i}"), **difficulty)
    i += 1
    if is_heldout(task, ex["prompt"], heldout_fraction) != want_heldout:
      continue
    if want_heldout:
      if ex["prompt"] in seen:
        continue
      seen.add(ex["prompt"])
    out.append(dict(id=f"{task}/{split}/{seed}/{i - 1}", task=task, **ex))
  return out


def demonstrations(task: str, examples: list[dict], *, accuracy: float,
                   seed: int) -> list[dict]:
  """`examples` as an imperfect demonstrator answers them.

  Each example keeps its right answer with probability `accuracy` and gets
  the task's typical mistake (`Task.mistake`) otherwise, drawn once per
  example from `random.Random(f"demo:{task}:{seed}:{i}")`. A policy
  warm-started on these has the skill without preferring it: its samples
  are right a fraction of the time, so reinforcement learning has a
  behaviour to find and amplify (and an entropy to collapse) rather than a
  skill to learn from a sparse reward.

  Raises:
    ValueError: `accuracy` outside [0, 1], or < 1 for a task without a
      `mistake`.
  """
  if not 0.0 <= accuracy <= 1.0:
    raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
  if accuracy == 1.0:
    return list(examples)
  mistake = TASKS[task].mistake if task in TASKS else None
  if mistake is None:
    raise ValueError(f"task {task!r} has no typical mistake to demonstrate; "
                     f"imperfect demonstrations need one of "
                     f"{sorted(k for k, t in TASKS.items() if t.mistake)}")
  out = []
  for i, e in enumerate(examples):
    if random.Random(f"demo:{task}:{seed}:{i}").random() >= accuracy:
      e = dict(e, answer=mistake(e), demo_mistake=True)
    out.append(e)
  return out
