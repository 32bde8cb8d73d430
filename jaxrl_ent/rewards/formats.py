"""Format and exact-match rewards: fn(completion, reference) -> float in {0, 1}.

Format rewards ignore the reference: they check that the completion is in the
shape the prompt asked for (an extractable final answer, a `<think>` block),
and are meant as small shaping terms next to a correctness reward, e.g.
`{"math": 1.0, "format": 0.1}`. Inputs over `math_answers.
MAX_COMPLETION_CHARS` raise `InputTooLarge` (the scorer counts an error).
"""

import re

from jaxrl_ent.rewards import math_answers

_THINK_RE = re.compile(r"\s*<think>(.*?)</think>(.*)", re.DOTALL)
_THINK_ANSWER_RE = re.compile(
    r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _reference_text(reference) -> str:
  if isinstance(reference, dict):
    if "answer" not in reference:
      raise KeyError(f"reference dict has no 'answer' key: {sorted(reference)}")
    reference = reference["answer"]
  return str(reference)


def _squash(text: str) -> str:
  return " ".join(math_answers.check_completion(text).split())


def exact_match_reward(completion: str, reference) -> float:
  """1.0 iff the completion equals the answer, up to whitespace runs."""
  return float(_squash(completion) == _squash(_reference_text(reference)))


def exact_match_ci_reward(completion: str, reference) -> float:
  """Case-insensitive `exact_match_reward`."""
  return float(_squash(completion).casefold()
               == _squash(_reference_text(reference)).casefold())


def answer_format_reward(completion: str, reference=None) -> float:
  """1.0 if a final answer is extractable (`\\boxed{}`, `####`, `<answer>`)."""
  del reference
  return float(math_answers.extract_answer(
      completion, math_answers.STRICT_FORMATS) is not None)


def boxed_format_reward(completion: str, reference=None) -> float:
  """1.0 if the completion has a non-empty, balanced `\\boxed{...}`."""
  del reference
  return float(bool(math_answers.last_boxed(completion)))


def gsm8k_format_reward(completion: str, reference=None) -> float:
  """1.0 if the completion ends with a `#### x` line, x a number."""
  del reference
  math_answers.check_completion(completion)
  lines = completion.rstrip().splitlines()
  if not lines or not lines[-1].lstrip().startswith("####"):
    return 0.0
  ans = math_answers.extract_answer(lines[-1], ("gsm8k",))
  return float(ans is not None and math_answers.parse_number(ans) is not None)


def _tags_once(text: str, tags) -> bool:
  return all(text.count(t) == 1 for t in tags)


def think_format_reward(completion: str, reference=None) -> float:
  """1.0 for `<think>reasoning</think> answer`, both parts non-empty.

  Exactly one `<think>` and one `</think>`; nothing but whitespace before
  `<think>`.
  """
  del reference
  math_answers.check_completion(completion)
  if not _tags_once(completion, _TAGS[:2]):
    return 0.0
  m = _THINK_RE.fullmatch(completion)
  return float(bool(m and m.group(1).strip() and m.group(2).strip()))


def think_answer_format_reward(completion: str, reference=None) -> float:
  """1.0 for exactly `<think>..</think><answer>..</answer>` (R1-Zero)."""
  del reference
  math_answers.check_completion(completion)
  if not _tags_once(completion, _TAGS):
    return 0.0
  m = _THINK_ANSWER_RE.fullmatch(completion)
  return float(bool(m and m.group(1).strip() and m.group(2).strip()))
