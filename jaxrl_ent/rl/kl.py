"""KL estimators to a frozen reference, in-reward KL and the KL controller.

Single-sample estimators of `KL(π_θ ‖ π_ref)` at tokens sampled from `π_θ`
(Schulman 2020, "Approximating KL Divergence"), exactly verl `kl_penalty`
(entropy_methods.md §3.5). With `Δ = log π_ref − log π_θ`:

=====================  =============================  =========================
kind                   value                          note
=====================  =============================  =========================
`kl`, `k1`             `logp − ref`                   unbiased value
`abs`                  `|logp − ref|`
`mse`, `k2`            `½ (logp − ref)²`              gradient is the KL's
`low_var_kl`, `k3`     `clip(e^Δ − Δ − 1, −10, 10)`,  unbiased value, ≥ 0
                       `Δ` clipped to ±20
`<kind>+`              value of `<kind>`,             straight-through
                       gradient of k2
=====================  =============================  =========================

verl documents `k1+` and `k3+`; any base kind takes the suffix here (`k2+` is
k2). Why `+`: k1 and k3 are unbiased in value but their expected gradients are
not the KL gradient (k1's is 0 in expectation), while k2's is.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from jaxrl_ent.rl import aggregation

_sg = jax.lax.stop_gradient
BASE_KL_KINDS = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
KL_KINDS = BASE_KL_KINDS + tuple(k + "+" for k in BASE_KL_KINDS)


def validate_kl_kind(kind):
  """Returns `kind` if it is one of `KL_KINDS`.

  Raises:
    ValueError: for any other name.
  """
  if kind not in KL_KINDS:
    raise ValueError(f"Unknown KL estimator {kind!r}; expected one of "
                     f"{KL_KINDS}.")
  return kind


def _kl_forward(logp, ref_logp, kind):
  if kind in ("kl", "k1"):
    return logp - ref_logp
  if kind == "abs":
    return jnp.abs(logp - ref_logp)
  if kind in ("mse", "k2"):
    return 0.5 * jnp.square(logp - ref_logp)
  # low_var_kl / k3.
  delta = jnp.clip(ref_logp - logp, -20.0, 20.0)
  return jnp.clip(jnp.exp(delta) - delta - 1.0, -10.0, 10.0)


def kl_penalty(logp, ref_logp, kind):
  """Per-token KL estimate, verl `kl_penalty(logprob, ref_logprob, kind)`.

  .. math::
    k_1 = \\log π_θ - \\log π_{ref}, \\quad
    k_2 = \\tfrac12 (\\log π_θ - \\log π_{ref})^2, \\quad
    k_3 = e^{Δ} - Δ - 1 \\\\
    k^{+} = \\mathrm{sg}[k] + k_2 - \\mathrm{sg}[k_2]

  Args:
    logp: current log-probs of the sampled tokens (differentiable), any shape
      (`[B, T]` in practice).
    ref_logp: reference log-probs, same shape (a constant).
    kind: one of `KL_KINDS`.

  Returns:
    float32 array of `logp`'s shape. Not masked: aggregate with
    `aggregation.agg_loss`.

  Raises:
    ValueError: unknown `kind`.
  """
  validate_kl_kind(kind)
  chex.assert_equal_shape([logp, ref_logp])
  logp = jnp.asarray(logp, jnp.float32)
  ref_logp = jnp.asarray(ref_logp, jnp.float32)
  base = kind[:-1] if kind.endswith("+") else kind
  forward = _kl_forward(logp, ref_logp, base)
  if not kind.endswith("+") or base in ("mse", "k2"):
    return forward
  backward = 0.5 * jnp.square(logp - ref_logp)
  return backward - _sg(backward) + _sg(forward)


def kl_in_reward(token_rewards_bt, old_logp_bt, ref_logp_bt, mask_bt, beta, *,
                 kind="kl"):
  """KL as a per-token reward penalty, verl `apply_kl_penalty`.

  .. math::
    r_t \\leftarrow r_t - β\\, k(\\log π_{old}, \\log π_{ref})\\, M_t

  (Ziegler et al. 2019; `kind="kl"` is verl's default `algorithm.kl_penalty`,
  giving `r_t − β(old_logp − ref_logp)`). Everything is a constant: the
  penalty is part of the reward, not of the loss. Also returns the batch KL
  that verl feeds to the controller: the mean over sequences of each
  sequence's token-mean KL.

  Args:
    token_rewards_bt: `[B, T]` per-token rewards (see
      `advantages.last_token_rewards`).
    old_logp_bt: `[B, T]` behaviour log-probs.
    ref_logp_bt: `[B, T]` reference log-probs.
    mask_bt: `[B, T]` response mask.
    beta: KL coefficient `β` (scalar, may be traced).
    kind: KL estimator, one of `KL_KINDS`.

  Returns:
    `(rewards_bt, current_kl)`: float32 `[B, T]` rewards and a float32 scalar.
  """
  chex.assert_rank([token_rewards_bt, old_logp_bt, ref_logp_bt, mask_bt], 2)
  chex.assert_equal_shape([token_rewards_bt, old_logp_bt, ref_logp_bt,
                           mask_bt])
  kl_bt = aggregation.masked_token_values(
      kl_penalty(_sg(old_logp_bt), _sg(ref_logp_bt), kind), mask_bt)
  rewards_bt = jnp.asarray(token_rewards_bt, jnp.float32) - beta * kl_bt
  n_b = jnp.sum(jnp.asarray(mask_bt, jnp.float32), axis=-1)
  current_kl = jnp.mean(aggregation.safe_div(jnp.sum(kl_bt, axis=-1), n_b))
  return rewards_bt, current_kl


class AdaptiveKLState(NamedTuple):
  """State of the adaptive KL controller."""
  beta: jax.Array  # float32 [], the current coefficient β.


def adaptive_kl_init(init_beta):
  """Initial controller state with `β = init_beta`."""
  return AdaptiveKLState(beta=jnp.asarray(init_beta, jnp.float32))


def adaptive_kl_update(state, current_kl, n_steps, *, target_kl, horizon):
  """Adaptive KL coefficient (Ziegler et al. 2019), verl `AdaptiveKLController`.

  .. math::
    e = \\mathrm{clip}(\\mathrm{KL}/\\mathrm{target} - 1, -0.2, 0.2), \\qquad
    β \\leftarrow β\\,(1 + e \\cdot n_{steps} / \\mathrm{horizon})

  verl calls it once per batch with `n_steps` = the batch size. A fixed
  controller is simply not calling this.

  Args:
    state: `AdaptiveKLState`.
    current_kl: scalar observed KL (e.g. from `kl_in_reward`).
    n_steps: number of samples since the last update.
    target_kl: target KL (> 0).
    horizon: horizon (> 0).

  Returns:
    The new `AdaptiveKLState`.

  Raises:
    ValueError: a concrete non-positive `target_kl` or `horizon`.
  """
  for name, value in (("target_kl", target_kl), ("horizon", horizon)):
    if isinstance(value, (int, float)) and value <= 0:
      raise ValueError(f"{name} must be > 0, got {value}.")
  error = jnp.clip(jnp.asarray(current_kl, jnp.float32) / target_kl - 1.0,
                   -0.2, 0.2)
  return state._replace(beta=state.beta * (1.0 + error * n_steps / horizon))
