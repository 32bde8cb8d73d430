"""Tabular softmax bandit with exact policy gradients (entropy_methods.md §1).

Axis legend: `V` actions (the "vocabulary" of one context). Every kernel is
unbatched, pure and jittable; batch it with `jax.vmap` over seeds (reward
vectors, initial logits) and over coefficient arrays (the `Hyper` pytree of
`train`), which enter as array arguments, never as Python constants.

Tabular analogue of token selection (covariance-based control, §1.6 / §2.4).
A training batch of `N` tokens drawn on-policy from one context contains action
`a` with frequency `π_a`, log-prob `log π_a` and advantage `A_a`. The per-token
covariance score of §1.4 then has the population limit

  c_a = (log π_a − E_π log π)(A_a − E_π A) = (log π_a + H) A_a,

and every batch statistic becomes an expectation under `π` (N → ∞):

* Clip-Cov draws `⌊ρN⌋` tokens uniformly from the eligible ones
  (`lo < c < hi`); each eligible token is dropped with probability
  `q = min(1, ρ / m_E)`, where `m_E = Σ_{a eligible} π_a` is the eligible token
  mass. Dropped tokens keep their place in the token-mean denominator.
* KL-Cov selects the top `k·N` tokens by `c`: the highest-score actions until
  the token mass `k` is used up, the boundary action fractionally.

Each outer step is one on-policy "rollout" from `π_old` followed by
`num_inner` exact gradient steps on the importance-weighted surrogate
(`Σ_a π_old,a ratio_a w_a = Σ_a π_a w_a`), like PPO epochs without clipping.
KL-Cov needs `num_inner > 1`: its penalty `β|log π − log π_old|` has zero
(sub)gradient at `π = π_old`.
"""

import functools

import chex
import jax
import jax.numpy as jnp
from flax import struct

from jaxrl_ent.entropy import dynamics

METHODS = ("pg", "er", "clip_cov", "kl_cov")


def inverse_power(init, tau, power):
  """Annealing schedule `count -> init·(1 + count/τ)^(−p)` (§1.6).

  `power = 0` gives a constant schedule. All arguments may be traced arrays,
  so the schedule itself can be vmapped over.
  """

  def schedule(count):
    return init * (1.0 + count / tau) ** (-power)

  return schedule


def expected_reward(logits_v, reward_v):
  """`E_π r` for π = softmax(logits); [V], [V] -> []."""
  chex.assert_rank([logits_v, reward_v], 1)
  return jnp.sum(jax.nn.softmax(logits_v) * reward_v)


def advantage(logits_v, reward_v):
  """`A_a = r_a − E_π r`, [V]."""
  return reward_v - expected_reward(logits_v, reward_v)


def soft_objective(logits_v, reward_v, alpha):
  """Entropy-regularised objective `J_α = E_π r + α H(π)` (§1.5), []."""
  return expected_reward(logits_v, reward_v) + alpha * dynamics.entropy(
      logits_v)


def pg_direction(logits_v, reward_v):
  """Exact policy gradient on logits, `∇_z E_π r = π ⊙ A`, [V]."""
  return jax.nn.softmax(logits_v) * advantage(logits_v, reward_v)


def npg_direction(logits_v, reward_v):
  """Natural policy gradient on logits, `A` (up to a constant shift), [V]."""
  return advantage(logits_v, reward_v)


def soft_optimal_logits(reward_v, alpha):
  """Logits of the ER fixed point `π*_α = softmax(r/α)`, [V]."""
  return reward_v / alpha


def soft_value(reward_v, alpha):
  """Soft value `α log Σ_a exp(r_a/α) = max_π E_π r + α H(π)`, []."""
  return alpha * jax.nn.logsumexp(reward_v / alpha)


def two_action_gap(reward_gap, alpha):
  """Suboptimality of softmax(r/α) for two actions: `g / (1 + e^{g/α})`."""
  return reward_gap * jax.nn.sigmoid(-reward_gap / alpha)


def cov_scores(logits_v, adv_v):
  """Population covariance scores `c_a = (log π_a + H)(A_a − E_π A)`, [V]."""
  logp_v = jax.nn.log_softmax(logits_v)
  pi_v = jnp.exp(logp_v)
  return (logp_v - jnp.sum(pi_v * logp_v)) * (adv_v - jnp.sum(pi_v * adv_v))


def clip_cov_drop(pi_v, cov_v, rho, lo, hi):
  """Expected drop probability per action under Clip-Cov, [V].

  `q_a = 1[lo < c_a < hi] · min(1, ρ / m_E)`, the N → ∞ limit of choosing
  `⌊ρN⌋` tokens uniformly among the eligible ones.
  """
  eligible_v = (cov_v > lo) & (cov_v < hi)
  mass = jnp.sum(jnp.where(eligible_v, pi_v, 0.0))
  frac = jnp.minimum(1.0, rho / jnp.maximum(mass, jnp.finfo(pi_v.dtype).tiny))
  return jnp.where(eligible_v, frac, 0.0)


def kl_cov_select(pi_v, cov_v, frac):
  """Fractional top-`k` selection by covariance score under KL-Cov, [V].

  Actions are taken in decreasing `c` until the token mass `frac` is used;
  `Σ_a π_a s_a = min(frac, 1)`.
  """
  order = jnp.argsort(-cov_v)
  pi_sorted = pi_v[order]
  before = jnp.cumsum(pi_sorted) - pi_sorted
  sel_sorted = jnp.clip((frac - before) / pi_sorted, 0.0, 1.0)
  return jnp.zeros_like(pi_v).at[order].set(sel_sorted)


def _abs_sign_grad(x):
  # |x| whose gradient is sign(x) (0 at 0), as torch's abs; jnp.abs has 1.
  return x * jax.lax.stop_gradient(jnp.sign(x))


def _base_surrogate(logits_v, adv_v, anchor):
  # Σ_a π_old ratio_a A_a = Σ_a π_a A_a, plus the optional anchor λ·H(π).
  pi_v = jax.nn.softmax(logits_v)
  return jnp.sum(pi_v * adv_v) + anchor * dynamics.entropy(logits_v)


def _surrogate(method, logits_v, old_logits_v, adv_v, coef, sel_v, anchor):
  """Per-method surrogate (to be maximised) at the inner parameters."""
  base = _base_surrogate(logits_v, adv_v, anchor)
  if method == "pg":
    return base
  if method == "er":
    return base + coef * dynamics.entropy(logits_v)
  if method == "clip_cov":
    # Dropped tokens contribute nothing but stay in the denominator.
    pi_v = jax.nn.softmax(logits_v)
    return base - jnp.sum(pi_v * sel_v * adv_v)
  if method == "kl_cov":
    dlogp_v = jax.nn.log_softmax(logits_v) - jax.nn.log_softmax(old_logits_v)
    pi_old_v = jax.nn.softmax(old_logits_v)
    return base - coef * jnp.sum(pi_old_v * sel_v * _abs_sign_grad(dlogp_v))
  raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def _selection(method, old_logits_v, adv_v, coef, band_lo, band_hi, kl_frac):
  """Selected token mass per action at the rollout policy, [V]."""
  pi_v = jax.nn.softmax(old_logits_v)
  cov_v = cov_scores(old_logits_v, adv_v)
  if method == "clip_cov":
    return clip_cov_drop(pi_v, cov_v, coef, band_lo, band_hi)
  if method == "kl_cov":
    return kl_cov_select(pi_v, cov_v, kl_frac)
  return jnp.zeros_like(pi_v)


def _bias_bound(method, logits_v, old_logits_v, adv_v, coef, kl_frac):
  """§1.6 bound on ‖b_t‖: ρG (Clip-Cov) or kβG' (KL-Cov); inf otherwise."""
  pi_v = jax.nn.softmax(logits_v)
  eye_vv = jnp.eye(pi_v.shape[0], dtype=pi_v.dtype)
  dlogp_norm_v = jnp.linalg.norm(eye_vv - pi_v[None, :], axis=-1)
  if method == "clip_cov":
    ratio_v = pi_v / jax.nn.softmax(old_logits_v)
    return coef * jnp.max(ratio_v * jnp.abs(adv_v) * dlogp_norm_v)
  if method == "kl_cov":
    return coef * kl_frac * jnp.max(dlogp_norm_v)
  return jnp.asarray(jnp.inf, pi_v.dtype)


@struct.dataclass
class Hyper:
  """Array hyperparameters of `train`; every field is [] (or [N] batched).

  Attributes:
    coef0, tau, power: the method's coefficient schedule
      `coef0·(1 + t/τ)^(−power)` over outer steps (power 0: constant).
    lr: step size η.
    anchor: λ ≥ 0, fixed entropy weight of the *target* objective.
    band_lo, band_hi: Clip-Cov eligibility band on the score `c`.
    kl_frac: KL-Cov selected token fraction `k`.
  """
  coef0: jax.Array
  tau: jax.Array
  power: jax.Array
  lr: jax.Array
  anchor: jax.Array = 0.0
  band_lo: jax.Array = 0.0
  band_hi: jax.Array = float("inf")
  kl_frac: jax.Array = 0.0


def hyper_batch(n, **values):
  """`Hyper` with every field broadcast to [n] (float, default dtype)."""
  hyper = Hyper(**values)
  return jax.tree.map(lambda x: jnp.full((n,), x, dtype=float), hyper)


def train(logits0_v, reward_v, hyper, *, method, num_steps, num_inner=1):
  """Runs `num_steps` outer steps of exact (expected) on-policy training.

  Each method adds to the base ascent direction `∇_z[Σ_a π_a A_a + λH(π)]`
  (λ = `hyper.anchor`, 0 for the plain bandit) the bias `b_t` of §1.6:

  * `pg`: none.
  * `er`: `b = α_t ∇_z H` (dense), α_t = coefficient.
  * `clip_cov`: minus the PG terms of the dropped tokens, ρ_t = coefficient.
  * `kl_cov`: `−β_t Σ_a π_old,a s_a sign(Δlog π_a) ∇_z log π_a`,
    β_t = coefficient, `s` the top-`kl_frac` selection.

  Args:
    logits0_v: initial logits, [V].
    reward_v: rewards, [V].
    hyper: `Hyper` of [] arrays (vmap over it to sweep coefficients).
    method: one of `METHODS` (static).
    num_steps: outer steps (static).
    num_inner: inner gradient steps per rollout (static).

  Returns:
    (final logits [V], metrics dict of [num_steps] arrays measured at each
    rollout policy: `gap` (max r − E_π r), `entropy`, `coef`, `bias_norm`
    (mean over inner steps of ‖b_t‖), `bias_ratio` (max over inner steps of
    ‖b_t‖ / bound), `touched` (token mass the bias acts on), `policy` (π,
    [num_steps, V])).
  """
  chex.assert_rank([logits0_v, reward_v], 1)
  chex.assert_equal_shape([logits0_v, reward_v])
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
  schedule = inverse_power(hyper.coef0, hyper.tau, hyper.power)
  anchor, kl_frac = hyper.anchor, hyper.kl_frac

  def outer(logits_v, t):
    coef = schedule(t)
    adv_v = advantage(logits_v, reward_v)
    sel_v = _selection(method, logits_v, adv_v, coef, hyper.band_lo,
                       hyper.band_hi, kl_frac)
    args = (logits_v, adv_v, coef, sel_v, anchor)

    def inner(z_v, _):
      grad_v = jax.grad(lambda z: _surrogate(method, z, *args))(z_v)
      base_v = jax.grad(_base_surrogate)(z_v, adv_v, anchor)
      bias = jnp.linalg.norm(grad_v - base_v)
      bound = _bias_bound(method, z_v, logits_v, adv_v, coef, kl_frac)
      ratio = jnp.where(bound > 0, bias / bound, 0.0)
      return z_v + hyper.lr * grad_v, (bias, ratio)

    new_logits_v, (bias_k, ratio_k) = jax.lax.scan(
        inner, logits_v, None, length=num_inner)
    pi_v = jax.nn.softmax(logits_v)
    if method == "er":
      dense_v = jnp.abs(dynamics.entropy_grad_logits(logits_v)) > 0
      touched = jnp.sum(jnp.where(dense_v, pi_v, 0.0))
    else:
      touched = jnp.sum(pi_v * sel_v)
    metrics = dict(
        gap=jnp.max(reward_v) - jnp.sum(pi_v * reward_v),
        entropy=dynamics.entropy(logits_v),
        coef=jnp.asarray(coef, pi_v.dtype),
        bias_norm=jnp.mean(bias_k),
        bias_ratio=jnp.max(ratio_k),
        touched=touched,
        policy=pi_v,
    )
    return new_logits_v, metrics

  steps = jnp.arange(num_steps, dtype=logits0_v.dtype)
  return jax.lax.scan(outer, logits0_v, steps)


@functools.partial(jax.jit,
                   static_argnames=("method", "num_steps", "num_inner"))
def train_batch(logits0_nv, reward_nv, hyper_n, *, method, num_steps,
                num_inner=1):
  """`jit(vmap(train))` over a leading batch axis of every argument.

  One compilation per (method, num_steps, num_inner, N): seeds and
  coefficient sweeps share it by being laid out along the batch axis.
  """
  fn = functools.partial(train, method=method, num_steps=num_steps,
                         num_inner=num_inner)
  return jax.vmap(fn)(logits0_nv, reward_nv, hyper_n)
