"""Shared pytrees of the entropy core: per-token statistics and cotangents.

Axis legend (used in shapes below and as name suffixes across `entropy/`):

  B  batch (sequences)
  T  time (response positions)
  N  tokens, flattened leading axes (N = B·T), padded to a chunk multiple
  V  vocabulary (Qwen ~152k)
  D  hidden width (final hidden state fed to the LM head)

Per-token arrays are `[B, T]` in the training step and `[N]` inside kernels;
every field below keeps whatever leading shape its producer was given.
"""

import flax.struct
import jax


@flax.struct.dataclass
class TokenStats:
  """Per-token statistics of the sampling distribution π = softmax(z / τ).

  All fields are float32 and share one leading shape, `[N]` or `[B, T]`.
  With `l_a = log π_a` and `y` the sampled token:

  Attributes:
    logp: `log π_y`, the log-prob of the sampled token.
    entropy: `H = −Σ_a π_a l_a`.
    m2: `Σ_a π_a² (l_a + H)`; the `a`-sum part of the sampled-token entropy
      change (entropy_methods.md §1.3, third row).
    m3: `Σ_a π_a² (l_a + H)² = ‖∂H/∂z‖²`; the entropy-bonus part (§1.5).
  """

  logp: jax.Array
  entropy: jax.Array
  m2: jax.Array
  m3: jax.Array


@flax.struct.dataclass
class TokenGrads:
  """Token-space cotangent of the loss: the `updates` of every controller.

  For a loss `L(logp_bt, entropy_bt)` the parameter gradient is `Jᵀ g` with
  `g = (∂L/∂logp_t, ∂L/∂H_t)` and `J` the Jacobian of the per-token stats, so
  editing `g` before the single backward pass edits the update (DESIGN.md §2).

  Attributes:
    logp: `∂L/∂logp_t`, float32 `[B, T]`.
    entropy: `∂L/∂H_t`, float32 `[B, T]`.
  """

  logp: jax.Array
  entropy: jax.Array
