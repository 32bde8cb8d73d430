"""Length buckets and left padding: how prompts become static shapes.

Owned by the rollout (the sampler pads prompts into buckets so a run
compiles one program per bucket); the prompt pipeline uses the same
functions, so a batch it yields is already in its bucket.
"""

from typing import Sequence

import numpy as np


def default_buckets(max_length: int, smallest: int = 16) -> tuple[int, ...]:
  """Powers of two from `smallest` below `max_length`, then `max_length`."""
  out, b = [], smallest
  while b < max_length:
    out.append(b)
    b *= 2
  return tuple(out) + (max_length,)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= `length`."""
  for b in sorted(buckets):
    if b >= length:
      return b
  raise ValueError(f"length {length} exceeds the largest bucket "
                   f"{max(buckets)}")


def left_pad(token_lists: Sequence[np.ndarray], buckets: Sequence[int],
             pad_id: int) -> dict[str, np.ndarray]:
  """Left-pads to the smallest bucket that fits the longest prompt.

  Args:
    token_lists: B int token arrays.
    buckets: allowed padded lengths (static shapes: one program per bucket).
    pad_id: the padding token id.

  Returns:
    `tokens` int32 [B, P], `mask` int32 [B, P] (1 on real tokens), and
    `positions` int32 [B, P] (0 at each row's first real token, 0 on pads).
  """
  length = bucket_length(max(len(t) for t in token_lists), buckets)
  b = len(token_lists)
  tokens = np.full((b, length), pad_id, np.int32)
  mask = np.zeros((b, length), np.int32)
  for i, t in enumerate(token_lists):
    if len(t):
      tokens[i, length - len(t):] = t
      mask[i, length - len(t):] = 1
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  return dict(tokens=tokens, mask=mask, positions=positions)
