"""Rewards by name, and weighted sums of them from a spec.

Every reward is `fn(completion: str, reference: str | dict) -> float`.
`get_reward_fn("math")` returns one; `get_reward_fn({"math": 1.0,
"format": 0.1})` (or the flag-friendly string `"math:1.0,format:0.1"`)
returns a picklable `WeightedSum`, which `scoring.score_batch` scores per
component (so a broken component costs only its own term, and each
component's mean is logged).
"""

from typing import Callable, Mapping

from jaxrl_ent.rewards import formats
from jaxrl_ent.rewards import math_answers
from jaxrl_ent.rewards import tasks

RewardFn = Callable[[str, "str | dict"], float]

REWARDS: dict[str, RewardFn] = {
    # Correctness of a final math answer.
    "math": math_answers.math_reward,
    "math_lenient": math_answers.math_lenient_reward,
    "gsm8k": math_answers.gsm8k_reward,
    "boxed": math_answers.boxed_reward,
    "exact_match": formats.exact_match_reward,
    "exact_match_ci": formats.exact_match_ci_reward,
    # Format (shape of the completion; the reference is ignored).
    "format": formats.answer_format_reward,
    "format_boxed": formats.boxed_format_reward,
    "format_gsm8k": formats.gsm8k_format_reward,
    "format_think": formats.think_format_reward,
    "format_think_answer": formats.think_answer_format_reward,
    # Synthetic tasks (rewards.tasks).
    "digits": tasks.digits_reward,
    "digits_partial": tasks.digits_partial_reward,
    "arithmetic": tasks.arithmetic_reward,
    "countdown": tasks.countdown_reward,
}


def register(name: str, fn: RewardFn | None = None, *, overwrite=False):
  """Adds `fn` under `name`; usable as `@register("name")`.

  Register module-level functions: the process-pool scorer pickles rewards
  by reference.
  """
  def add(f):
    if name in REWARDS and REWARDS[name] is not f and not overwrite:
      raise ValueError(f"reward {name!r} is already registered")
    if "," in name or ":" in name:
      raise ValueError(f"reward names cannot contain ',' or ':': {name!r}")
    REWARDS[name] = f
    return f
  return add if fn is None else add(fn)


class WeightedSum:
  """`sum_k w_k * fn_k(completion, reference)`; picklable, for a spec."""

  def __init__(self, weights: Mapping[str, float]):
    if not weights:
      raise ValueError("a reward spec needs at least one component")
    self.weights = {name: float(w) for name, w in weights.items()}
    self.fns = {name: _lookup(name) for name in self.weights}

  def __call__(self, completion: str, reference) -> float:
    return sum(w * self.fns[name](completion, reference)
               for name, w in self.weights.items())

  def __getstate__(self):
    return self.weights  # Functions are looked up again on unpickling.

  def __setstate__(self, weights):
    self.__init__(weights)

  def __repr__(self):
    return f"WeightedSum({self.weights})"


def _lookup(name: str) -> RewardFn:
  if name not in REWARDS:
    raise ValueError(f"unknown reward {name!r}; known: {sorted(REWARDS)}")
  return REWARDS[name]


def parse_spec(spec: "str | Mapping[str, float]") -> dict[str, float]:
  """`"math:1,format:0.1"` or a mapping -> `{name: weight}` (validated)."""
  if isinstance(spec, str):
    weights = {}
    for part in spec.split(","):
      name, _, w = part.strip().partition(":")
      if not name:
        raise ValueError(f"empty reward name in spec {spec!r}")
      try:
        weights[name] = float(w) if w else 1.0
      except ValueError:
        raise ValueError(f"bad weight {w!r} for {name!r} in {spec!r}") from None
  else:
    weights = {str(k): float(v) for k, v in dict(spec).items()}
  for name in weights:
    _lookup(name)
  return weights


def get_reward_fn(spec: "str | Mapping[str, float]") -> RewardFn:
  """A reward by name, or a `WeightedSum` for a weighted spec.

  Args:
    spec: `"math"` (one reward), or `{"math": 1.0, "format": 0.1}` /
      `"math:1.0,format:0.1"` (weighted sum).

  Returns:
    The registered function for a plain name, else a `WeightedSum`.

  Raises:
    ValueError: an unknown name or a malformed spec.
  """
  if isinstance(spec, str) and ":" not in spec and "," not in spec:
    return _lookup(spec.strip())
  return WeightedSum(parse_spec(spec))
