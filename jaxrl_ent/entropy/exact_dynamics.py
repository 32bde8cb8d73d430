"""Exact first-order entropy change of a realised parameter step, by source.

DESIGN.md §4, second bullet. For a step `Δθ = θ_after − θ_before` the
first-order change of every token's entropy is the directional derivative
`ΔH_t ≈ ⟨∂H_t/∂θ, Δθ⟩`, one forward-mode product (`jax.jvp`) of the token
statistics function at `θ_before` along `Δθ`. Pushed through the chunked
`completion_stats` path, it never builds an `[N, V]` array (the tangent of a
logits block lives only inside its chunk, as the primal does). Its error
against the measured change is `O(‖Δθ‖²)`, i.e. `O(η²)`.

Attribution. Given the realised clip factor `c`, second moment `ν_t` and
count `t`, one update of the chain clip → Adam → lr → decoupled weight decay
(optax `adamw`: `Δθ = −η[m̂/(√(ν̂ + ε_root) + ε) + λθ]`,
`m̂ = m/(1 − β1^t)`, `ν̂ = ν/(1 − β2^t)`, `m = β1 m_prev + (1 − β1) c g`)
is linear in the clipped gradient, so with `g = Σ_s g_s` the step splits as

  Δθ = Σ_s −η m_s/D  −  η m_carried/D  −  η λ θ,   D = (1 − β1^t)(√(ν̂+ε_root)+ε),

where each source's momentum `m_s ← β1 m_s + (1 − β1) c g_s` starts at 0 at
the beginning of the RL step and `m_carried ← β1 m_carried` starts at the
optimizer's momentum then (what earlier steps' gradients still push). Plain
SGD (`Δθ = −η(c g + λθ)`) is the same with `β1 = 0`, `D = 1`. This is exact
*given* `c` and `ν_t` as realised: both depend on the whole gradient
non-linearly, and the split says how the step that ran divides, not what a
step without a source would have been.

The update (`rl.update`) uses `entropy_grad_dot`, the same aggregate in
reverse mode, because the model's training attention kernels have a custom
VJP and no JVP rule; `entropy_jvp` gives the per-token values wherever the
statistics function is forward-differentiable (e.g. `attention_impl=
"xla_naive"`, or a logit table), and the two agree (tests/entropy).

Axis legend: K tangents (sources), R rows, C completion length; `...` the
parameter pytree's leaves.
"""

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from jaxrl_ent.entropy import covariance

_F32 = jnp.float32


def entropy_jvp(stats_fn: Callable, params, tangents_k, mask_rc):
  """First-order entropy change along K parameter directions.

  Args:
    stats_fn: `params -> types.TokenStats` with `[R, C]` fields (e.g. the
      chunked `completion_stats` of one batch).
    params: the point θ (pytree).
    tangents_k: pytree like `params` with a leading axis K (directions Δθ_k).
    mask_rc: `[R, C]` valid tokens.

  Returns:
    `(mean_k, per_token_krc)`: float32 `[K]`, the masked mean over valid
    tokens of `⟨∂H_t/∂θ, Δθ_k⟩` (the aggregation of `entropy/measured_dH`),
    and the per-token values `[K, R, C]` (zero on padding).
  """
  def one(tangent):
    _, dstats = jax.jvp(stats_fn, (params,), (tangent,))
    return dstats.entropy.astype(_F32)

  per_token = jax.vmap(one)(tangents_k)
  mask = jnp.asarray(mask_rc)
  per_token = jnp.where(mask > 0, per_token, 0.0)
  mean = jax.vmap(lambda x: covariance.masked_mean(x, mask))(per_token)
  return mean, per_token


def entropy_grad_dot(stats_fn: Callable, params, tangents_k, mask_rc):
  """The masked mean of `entropy_jvp`, in reverse mode.

  `d/dε mean_t H_t(θ + εΔθ) = ⟨∇_θ mean_t H_t, Δθ⟩`: one backward pass of the
  valid-token mean entropy at θ, then a dot product per direction. Same
  number as `entropy_jvp(...)[0]` (up to float rounding), for models whose
  kernels define only a VJP (the training forward's blockwise / splash /
  cuDNN attention are `custom_vjp`, which forward mode cannot enter); no
  per-token values.

  Args:
    stats_fn, params, tangents_k, mask_rc: as `entropy_jvp`.

  Returns:
    float32 `[K]`.
  """
  return entropy_and_grad_dot(stats_fn, params, tangents_k, mask_rc)[1]


def entropy_and_grad_dot(stats_fn: Callable, params, tangents_k, mask_rc):
  """`(mean_t H_t(θ), entropy_grad_dot(...))` from one forward and backward
  pass: the entropy at θ comes with its gradient, so a caller that needs
  both (the update's measured change at θ_after) runs no second forward.

  Returns:
    (float32 scalar, float32 `[K]`).
  """
  mask = jnp.asarray(mask_rc)
  value, grad = jax.value_and_grad(lambda p: covariance.masked_mean(
      stats_fn(p).entropy.astype(_F32), mask))(params)
  dots = jax.tree.map(
      lambda g, t: jnp.sum(g.astype(_F32)[None] * t.astype(_F32),
                           axis=tuple(range(1, t.ndim))), grad, tangents_k)
  return value, sum(jax.tree.leaves(dots))


def clip_factor(grad_norm, max_norm=None):
  """The factor `optax.clip_by_global_norm` applied: 1 below `max_norm`,
  else `max_norm / ‖g‖` (`None`: no clipping, 1)."""
  if max_norm is None:
    return jnp.ones([], _F32)
  return jnp.where(grad_norm < max_norm, 1.0, max_norm / grad_norm).astype(
      _F32)


def init_attribution(params, mu, num_sources: int):
  """Per-source accumulators at the start of an RL step.

  Args:
    params: θ_before.
    mu: the optimizer's first moment then (`None` for SGD: no momentum).
    num_sources: S, the gradient sources.

  Returns:
    dict with `m_src` / `d_src` `[S, ...]`, `m_carried` / `d_carried` and
    `d_wd` like `params`, all float32 (momenta and step parts).
  """
  z = lambda: jax.tree.map(lambda p: jnp.zeros(p.shape, _F32), params)
  zs = jax.tree.map(lambda p: jnp.zeros((num_sources,) + p.shape, _F32),
                    params)
  return {"m_src": zs, "d_src": zs,
          "m_carried": (z() if mu is None else
                        jax.tree.map(lambda m: m.astype(_F32), mu)),
          "d_carried": z(), "d_wd": z()}


def adamw_step_by_source(acc: Mapping, src_grads_s, params, nu, count, *,
                         lr, b1, b2, eps, weight_decay, c, eps_root=0.0,
                         applied=True):
  """Adds one AdamW update's split to the accumulators (see module doc).

  Args:
    acc: from `init_attribution` or a previous call.
    src_grads_s: per-source parameter gradients `[S, ...]` (before clipping).
    params: θ before this update (weight decay acts on it).
    nu: the second moment *after* this update (optax `ScaleByAdamState.nu`).
    count: Adam's count after this update (t ≥ 1).
    lr, b1, b2, eps, weight_decay: the values the optimizer used.
    c: the realised clip factor (`clip_factor`).
    eps_root: optax `eps_root` (0 in `adamw`'s default).
    applied: bool []; False when the update was skipped (nothing moves).

  Returns:
    The updated accumulators.
  """
  t = jnp.asarray(count, _F32)
  bc1 = 1.0 - b1 ** t
  bc2 = 1.0 - b2 ** t
  denom = jax.tree.map(
      lambda v: bc1 * (jnp.sqrt(v.astype(_F32) / bc2 + eps_root) + eps), nu)
  m_src = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * c * g,
                       acc["m_src"], src_grads_s)
  m_carried = jax.tree.map(lambda m: b1 * m, acc["m_carried"])
  step_src = jax.tree.map(lambda m, d: -lr * m / d[None], m_src, denom)
  step_carried = jax.tree.map(lambda m, d: -lr * m / d, m_carried, denom)
  step_wd = jax.tree.map(lambda p: -lr * weight_decay * p.astype(_F32),
                         params)
  return _advance(acc, applied, m_src, m_carried, step_src, step_carried,
                  step_wd)


def sgd_step_by_source(acc: Mapping, src_grads_s, params, *, lr,
                       weight_decay, c, applied=True):
  """Adds one clip → SGD (+ decoupled weight decay) update's split:
  `Δθ = −η(c Σ_s g_s + λθ)`, exact with no approximation at all."""
  step_src = jax.tree.map(lambda g: -lr * c * g, src_grads_s)
  step_wd = jax.tree.map(lambda p: -lr * weight_decay * p.astype(_F32),
                         params)
  zero = jax.tree.map(jnp.zeros_like, acc["d_carried"])
  return _advance(acc, applied, acc["m_src"], acc["m_carried"], step_src,
                  zero, step_wd)


def _advance(acc, applied, m_src, m_carried, step_src, step_carried, step_wd):
  keep = lambda new, old: jax.tree.map(
      lambda a, b: jnp.where(applied, a, b), new, old)
  add = lambda total, step: jax.tree.map(
      lambda a, s: jnp.where(applied, a + s, a), total, step)
  return {"m_src": keep(m_src, acc["m_src"]),
          "m_carried": keep(m_carried, acc["m_carried"]),
          "d_src": add(acc["d_src"], step_src),
          "d_carried": add(acc["d_carried"], step_carried),
          "d_wd": add(acc["d_wd"], step_wd)}
