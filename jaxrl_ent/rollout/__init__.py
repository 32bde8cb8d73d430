"""Rollout engine: jitted, sharded KV-cache sampler for group rollouts."""

from jaxrl_ent.rollout.sampler import (Rollout, SamplingParams,
                                        bucket_length, default_buckets,
                                        generate, generate_arrays, pad_prompts)
from jaxrl_ent.rollout.sampling import sample, truncate_logits
