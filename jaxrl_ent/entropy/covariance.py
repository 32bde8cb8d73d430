"""Covariance scores (Cui et al. 2025) and the token selections built on them.

Every function takes per-token arrays of one shape (`[B, T]` in the train step;
any shape works, ranks are taken over the flattened array) and a mask whose
non-zero entries are the valid tokens. Selections have static shapes: counts
are traced scalars applied through sort ranks, never through boolean indexing,
so everything here jits, vmaps and shards.
"""

import chex
import jax
import jax.numpy as jnp


def masked_mean(x, mask):
  """Plain mean of `x` over `mask != 0`; 0 when no token is valid.

  Args:
    x: `[B, T]` values.
    mask: `[B, T]` validity (bool or 0/1).

  Returns:
    float32 scalar.
  """
  valid = jnp.asarray(mask).astype(bool)
  total = jnp.sum(jnp.where(valid, x, 0.0).astype(jnp.float32))
  return total / jnp.maximum(jnp.sum(valid), 1)


def token_mean_weights(mask):
  """Token-mean aggregation weights `mask / Σ mask` (verl `agg_loss`, §3.2)."""
  valid = jnp.asarray(mask).astype(jnp.float32)
  return valid / jnp.maximum(jnp.sum(valid), 1.0)


def weights_or_token_mean(weights, mask):
  """`weights` as float32, or `token_mean_weights(mask)` when it is None."""
  if weights is not None:
    return jnp.asarray(weights, jnp.float32)
  if mask is None:
    raise ValueError("pass `weights` or `mask` (token-mean is then assumed).")
  return token_mean_weights(mask)


def cov_scores(logp, advantages, mask):
  """Per-token covariance score of entropy_methods.md §1.4 / §2.4.

  .. math::
    c_i = (\\log π(y_i) − \\overline{\\log π})(A_i − \\bar A)

  with plain means over the valid tokens of the (micro-)batch given: no
  per-sequence or per-group centering, as in the reference. Inputs are
  detached (no gradient flows through `c`).

  Args:
    logp: `[B, T]` current log-probs of the sampled tokens.
    advantages: `[B, T]` advantages.
    mask: `[B, T]` validity.

  Returns:
    float32 `[B, T]`; 0 on invalid tokens (the reference leaves them
    undefined).
  """
  chex.assert_equal_shape([logp, advantages, mask])
  logp = jax.lax.stop_gradient(logp).astype(jnp.float32)
  advantages = jax.lax.stop_gradient(advantages).astype(jnp.float32)
  valid = jnp.asarray(mask).astype(bool)
  c = ((logp - masked_mean(logp, valid))
       * (advantages - masked_mean(advantages, valid)))
  return jnp.where(valid, c, 0.0)


def batch_covariance(logp, advantages, mask):
  """`mean_i c_i`: the biased empirical `Cov(log π(y), A)` over valid tokens.

  A Monte-Carlo estimate of the natural-PG entropy driver,
  `ΔH ≈ −η·mean_i c_i` (entropy_methods.md §1.4). Returns a float32 scalar.
  """
  return masked_mean(cov_scores(logp, advantages, mask), mask)


# Quantiles of the covariance score logged each step (`entropy/cov_score/*`):
# the body and the upper tail, where Clip-Cov's band and KL-Cov's top-k
# threshold sit, so both can be chosen from the task's own scores.
SCORE_QUANTILES = (0.5, 0.9, 0.99, 0.999, 1.0)


def score_quantiles(logp, advantages, mask, qs=SCORE_QUANTILES):
  """`masked_quantile` of `cov_scores` at each level of `qs`: float32
  `[len(qs)]`, zeros when no token is valid (a metric, not a threshold)."""
  values = masked_quantile(cov_scores(logp, advantages, mask), mask,
                           jnp.asarray(qs, jnp.float32))
  return jnp.where(jnp.isfinite(values), values, 0.0)


def num_selected(ratio, num_valid):
  """`max(⌊ratio · num_valid⌋, 1)` as int32, for a traced count.

  The product is formed in float32; a 1e-6 relative slack makes decimal
  ratios whose product is an integer (e.g. 2e-4 · 5000) floor to that
  integer, as the reference's float64 Python does.
  """
  prod = jnp.asarray(ratio, jnp.float32) * num_valid.astype(jnp.float32)
  return jnp.maximum(jnp.floor(prod * (1.0 + 1e-6)), 1.0).astype(jnp.int32)


def _top_count(priority, count):
  """Bool mask of the `count` largest entries of `priority` (flat ranks).

  Ties keep the lower flat index first (stable sort).
  """
  flat = priority.reshape(-1)
  order = jnp.argsort(-flat, stable=True)
  ranks = jnp.zeros_like(order).at[order].set(jnp.arange(flat.shape[0]))
  return (ranks < count).reshape(priority.shape)


def ppo_clipped(logp, old_logp, advantages, mask, *, clip_eps_low,
                clip_eps_high):
  """Tokens whose PPO surrogate is clipped: `(L2 > L1) & valid` (§2.4 step 1).

  `L1 = −A·r`, `L2 = −A·clip(r, 1 − ε_low, 1 + ε_high)`, `r = exp(logp − old)`.
  Returns bool `[B, T]`.
  """
  ratio = jnp.exp(logp - old_logp)
  loss1 = -advantages * ratio
  loss2 = -advantages * jnp.clip(ratio, 1.0 - clip_eps_low,
                                 1.0 + clip_eps_high)
  return (loss2 > loss1) & jnp.asarray(mask).astype(bool)


def clip_cov_selection(key, logp, old_logp, advantages, mask, *, ratio=2e-4,
                       lb=1.0, ub=5.0, clip_eps_low=0.2, clip_eps_high=0.2):
  """Tokens Clip-Cov detaches (Cui et al. 2025; entropy_methods.md §2.4).

  Eligible tokens are valid, not PPO-clipped and strictly inside the band
  `lb < c_i < ub`. Of them, `min(n_sel, #eligible)` are chosen uniformly at
  random, `n_sel = max(⌊ratio · #valid⌋, 1)`. The reference draws an unseeded
  `torch.randperm`; here random priorities from `key` are ranked, which gives
  the same uniform law reproducibly and with static shapes.

  Args:
    key: PRNG key.
    logp, old_logp, advantages, mask: `[B, T]`.
    ratio: fraction of valid tokens to select (float or scalar array).
    lb, ub: open band on the covariance score.
    clip_eps_low, clip_eps_high: the PPO clip range used to exclude tokens.

  Returns:
    bool `[B, T]`, the selected tokens.
  """
  chex.assert_equal_shape([logp, old_logp, advantages, mask])
  valid = jnp.asarray(mask).astype(bool)
  logp = jax.lax.stop_gradient(logp)
  c = cov_scores(logp, advantages, valid)
  clipped = ppo_clipped(logp, old_logp, advantages, valid,
                        clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high)
  eligible = valid & ~clipped & (c > lb) & (c < ub)
  count = jnp.minimum(num_selected(ratio, jnp.sum(valid)), jnp.sum(eligible))
  priority = jnp.where(eligible, jax.random.uniform(key, c.shape), -1.0)
  return _top_count(priority, count) & eligible


def kl_cov_selection(logp, advantages, mask, *, ratio=2e-4):
  """Tokens KL-Cov penalises: the top `max(1, ⌊ratio · #valid⌋)` by `c_i`.

  `ratio` is a FRACTION (verl `kl_cov_ratio`), not the original repo's
  `k_percent` (percent): the 7B recipe's `k_percent = 0.2` is `ratio = 2e-3`.

  Args:
    logp, advantages, mask: `[B, T]`.
    ratio: fraction of valid tokens (float or scalar array).

  Returns:
    bool `[B, T]`; ties among equal scores keep the lower flat index.
  """
  valid = jnp.asarray(mask).astype(bool)
  c = cov_scores(logp, advantages, valid)
  count = num_selected(ratio, jnp.sum(valid))
  return _top_count(jnp.where(valid, c, -jnp.inf), count) & valid


def masked_quantile(x, mask, q):
  """Linear-interpolation quantile of `x[mask]` (numpy/torch default method).

  Args:
    x: `[B, T]` values.
    mask: `[B, T]` validity.
    q: quantile in [0, 1] (float or scalar array).

  Returns:
    float32 scalar; `+inf` when no token is valid.
  """
  valid = jnp.asarray(mask).astype(bool).reshape(-1)
  n = jnp.sum(valid)
  # Invalid entries sort last, so the first n sorted values are x[mask].
  sorted_x = jnp.sort(jnp.where(valid, x.reshape(-1).astype(jnp.float32),
                                jnp.inf))
  pos = jnp.asarray(q, jnp.float32) * jnp.maximum(n - 1, 0).astype(jnp.float32)
  lo = jnp.floor(pos).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
  x_lo, x_hi = sorted_x[lo], sorted_x[hi]
  value = x_lo + (pos - lo) * (x_hi - x_lo)
  return jnp.where(n > 0, value, jnp.inf)


def high_entropy_selection(entropy, mask, *, quantile=0.2):
  """Forking tokens of Wang et al. 2025 (2506.01939): `H_t ≥ τ` and valid.

  `τ = Quantile_{1−ρ}({H_t : t valid})` with `ρ = quantile` (0.2 in the
  paper), over the tokens given (the batch or micro-batch).

  Returns:
    `(selected, tau)`: bool `[B, T]` and the float32 threshold.
  """
  tau = masked_quantile(jax.lax.stop_gradient(entropy), mask, 1.0 - quantile)
  return (entropy >= tau) & jnp.asarray(mask).astype(bool), tau
