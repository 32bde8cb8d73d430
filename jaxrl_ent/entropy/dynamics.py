"""Entropy dynamics of a softmax policy under a logit update (entropy_methods.md §1).

Axis legend: `V` vocabulary / actions; leading axes `...` are batch.
All functions compute in at least float32 (bf16 is upcast, float64 is kept so the
theory lab can check error orders) and broadcast over leading axes.
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
