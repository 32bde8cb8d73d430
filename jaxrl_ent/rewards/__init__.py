"""Verifiable rewards: math answers, exact match, format, synthetic tasks.

A reward is `fn(completion: str, reference: str | dict) -> float`; pick one
by name (`get_reward_fn("math")`, or a weighted spec such as
`"math:1.0,format:0.1"`) and score a batch with `score_batch`, which turns
errors, hangs and non-finite values into counted zeros.
"""

from jaxrl_ent.rewards.registry import get_reward_fn
from jaxrl_ent.rewards.registry import parse_spec
from jaxrl_ent.rewards.registry import register
from jaxrl_ent.rewards.registry import REWARDS
from jaxrl_ent.rewards.registry import WeightedSum
from jaxrl_ent.rewards.scoring import RewardScorer
from jaxrl_ent.rewards.scoring import score_batch
from jaxrl_ent.rewards.scoring import ScoreResult
from jaxrl_ent.rewards.tasks import generate as generate_task
from jaxrl_ent.rewards.tasks import TASKS
