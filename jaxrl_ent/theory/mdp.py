"""Finite-horizon tabular MDP with exact (soft) returns by backward induction.

Axis legend: `T` horizon (time steps), `S` states, `A` actions. Policies are
non-stationary softmax tables `logits_tsa [T, S, A]`. Every return here is
exact (dynamic programming, no sampling), so `jax.grad` of it is the exact
policy gradient. Kernels are pure and vmappable over MDPs and coefficients.

The entropy-regularised return of §1.5 in sequence form is

  J_α(π) = E_π[Σ_t r(s_t, a_t) + α H(π_t(·|s_t))],

maximised by the soft-optimal policy π*_t(a|s) ∝ exp(Q_soft,t(s, a)/α), with
Q_soft,t = r + P V_soft,t+1 and V_soft,t(s) = α log Σ_a exp(Q_soft,t(s, a)/α).
"""

import chex
import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class TabularMDP:
  """A finite MDP; the horizon is given by the policy or the solver.

  Attributes:
    transition_sas: `P(s'|s, a)`, [S, A, S], rows sum to 1.
    reward_sa: expected reward `r(s, a)`, [S, A].
    init_s: initial-state distribution, [S].
  """
  transition_sas: jax.Array
  reward_sa: jax.Array
  init_s: jax.Array


def random_mdp(key, num_states, num_actions, *, transition_scale=1.0):
  """Random dense MDP: softmax-normal transitions, U[0, 1] rewards."""
  key_p, key_r, key_mu = jax.random.split(key, 3)
  logits_sas = transition_scale * jax.random.normal(
      key_p, (num_states, num_actions, num_states))
  return TabularMDP(
      transition_sas=jax.nn.softmax(logits_sas, axis=-1),
      reward_sa=jax.random.uniform(key_r, (num_states, num_actions)),
      init_s=jax.nn.softmax(jax.random.normal(key_mu, (num_states,))),
  )


def _backup(mdp, v_next_s):
  # Q_t(s, a) = r(s, a) + Σ_s' P(s'|s, a) V_{t+1}(s'), [S, A].
  return mdp.reward_sa + jnp.einsum("xay,y->xa", mdp.transition_sas, v_next_s)


def policy_return(mdp, logits_tsa, alpha=0.0):
  """Exact `J_α(π)` by backward induction, [].

  Args:
    mdp: the MDP.
    logits_tsa: policy logits, [T, S, A].
    alpha: entropy weight α ≥ 0 (0 gives the plain expected return).
  """
  chex.assert_rank(logits_tsa, 3)

  def step(v_s, logits_sa):
    logp_sa = jax.nn.log_softmax(logits_sa, axis=-1)
    q_sa = _backup(mdp, v_s)
    v_s = jnp.sum(jnp.exp(logp_sa) * (q_sa - alpha * logp_sa), axis=-1)
    return v_s, None

  v0_s = jnp.zeros_like(mdp.init_s)
  v0_s, _ = jax.lax.scan(step, v0_s, logits_tsa, reverse=True)
  return jnp.dot(mdp.init_s, v0_s)


def expected_entropy(mdp, logits_tsa):
  """`E_π Σ_t H(π_t(·|s_t))`: the entropy of the trajectory's action choices."""
  zero = mdp.replace(reward_sa=jnp.zeros_like(mdp.reward_sa))
  return policy_return(zero, logits_tsa, 1.0)


def soft_backward_induction(mdp, horizon, alpha):
  """Soft-optimal policy and value for `J_α`.

  Args:
    mdp: the MDP.
    horizon: T (static).
    alpha: α > 0.

  Returns:
    (logits_tsa [T, S, A] = Q_soft/α, soft value `μ·V_soft,0` []).
  """

  def step(v_s, _):
    q_sa = _backup(mdp, v_s)
    v_s = alpha * jax.nn.logsumexp(q_sa / alpha, axis=-1)
    return v_s, q_sa / alpha

  v0_s = jnp.zeros_like(mdp.init_s)
  v0_s, logits_tsa = jax.lax.scan(step, v0_s, None, length=horizon,
                                  reverse=True)
  return logits_tsa, jnp.dot(mdp.init_s, v0_s)


def optimal_value(mdp, horizon):
  """Unregularised optimal value `μ·V*_0` (hard backward induction), []."""

  def step(v_s, _):
    return jnp.max(_backup(mdp, v_s), axis=-1), None

  v0_s, _ = jax.lax.scan(step, jnp.zeros_like(mdp.init_s), None,
                         length=horizon)
  return jnp.dot(mdp.init_s, v0_s)


def train_er(mdp, logits0_tsa, alpha, lr, *, num_steps):
  """Exact entropy-regularised policy-gradient ascent on `J_α`.

  Args:
    mdp: the MDP.
    logits0_tsa: initial logits, [T, S, A].
    alpha: entropy weight α, [] (vmappable).
    lr: step size, [].
    num_steps: gradient steps (static).

  Returns:
    (final logits [T, S, A], J_α per step [num_steps]).
  """
  value_and_grad = jax.value_and_grad(policy_return, argnums=1)

  def step(logits_tsa, _):
    value, grad_tsa = value_and_grad(mdp, logits_tsa, alpha)
    return logits_tsa + lr * grad_tsa, value

  return jax.lax.scan(step, logits0_tsa, None, length=num_steps)
