"""Rollout engine: jitted, sharded KV-cache sampler for group rollouts."""

from jaxrl_ent.rollout.sampler import (Rollout, SamplingParams, generate,
                                       generate_arrays)
from jaxrl_ent.rollout.sampling import sample, truncate_logits
