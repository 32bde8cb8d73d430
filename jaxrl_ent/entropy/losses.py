"""verl-style loss forms of the entropy controls, built on the controllers.

Each function returns a scalar whose *value* is the reference loss of
entropy_methods.md §2.4/§4/§5 (with `weights`, default token-mean) and whose
*gradient* w.r.t. `logp` (and `entropy`) is the controller's transformed
cotangent: the base surrogate is differentiated, the cotangent is passed
through the same `controllers.*` transform the train step uses, and
`loss_with_cotangent` attaches it. So numbers can be checked against verl and
the gradient is the one the optax chain produces, by construction.

All per-token inputs are `[B, T]`.
"""

import jax
import jax.numpy as jnp

from jaxrl_ent.entropy import controllers
from jaxrl_ent.entropy import covariance
from jaxrl_ent.entropy import types

_sg = jax.lax.stop_gradient


def loss_with_cotangent(value, grads, *, logp=None, entropy=None):
  """A scalar equal to `value` with gradient `grads` w.r.t. `(logp, entropy)`.

  .. math::  \\mathrm{sg}(v) + Σ_t g_{l,t}(l_t − \\mathrm{sg}(l_t))
             + Σ_t g_{H,t}(H_t − \\mathrm{sg}(H_t))

  The added terms are exactly 0 in value. Useful whenever a controlled
  cotangent must flow through an ordinary `jax.grad` of a scalar.

  Args:
    value: scalar loss value.
    grads: `types.TokenGrads`, `[B, T]` fields (treated as constants).
    logp: optional `[B, T]` differentiable log-probs.
    entropy: optional `[B, T]` differentiable entropies.

  Returns:
    float32 scalar.
  """
  out = _sg(value)
  if logp is not None:
    out = out + jnp.sum(_sg(grads.logp) * (logp - _sg(logp)))
  if entropy is not None:
    out = out + jnp.sum(_sg(grads.entropy) * (entropy - _sg(entropy)))
  return out


def _ppo_clip_token_loss(logp, old_logp, advantages, clip_eps_low,
                         clip_eps_high):
  """`max(−A r, −A clip(r, 1−ε_low, 1+ε_high))`, no dual clip."""
  ratio = jnp.exp(logp - old_logp)
  return jnp.maximum(
      -advantages * ratio,
      -advantages * jnp.clip(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high))


def _base(token_loss_fn, logp, weights):
  """Aggregated loss value and its cotangent w.r.t. logp, `(Σ w L, w ∂L)`."""
  token_loss = token_loss_fn(_sg(logp))
  grad = jax.grad(lambda lp: jnp.sum(weights * token_loss_fn(lp)))(_sg(logp))
  return token_loss, types.TokenGrads(logp=grad, entropy=jnp.zeros_like(grad))


def _apply(transform, grads, **extra_args):
  new_grads, _ = transform.update(grads, transform.init(None), **extra_args)
  return new_grads


def clip_cov_loss(key, logp, old_logp, advantages, mask, *, ratio=2e-4,
                  lb=1.0, ub=5.0, clip_eps_low=0.2, clip_eps_high=0.2,
                  weights=None):
  """verl `compute_policy_loss_clip_cov` (`loss_mode="clip_cov"`).

  `agg(max(L1, L2)·corr)` with `corr = 0` on the Clip-Cov selection
  (`controllers.clip_cov`), PPO clip without dual clip.

  Args:
    key: PRNG key of the random subset.
    logp: `[B, T]` current log-probs (differentiable).
    old_logp, advantages, mask: `[B, T]`.
    ratio, lb, ub, clip_eps_low, clip_eps_high: as `controllers.clip_cov`.
    weights: aggregation weights; default token-mean over `mask`.

  Returns:
    float32 scalar loss.
  """
  weights = covariance.weights_or_token_mean(weights, mask)
  hyper = dict(ratio=ratio, lb=lb, ub=ub, clip_eps_low=clip_eps_low,
               clip_eps_high=clip_eps_high)
  token_loss, grads = _base(
      lambda lp: _ppo_clip_token_loss(lp, old_logp, advantages, clip_eps_low,
                                      clip_eps_high), logp, weights)
  ctx = dict(logp=_sg(logp), old_logp=old_logp, advantages=advantages,
             mask=mask)
  grads = _apply(controllers.clip_cov(**hyper), grads, key=key, **ctx)
  selected = covariance.clip_cov_selection(key, **ctx, **hyper)
  value = jnp.sum(weights * jnp.where(selected, 0.0, token_loss))
  return loss_with_cotangent(value, grads, logp=logp)


def kl_cov_loss(logp, old_logp, advantages, mask, *, ratio=2e-4, coef=1.0,
                weights=None):
  """verl `compute_policy_loss_kl_cov` (`loss_mode="kl_cov"`).

  `agg(−A·r + β|logp − old|·1[top-k by c])`, no PPO clip. `ratio` is a
  fraction (see `controllers.kl_cov` for the k_percent pitfall).

  Returns:
    float32 scalar loss.
  """
  weights = covariance.weights_or_token_mean(weights, mask)
  token_loss, grads = _base(
      lambda lp: -advantages * jnp.exp(lp - old_logp), logp, weights)
  grads = _apply(controllers.kl_cov(ratio, coef), grads, logp=_sg(logp),
                 old_logp=old_logp, advantages=advantages, mask=mask,
                 weights=weights)
  selected = covariance.kl_cov_selection(logp, advantages, mask, ratio=ratio)
  penalty = coef * jnp.abs(_sg(logp) - old_logp)
  value = jnp.sum(weights * (token_loss + jnp.where(selected, penalty, 0.0)))
  return loss_with_cotangent(value, grads, logp=logp)


def entropy_bonus_loss(entropy, mask, *, coef, weights=None):
  """`−α·agg(H_t)`, the entropy term of verl's actor loss (§3.1)."""
  weights = covariance.weights_or_token_mean(weights, mask)
  zeros = jnp.zeros_like(weights)
  grads = _apply(controllers.entropy_bonus(coef),
                 types.TokenGrads(logp=zeros, entropy=zeros), weights=weights)
  value = -coef * jnp.sum(weights * _sg(entropy))
  return loss_with_cotangent(value, grads, entropy=entropy)


def high_entropy_loss(logp, old_logp, advantages, entropy, mask, *,
                      quantile=0.2, clip_eps_low=0.2, clip_eps_high=0.28,
                      weights=None):
  """80/20 loss: the clipped surrogate on tokens with `H_t ≥ τ` only.

  `agg(max(L1, L2)·1[H_t ≥ Quantile_{1−ρ}(H)])` with DAPO's clip 0.2/0.28 and
  no dual clip; `entropy` is a selector only (no gradient).

  Returns:
    float32 scalar loss.
  """
  weights = covariance.weights_or_token_mean(weights, mask)
  token_loss, grads = _base(
      lambda lp: _ppo_clip_token_loss(lp, old_logp, advantages, clip_eps_low,
                                      clip_eps_high), logp, weights)
  grads = _apply(controllers.high_entropy_tokens(quantile), grads,
                 entropy=entropy, mask=mask)
  selected, _ = covariance.high_entropy_selection(entropy, mask,
                                                  quantile=quantile)
  value = jnp.sum(weights * jnp.where(selected, token_loss, 0.0))
  return loss_with_cotangent(value, grads, logp=logp)
