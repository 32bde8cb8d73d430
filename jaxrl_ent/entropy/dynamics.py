"""Entropy dynamics of a softmax policy under a logit update (entropy_methods.md §1).

Axis legend: `V` vocabulary / actions; leading axes `...` are batch.
All functions compute in at least float32 (bf16 is upcast, float64 is kept so the
theory lab can check error orders) and broadcast over leading axes.

Token-space view (DESIGN.md §4): `token_entropy_change` predicts the change
implied by a per-token cotangent `(∂L/∂logp_t, ∂L/∂H_t)` from `TokenStats`
alone, without logits; `logit_step_entropy_change` compares prediction and
measurement for an actual step when logits before and after are at hand.
"""

import jax
import jax.numpy as jnp


def _upcast(x):
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _centered_logp(logits_v):
  """Returns (pi, log pi, H) for logits [..., V], in >= float32."""
  logits_v = _upcast(logits_v)
  logp_v = jax.nn.log_softmax(logits_v, axis=-1)
  pi_v = jnp.exp(logp_v)
  ent = -jnp.sum(pi_v * logp_v, axis=-1)
  return pi_v, logp_v, ent


def entropy(logits_v):
  """Entropy H(softmax(z)) [...] of logits [..., V], float32."""
  return _centered_logp(logits_v)[2]


def entropy_grad_logits(logits_v):
  """Exact ∂H/∂z_a = −π_a (log π_a + H) (Lemma F1), shape [..., V]."""
  pi_v, logp_v, ent = _centered_logp(logits_v)
  return -pi_v * (logp_v + ent[..., None])


def entropy_change_first_order(logits_v, delta_v):
  """First-order entropy change −Cov_π(log π, δ) for a logit update δ.

  Args:
    logits_v: logits z, [..., V].
    delta_v: logit update δ = z' − z, [..., V].

  Returns:
    [...] the prediction; its error against H(z+δ)−H(z) is O(‖δ‖²).
  """
  pi_v, logp_v, _ = _centered_logp(logits_v)
  delta_v = _upcast(delta_v)
  mean_logp = jnp.sum(pi_v * logp_v, axis=-1, keepdims=True)
  mean_delta = jnp.sum(pi_v * delta_v, axis=-1, keepdims=True)
  return -jnp.sum(pi_v * (logp_v - mean_logp) * (delta_v - mean_delta), axis=-1)


def entropy_change_second_order(logits_v, delta_v):
  """Second-order prediction (Theorem F2), error O(‖δ‖³).

  H(z+δ) − H(z) ≈ −Cov(log π, δ) − ½[Var(δ) + Cov(log π, (δ − Eδ)²)].
  """
  pi_v, logp_v, _ = _centered_logp(logits_v)
  delta_v = _upcast(delta_v)
  mean_logp = jnp.sum(pi_v * logp_v, axis=-1, keepdims=True)
  dc_v = delta_v - jnp.sum(pi_v * delta_v, axis=-1, keepdims=True)
  lc_v = logp_v - mean_logp
  first = -jnp.sum(pi_v * lc_v * dc_v, axis=-1)
  var_delta = jnp.sum(pi_v * dc_v**2, axis=-1)
  sq_v = dc_v**2
  cov_logp_sq = jnp.sum(pi_v * lc_v * (sq_v - jnp.sum(pi_v * sq_v, axis=-1, keepdims=True)), axis=-1)
  return first - 0.5 * (var_delta + cov_logp_sq)


def token_entropy_change(stats, grads, lr=1.0):
  """First-order entropy change per token implied by a token-space cotangent.

  A loss gradient `g = (g_l, g_H) = (∂L/∂logp_t, ∂L/∂H_t)` moves the tempered
  logits of token t (tabular view, logits as free parameters) by
  `Δz = −η ∂L/∂z = −η[g_l (e_y − π) + g_H ∂H/∂z]`. Contracting with
  `∂H/∂z_a = −π_a(log π_a + H)` (Lemma F1) gives (DESIGN.md §4)

  .. math::
    ΔH_t ≈ η\\,[g_l(π_y(\\log π_y + H) − m_2) − g_H m_3],

  which equals `−Cov_π(log π, Δz)` exactly (entropy_change_first_order); e.g.
  the surrogate `L = −w·logp` gives `−ηw[π_y(log π_y + H) − m2]`
  (entropy_methods.md §1.3) and a bonus `L = −α H` gives `+ηα·m3 ≥ 0` (§1.5).

  Args:
    stats: `types.TokenStats` (fields `[B, T]`).
    grads: `types.TokenGrads` (fields `[B, T]`).
    lr: logit-space step size η (float or array broadcastable to `[B, T]`).

  Returns:
    float32 `[B, T]`, predicted `H_t(after) − H_t(before)`; error O(η²).
  """
  logp = _upcast(stats.logp)
  pg_term = jnp.exp(logp) * (logp + stats.entropy) - stats.m2
  return lr * (grads.logp * pg_term - grads.entropy * stats.m3)


def logit_step_entropy_change(logits_v, new_logits_v, temperature=1.0):
  """Predicted and measured entropy change for an actual logit step.

  For the occasional extra forward on the same batch (DESIGN.md §4): with
  `z = logits/τ` and `Δz = (new_logits − logits)/τ`, returns the exact-logit
  first-order prediction `−Cov_π(log π, Δz)` and the measured
  `H(z + Δz) − H(z)`.

  Args:
    logits_v: logits before the step, `[..., V]`.
    new_logits_v: logits after the step, `[..., V]`.
    temperature: τ > 0.

  Returns:
    `(predicted, measured)`, each float32 `[...]`.
  """
  z_v = _upcast(logits_v) / temperature
  new_z_v = _upcast(new_logits_v) / temperature
  predicted = entropy_change_first_order(z_v, new_z_v - z_v)
  return predicted, entropy(new_z_v) - entropy(z_v)
