"""Entropy controllers as optax transforms over the token-space cotangent.

Each factory returns an `optax.GradientTransformationExtraArgs` whose
`updates` are a `types.TokenGrads` `g = (∂L/∂logp_t, ∂L/∂H_t)` (DESIGN.md §2).
Per-token context arrives as keyword-only extra args, all `[B, T]` unless noted:

  logp        current log-probs of the sampled tokens (detached use only)
  old_logp    behaviour (rollout) log-probs
  advantages  advantages A_t
  mask        validity of each token
  entropy     per-token entropy H_t of the training forward pass
  m2, m3      the moments of `types.TokenStats` (tracker only)
  weights     ∂(aggregated loss)/∂(per-token loss), e.g. `mask / Σ mask` for
              token-mean; defaults to token-mean of `mask` when omitted
  key         PRNG key (Clip-Cov)

Coefficients are floats, arrays (so a factory can be called under `jax.vmap`
to sweep them) or optax schedules evaluated at `state.count`, which counts
`update` calls. States are NamedTuples of scalars, independent of the batch
shape, so they checkpoint with the optimizer state.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrl_ent.entropy import covariance
from jaxrl_ent.entropy import dynamics
from jaxrl_ent.entropy import schedules
from jaxrl_ent.entropy import types

_F32 = jnp.float32


def _zero(dtype=_F32):
  return jnp.zeros([], dtype)


def _fraction(selected, mask):
  valid = jnp.asarray(mask).astype(bool)
  return jnp.sum(selected & valid) / jnp.maximum(jnp.sum(valid), 1).astype(_F32)


class EntropyBonusState(NamedTuple):
  count: jax.Array  # int32 [], number of update calls.
  coef: jax.Array  # float32 [], coefficient applied at the last update.


def entropy_bonus(coef):
  """Dense entropy regularisation: `L ← L − α·agg(H_t)` (verl entropy_coeff).

  .. math::  g_H \\leftarrow g_H − α_t w_t

  Its bias term `−α π_a(log π_a + H)` is non-zero on every token and moves the
  fixed point to `softmax(Q/α)` (entropy_methods.md §1.5); anneal `α_t → 0`
  (`schedules.inverse_power`) for asymptotic unbiasedness (§1.6).

  Args:
    coef: `α ≥ 0`, float, array or schedule.

  Returns:
    GradientTransformationExtraArgs; update uses `weights` (or `mask`).
  """
  schedules.check_range("coef", coef, low=0.0)
  coef_fn = schedules.as_schedule(coef)

  def init_fn(params):
    del params
    return EntropyBonusState(count=_zero(jnp.int32), coef=_zero())

  def update_fn(updates, state, params=None, *, mask=None, weights=None,
                **extra_args):
    del params, extra_args
    c = jnp.asarray(coef_fn(state.count), _F32)
    w = covariance.weights_or_token_mean(weights, mask)
    updates = updates.replace(entropy=updates.entropy - c * w)
    return updates, EntropyBonusState(optax.safe_increment(state.count), c)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ClipCovState(NamedTuple):
  count: jax.Array  # int32 [].
  frac_selected: jax.Array  # float32 [], detached tokens / valid tokens.


def clip_cov(ratio=2e-4, lb=1.0, ub=5.0, clip_eps_low=0.2, clip_eps_high=0.2):
  """Clip-Cov (Cui et al. 2025, arXiv 2505.22617): detach a few high-cov tokens.

  .. math::  g_{l,i} \\leftarrow 0 \\quad (i \\in S)

  `S` is a uniformly random subset of size `min(max(⌊ratio·#valid⌋, 1),
  #eligible)` of the tokens with `lb < c_i < ub` that PPO did not clip
  (`covariance.clip_cov_selection`, entropy_methods.md §2.4). The selected
  tokens stay in the aggregation denominator: only their cotangent is zeroed.
  Place it after the PPO-clipped surrogate's cotangent; the reference runs use
  `clip_eps_low = clip_eps_high = 1` (7B/32B recipes) with verl default 0.2.

  Args:
    ratio: fraction in (0, 1], float, array or schedule.
    lb, ub: open covariance band, `lb < ub`.
    clip_eps_low, clip_eps_high: PPO clip range that excludes tokens, ≥ 0.

  Returns:
    GradientTransformationExtraArgs; update needs `key`, `logp`, `old_logp`,
    `advantages`, `mask`.
  """
  schedules.check_range("ratio", ratio, low=0.0, high=1.0, low_open=True)
  schedules.check_range("lb", lb)
  schedules.check_range("ub", ub)
  lb_c, ub_c = schedules.concrete(lb), schedules.concrete(ub)
  if lb_c is not None and ub_c is not None and not (lb_c < ub_c).all():
    raise ValueError(f"lb must be < ub, got lb={lb}, ub={ub}.")
  schedules.check_range("clip_eps_low", clip_eps_low, low=0.0, high=1.0)
  schedules.check_range("clip_eps_high", clip_eps_high, low=0.0)
  ratio_fn = schedules.as_schedule(ratio)

  def init_fn(params):
    del params
    return ClipCovState(count=_zero(jnp.int32), frac_selected=_zero())

  def update_fn(updates, state, params=None, *, key, logp, old_logp,
                advantages, mask, **extra_args):
    del params, extra_args
    selected = covariance.clip_cov_selection(
        key, logp, old_logp, advantages, mask, ratio=ratio_fn(state.count),
        lb=lb, ub=ub, clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high)
    updates = updates.replace(logp=jnp.where(selected, 0.0, updates.logp))
    return updates, ClipCovState(optax.safe_increment(state.count),
                                 _fraction(selected, mask))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class KLCovState(NamedTuple):
  count: jax.Array  # int32 [].
  coef: jax.Array  # float32 [], β applied at the last update.
  frac_selected: jax.Array  # float32 [], penalised tokens / valid tokens.
  # float32 [], penalised tokens with logp != old_logp (a non-zero penalty
  # gradient) / valid tokens: 0 on an on-policy update.
  frac_active: jax.Array


def kl_cov(ratio=2e-4, coef=1.0):
  """KL-Cov (Cui et al. 2025): a |log-ratio| penalty on the top-cov tokens.

  Adds the gradient of `β·|logp − old_logp|·w_t` on the top
  `k = max(1, ⌊ratio·#valid⌋)` tokens by covariance score:

  .. math::  g_{l,i} \\leftarrow g_{l,i} + β\\,\\mathrm{sign}(\\log π_i −
     \\log π^{old}_i)\\,w_i \\quad (i \\in \\mathrm{top}_k(c))

  `sign(0) = 0`, so on-policy (`logp == old_logp`, e.g. the first mini-batch
  of a rollout) KL-Cov has no effect (§2.4 semantics 3). The reference pairs
  it with the *unclipped* surrogate `−A·ratio`.

  Units pitfall: `ratio` is a FRACTION like verl's `kl_cov_ratio`; the
  original repo's `k_percent` is in PERCENT. The 7B recipe `k_percent=0.2`
  is `ratio=2e-3`; the 32B recipe `0.02` is `ratio=2e-4` (the default).
  `coef` defaults to the recipes' β = 1 (verl's yaml default is 0.1).

  Args:
    ratio: fraction in (0, 1], float, array or schedule.
    coef: `β ≥ 0`, float, array or schedule.

  Returns:
    GradientTransformationExtraArgs; update needs `logp`, `old_logp`,
    `advantages`, `mask` (and `weights`, default token-mean).
  """
  schedules.check_range("ratio", ratio, low=0.0, high=1.0, low_open=True)
  schedules.check_range("coef", coef, low=0.0)
  ratio_fn = schedules.as_schedule(ratio)
  coef_fn = schedules.as_schedule(coef)

  def init_fn(params):
    del params
    return KLCovState(_zero(jnp.int32), _zero(), _zero(), _zero())

  def update_fn(updates, state, params=None, *, logp, old_logp, advantages,
                mask, weights=None, **extra_args):
    del params, extra_args
    selected = covariance.kl_cov_selection(logp, advantages, mask,
                                           ratio=ratio_fn(state.count))
    c = jnp.asarray(coef_fn(state.count), _F32)
    w = covariance.weights_or_token_mean(weights, mask)
    sign = jnp.sign(logp - old_logp)
    push = c * sign * w
    updates = updates.replace(
        logp=updates.logp + jnp.where(selected, push, 0.0))
    return updates, KLCovState(optax.safe_increment(state.count), c,
                               _fraction(selected, mask),
                               _fraction(selected & (sign != 0), mask))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class HighEntropyTokensState(NamedTuple):
  count: jax.Array  # int32 [].
  threshold: jax.Array  # float32 [], τ used at the last update.
  frac_kept: jax.Array  # float32 [], kept tokens / valid tokens.


def high_entropy_tokens(quantile=0.2):
  """80/20 forking tokens (Wang et al. 2025, arXiv 2506.01939).

  .. math::  g_{l,t} \\leftarrow g_{l,t}\\,1[H_t \\ge τ], \\quad
     τ = \\mathrm{Quantile}_{1−ρ}(\\{H_t\\})

  The kept tokens' weights are unchanged (the denominator still counts all
  tokens). The entropy cotangent is left alone: `H_t` is only a selector.

  Args:
    quantile: `ρ ∈ (0, 1]`, the kept top fraction; float, array or schedule.

  Returns:
    GradientTransformationExtraArgs; update needs `entropy`, `mask`.
  """
  schedules.check_range("quantile", quantile, low=0.0, high=1.0,
                        low_open=True)
  quantile_fn = schedules.as_schedule(quantile)

  def init_fn(params):
    del params
    return HighEntropyTokensState(_zero(jnp.int32), _zero(), _zero())

  def update_fn(updates, state, params=None, *, entropy, mask, **extra_args):
    del params, extra_args
    selected, tau = covariance.high_entropy_selection(
        entropy, mask, quantile=quantile_fn(state.count))
    updates = updates.replace(logp=jnp.where(selected, updates.logp, 0.0))
    return updates, HighEntropyTokensState(
        optax.safe_increment(state.count), tau, _fraction(selected, mask))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class AdaptiveEntropyState(NamedTuple):
  count: jax.Array  # int32 [].
  coef: jax.Array  # float32 [], c_{k+1}: the coefficient for the next update.
  applied_coef: jax.Array  # float32 [], bonus coefficient used at step k.
  measured_entropy: jax.Array  # float32 [], e_k.


_RULE_DEFAULT_INIT = {"bang_bang": 0.0, "lagrangian": 1e-3}


def adaptive_entropy(target, rule="bang_bang", *, delta=1e-4, lr=1e-2,
                     coef_init=None, coef_min=0.0, coef_max=5e-3,
                     measure="old_logp"):
  """Entropy bonus whose coefficient tracks a target entropy.

  `e_k` is the measured entropy: by default `−masked_mean(old_logp)`, the
  sampled-token NLL of the rollout (Skywork-OR1 code), or
  `masked_mean(entropy)` with `measure='entropy'`, or a scalar extra arg
  `measured_entropy` (e.g. the full-batch value when updating per
  micro-batch). Then `g_H ← g_H − a_k w_t` with

  * `'bang_bang'` (Skywork-OR1, arXiv 2505.22312):
    `a_k = c_k·1[e_k < tgt]`, `c_{k+1} = clip(c_k ± Δ, lo, hi)` with `+Δ`
    iff `e_k < tgt` (the code's `else −Δ` also at equality). Script
    defaults: tgt 0.2, Δ 1e-4, c ∈ [0, 5e-3], c_0 = 0.
  * `'lagrangian'` (SAC target entropy): `a_k = α_k`,
    `log α_{k+1} = log α_k − λ(e_k − tgt)`, clipped to `[lo, hi]`; an
    integral controller, biased while `α > 0` (entropy_methods.md §4).

  The coefficient is updated after use and applied at the next call, once per
  `update`: call the chain once per training step for the reference cadence.

  Args:
    target: target entropy (nats/token) ≥ 0; float, array or schedule.
    rule: `'bang_bang'` or `'lagrangian'`.
    delta: bang-bang step Δ ≥ 0.
    lr: Lagrangian step λ ≥ 0 on `log α`.
    coef_init: `c_0`; default 0 (bang-bang) or 1e-3 (lagrangian, must be > 0).
    coef_min, coef_max: clip bounds, `0 ≤ coef_min ≤ coef_max`.
    measure: `'old_logp'` or `'entropy'`.

  Returns:
    GradientTransformationExtraArgs; update needs `mask` and `old_logp` or
    `entropy` (per `measure`), and uses `weights` (default token-mean).
  """
  if rule not in _RULE_DEFAULT_INIT:
    raise ValueError(
        f"rule must be 'bang_bang' or 'lagrangian', got {rule!r}.")
  if measure not in ("old_logp", "entropy"):
    raise ValueError(
        f"measure must be 'old_logp' or 'entropy', got {measure!r}.")
  coef_init = _RULE_DEFAULT_INIT[rule] if coef_init is None else coef_init
  schedules.check_range("target", target, low=0.0)
  schedules.check_range("delta", delta, low=0.0)
  schedules.check_range("lr", lr, low=0.0)
  schedules.check_range("coef_min", coef_min, low=0.0)
  schedules.check_range("coef_max", coef_max, low=0.0)
  lo, hi = schedules.concrete(coef_min), schedules.concrete(coef_max)
  if lo is not None and hi is not None and not (lo <= hi).all():
    raise ValueError(
        f"coef_min must be <= coef_max, got {coef_min}, {coef_max}.")
  schedules.check_range("coef_init", coef_init, low=0.0,
                        low_open=rule == "lagrangian")
  target_fn = schedules.as_schedule(target)

  def init_fn(params):
    del params
    c0 = jnp.clip(jnp.asarray(coef_init, _F32), coef_min, coef_max)
    return AdaptiveEntropyState(_zero(jnp.int32), c0, _zero(), _zero())

  def update_fn(updates, state, params=None, *, mask, old_logp=None,
                entropy=None, weights=None, measured_entropy=None,
                **extra_args):
    del params, extra_args
    if measured_entropy is not None:
      e = jnp.asarray(measured_entropy, _F32)
    elif measure == "old_logp":
      e = -covariance.masked_mean(old_logp, mask)
    else:
      e = covariance.masked_mean(entropy, mask)
    tgt = jnp.asarray(target_fn(state.count), _F32)
    below = e < tgt
    if rule == "bang_bang":
      applied = jnp.where(below, state.coef, 0.0)
      new_coef = state.coef + jnp.where(below, delta, -delta)
    else:
      applied = state.coef
      new_coef = state.coef * jnp.exp(-lr * (e - tgt))
    new_coef = jnp.clip(new_coef, coef_min, coef_max).astype(_F32)
    w = covariance.weights_or_token_mean(weights, mask)
    updates = updates.replace(entropy=updates.entropy - applied * w)
    return updates, AdaptiveEntropyState(
        optax.safe_increment(state.count), new_coef, applied, e)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class TrackEntropyDynamicsState(NamedTuple):
  count: jax.Array  # int32 [].
  predicted_change: jax.Array  # float32 [], token-mean first-order ΔH.
  covariance: jax.Array  # float32 [], Cui et al. mean_i c_i (0 w/o A).
  num_tokens: jax.Array  # int32 [], valid tokens at the last update.


def track_entropy_dynamics(lr=1.0):
  """Identity on the updates; records the entropy change they imply.

  `predicted_change` is the valid-token mean of
  `dynamics.token_entropy_change` (DESIGN.md §4) for the cotangent *at this
  point of the chain*, at logit step size η = `lr`. Because the prediction is
  linear in the cotangent, trackers placed between controllers attribute the
  change exactly (to first order) to each source: see `attributed_chain` and
  `entropy_change_by_source`.

  Args:
    lr: logit-space step size η > 0 (float or array).

  Returns:
    GradientTransformationExtraArgs; update needs `logp`, `entropy`, `m2`,
    `m3`, `mask`, and records the covariance when `advantages` is passed.
  """
  schedules.check_range("lr", lr, low=0.0, low_open=True)

  def init_fn(params):
    del params
    return TrackEntropyDynamicsState(_zero(jnp.int32), _zero(), _zero(),
                                     _zero(jnp.int32))

  def update_fn(updates, state, params=None, *, logp, entropy, m2, m3, mask,
                advantages=None, **extra_args):
    del params, extra_args
    stats = types.TokenStats(logp=logp, entropy=entropy, m2=m2, m3=m3)
    dh = dynamics.token_entropy_change(stats, updates, lr)
    cov = (_zero() if advantages is None else
           covariance.batch_covariance(logp, advantages, mask))
    return updates, TrackEntropyDynamicsState(
        optax.safe_increment(state.count), covariance.masked_mean(dh, mask),
        cov, jnp.sum(jnp.asarray(mask).astype(bool)).astype(jnp.int32))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


_TRACK = "dH:"


def attributed_chain(*named_transforms, lr=1.0):
  """`optax.named_chain` with an entropy tracker before and after each stage.

  `attributed_chain(("kl_cov", kl_cov()), ("bonus", entropy_bonus(1e-3)))`
  runs `dH:input → kl_cov → dH:kl_cov → bonus → dH:bonus`; the state is an
  ordered dict keyed by those names.

  Args:
    *named_transforms: `(name, transform)` pairs, names unique.
    lr: η for every tracker.

  Returns:
    GradientTransformationExtraArgs (needs the tracker's extra args too).
  """
  stages = [(_TRACK + "input", track_entropy_dynamics(lr))]
  for name, transform in named_transforms:
    stages += [(name, transform), (_TRACK + name, track_entropy_dynamics(lr))]
  return optax.named_chain(*stages)


def entropy_change_by_source(chain_state):
  """Splits the predicted ΔH of an `attributed_chain` state by source.

  Returns:
    dict: `'input'` (the cotangent entering the chain: policy gradient and any
    loss terms), one entry per stage (the change that stage added) and
    `'total'`; the stage entries and `'input'` sum to `'total'`.
  """
  names = [k for k in chain_state if k.startswith(_TRACK)]
  preds = [chain_state[k].predicted_change for k in names]
  out = {"input": preds[0]}
  for name, before, after in zip(names[1:], preds[:-1], preds[1:]):
    out[name[len(_TRACK):]] = after - before
  out["total"] = preds[-1]
  return out
