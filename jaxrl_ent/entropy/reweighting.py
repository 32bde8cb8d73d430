"""STEER token reweighting and the AEnt dead-band entropy bonus, as controllers.

Same conventions as `controllers.py`: each factory returns an
`optax.GradientTransformationExtraArgs` over `types.TokenGrads`, per-token
context arrives as keyword-only extra args (`[B, T]`), coefficients are floats,
arrays (vmappable) or schedules evaluated at `state.count`, and states are
NamedTuples of scalars.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrl_ent.entropy import covariance
from jaxrl_ent.entropy import dynamics
from jaxrl_ent.entropy import schedules
from jaxrl_ent.entropy import types

_F32 = jnp.float32
# STEER reference: k = −ln(w_min) / max(max|Ω|, 0.02), so a batch whose scores
# are all tiny is barely reweighted instead of having its noise amplified.
_STEER_SCORE_FLOOR = 0.02


def _zero(dtype=_F32):
  return jnp.zeros([], dtype)


def _check_ordered(low_name, low, high_name, high):
  lo, hi = schedules.concrete(low), schedules.concrete(high)
  if lo is not None and hi is not None and not (lo <= hi).all():
    raise ValueError(f"{low_name} must be <= {high_name}, got {low_name}="
                     f"{low}, {high_name}={high}.")


def steer_scores(logp, old_logp, advantages, entropy, *, score="reference",
                 m2=None, m3=None):
  """Per-token entropy-change score `Ω_t` of STEER (detached), `[B, T]`.

  With `w = A·ratio`, `ratio = π/π_old` (log-ratio clipped to ±20 as verl):

  * `'reference'` (the STEER code): `Ω = A/π_old · π(1−π)(log π + H)
    = w(1 − π_y)(log π_y + H)`.
  * `'exact'`: the first-order entropy change of the unaggregated surrogate
    `−w·logp` at η = 1, `dynamics.token_entropy_change` with `g_l = −w`:
    `Ω = −w[π_y(log π_y + H) − m2]` (entropy_methods.md §6). The reference
    keeps only the `a = y` term of `m2` and also lacks the factor `π_y`, so it
    ranks low-probability tokens higher and is larger in scale (this matters
    for the 0.02 floor of `max|Ω|`). Neither score sees the PPO clip: a clipped
    token's `g_l` is already 0, but its score still enters `max|Ω|`.

  Returns:
    float32 `Ω` (signed; STEER uses `|Ω|`).
  """
  logp = jnp.asarray(logp, _F32)
  entropy = jnp.asarray(entropy, _F32)
  ratio = jnp.exp(jnp.clip(logp - old_logp, -20.0, 20.0))
  w = jnp.asarray(advantages, _F32) * ratio
  if score == "reference":
    return w * (1.0 - jnp.exp(logp)) * (logp + entropy)
  if m2 is None or m3 is None:
    raise ValueError("score='exact' needs the extra args m2 and m3.")
  stats = types.TokenStats(logp=logp, entropy=entropy, m2=m2, m3=m3)
  grads = types.TokenGrads(logp=-w, entropy=jnp.zeros_like(w))
  return dynamics.token_entropy_change(stats, grads, 1.0)


class SteerState(NamedTuple):
  count: jax.Array  # int32 [], number of update calls.
  mean_weight: jax.Array  # float32 [], mean λ over valid tokens.
  min_weight: jax.Array  # float32 [], min λ over valid tokens (1 if none).
  max_score: jax.Array  # float32 [], max |Ω| over valid tokens.


def steer(w_min=0.8, w_max=1.0, mode="exponential", score="reference"):
  """STEER (Hao et al. 2025, arXiv 2510.10150): entropy-aware token weights.

  .. math::  g_{l,t} \\leftarrow λ_t\\, g_{l,t}, \\qquad
     λ_t = \\mathrm{clip}(e^{−k|Ω_t|}, w_{min}, 1), \\quad
     k = −\\ln w_{min} / \\max(\\max_s |Ω_s|, 0.02)

  (`mode='exponential'`, the reference default). `mode='linear'` maps `|Ω|`
  from `[0, max|Ω|]` linearly onto `[w_max, w_min]`; `w_max` is unused in
  exponential mode. `Ω_t` is `steer_scores` (`score='reference'` or
  `'exact'`), `max` runs over the valid tokens of the batch given, so the
  token with the largest `|Ω| ≥ 0.02` gets exactly `w_min`. `λ` is detached
  and masked tokens are untouched; `∂L/∂H_t` is left alone. The reference
  multiplies the dual-clipped PPO loss, so place `steer` right after the
  surrogate's cotangent, before transforms that add to `∂L/∂logp` (`kl_cov`).
  Reference runs: DAPO clips 0.2/0.28, `clip_ratio_c = 10`.

  Args:
    w_min: smallest weight, in (0, 1]; float, array or schedule.
    w_max: largest weight of linear mode, `w_min ≤ w_max`.
    mode: `'exponential'` or `'linear'`.
    score: `'reference'` or `'exact'` (needs `m2`, `m3`).

  Returns:
    GradientTransformationExtraArgs; update needs `logp`, `old_logp`,
    `advantages`, `entropy`, `mask` (and `m2`, `m3` for `'exact'`).

  Raises:
    ValueError: for a bad `mode`, `score` or weight range.
  """
  if mode not in ("exponential", "linear"):
    raise ValueError(f"mode must be 'exponential' or 'linear', got {mode!r}.")
  if score not in ("reference", "exact"):
    raise ValueError(f"score must be 'reference' or 'exact', got {score!r}.")
  schedules.check_range("w_min", w_min, low=0.0, high=1.0, low_open=True)
  schedules.check_range("w_max", w_max, low=0.0, low_open=True)
  _check_ordered("w_min", w_min, "w_max", w_max)
  w_min_fn = schedules.as_schedule(w_min)
  w_max_fn = schedules.as_schedule(w_max)

  def init_fn(params):
    del params
    return SteerState(_zero(jnp.int32), jnp.ones([], _F32),
                      jnp.ones([], _F32), _zero())

  def update_fn(updates, state, params=None, *, logp, old_logp, advantages,
                entropy, mask, m2=None, m3=None, **extra_args):
    del params, extra_args
    valid = jnp.asarray(mask).astype(bool)
    omega = jnp.abs(steer_scores(logp, old_logp, advantages, entropy,
                                 score=score, m2=m2, m3=m3))
    omega = jnp.where(valid, omega, 0.0)  # masked junk must not set the max
    max_omega = jnp.max(omega)
    lo = jnp.asarray(w_min_fn(state.count), _F32)
    if mode == "exponential":
      k = -jnp.log(lo) / jnp.maximum(max_omega, _STEER_SCORE_FLOOR)
      lam = jnp.clip(jnp.exp(-k * omega), lo, 1.0)
    else:
      hi = jnp.asarray(w_max_fn(state.count), _F32)
      frac = omega / jnp.maximum(max_omega, jnp.finfo(_F32).tiny)
      lam = hi - (hi - lo) * frac
    lam = jax.lax.stop_gradient(lam)
    updates = updates.replace(
        logp=jnp.where(valid, lam * updates.logp, updates.logp))
    min_weight = jnp.where(jnp.any(valid),
                           jnp.min(jnp.where(valid, lam, jnp.inf)), 1.0)
    return updates, SteerState(optax.safe_increment(state.count),
                               covariance.masked_mean(lam, mask),
                               min_weight.astype(_F32), max_omega)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class AEntState(NamedTuple):
  count: jax.Array  # int32 [], number of update calls.
  coef: jax.Array  # float32 [], c_{k+1}: the coefficient for the next update.
  applied_coef: jax.Array  # float32 [], c_k, the bonus applied at step k.
  measured_entropy: jax.Array  # float32 [], H̄_k.


def aent(coef_init=2e-4, lr=1e-3, h_low=0.05, h_high=0.23, coef_min=1e-5,
         coef_max=3e-3, warmup_steps=0):
  """AEnt's dead-band coefficient (Shen 2025, arXiv 2509.03493; AReaL).

  .. math::  g_H \\leftarrow g_H − c_k w_t, \\qquad
     c_{k+1} = \\mathrm{clip}(c_k − lr[\\min(0, H̄_k − H_{low})
     + \\max(0, H̄_k − H_{high})], c_{min}, c_{max})

  `H̄_k` is the masked mean of `entropy` (or a scalar extra arg
  `measured_entropy`, e.g. the full-batch value when updating per
  micro-batch). `c` rises below `H_low`, falls above `H_high` and is constant
  in the band. It is updated after use and frozen for the first
  `warmup_steps` calls (the bonus `c_0` is still applied during warm-up).
  Defaults are the README recipe (the AReaL dataclass defaults differ,
  entropy_methods.md §4).

  NOT IMPLEMENTED: AEnt's *clamped* entropy (drop the bottom `p = 0.4` of the
  vocabulary by logit per token, renormalise, take the entropy) needs a
  per-row vocabulary quantile inside the streaming `token_stats`. This
  controller applies the dead-band coefficient to the ordinary entropy
  cotangent `∂L/∂H_t` of the full softmax, so it is a dense bonus whose bias
  reaches implausible tokens too, and `h_low`/`h_high` refer to that entropy.

  Args:
    coef_init: `c_0 ≥ 0`, clipped into the bounds.
    lr: step size `≥ 0`; float, array or schedule.
    h_low, h_high: the band, `0 ≤ h_low ≤ h_high`; float, array or schedule.
    coef_min, coef_max: clip bounds, `0 ≤ coef_min ≤ coef_max`.
    warmup_steps: non-negative int, calls before the first coefficient update.

  Returns:
    GradientTransformationExtraArgs; update needs `mask` and `entropy` (or
    `measured_entropy`), and uses `weights` (default token-mean).

  Raises:
    ValueError: naming the offending argument.
  """
  schedules.check_range("coef_init", coef_init, low=0.0)
  schedules.check_range("lr", lr, low=0.0)
  schedules.check_range("h_low", h_low, low=0.0)
  schedules.check_range("h_high", h_high, low=0.0)
  _check_ordered("h_low", h_low, "h_high", h_high)
  schedules.check_range("coef_min", coef_min, low=0.0)
  schedules.check_range("coef_max", coef_max, low=0.0)
  _check_ordered("coef_min", coef_min, "coef_max", coef_max)
  if (isinstance(warmup_steps, bool)
      or not isinstance(warmup_steps, (int, np.integer)) or warmup_steps < 0):
    raise ValueError(
        f"warmup_steps must be a non-negative int, got {warmup_steps!r}.")
  lr_fn = schedules.as_schedule(lr)
  h_low_fn = schedules.as_schedule(h_low)
  h_high_fn = schedules.as_schedule(h_high)

  def init_fn(params):
    del params
    c0 = jnp.clip(jnp.asarray(coef_init, _F32), coef_min, coef_max)
    return AEntState(_zero(jnp.int32), c0, _zero(), _zero())

  def update_fn(updates, state, params=None, *, mask, entropy=None,
                weights=None, measured_entropy=None, **extra_args):
    del params, extra_args
    if measured_entropy is not None:
      h = jnp.asarray(measured_entropy, _F32)
    elif entropy is None:
      raise ValueError("aent needs the extra arg entropy or measured_entropy.")
    else:
      h = covariance.masked_mean(entropy, mask)
    step = (jnp.minimum(0.0, h - h_low_fn(state.count))
            + jnp.maximum(0.0, h - h_high_fn(state.count)))
    moved = jnp.clip(state.coef - lr_fn(state.count) * step, coef_min,
                     coef_max)
    new_coef = jnp.where(state.count >= warmup_steps, moved, state.coef)
    w = covariance.weights_or_token_mean(weights, mask)
    updates = updates.replace(entropy=updates.entropy - state.coef * w)
    return updates, AEntState(optax.safe_increment(state.count),
                              new_coef.astype(_F32), state.coef, h)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
