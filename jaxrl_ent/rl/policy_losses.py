"""Per-token policy-gradient surrogates: PPO clip (+dual clip), GSPO, REINFORCE.

Every loss has the signature

  `fn(logp_bt, old_logp_bt, advantages_bt, mask_bt, **hparams)
      -> (loss_bt, metrics)`

(the one `registry.POLICY_LOSSES` holds). `logp_bt` is the differentiable
log-prob of the sampled token under the current policy, `old_logp_bt` that of
the behaviour policy (a constant), `advantages_bt` a constant. `loss_bt` is the
float32 `[B, T]` per-token loss, exactly 0 on masked tokens (with zero
gradient, whatever the inputs there); reduce it with `aggregation.agg_loss`.
`metrics` is always the dict of float32 scalars

  * `pg_clipfrac`: masked mean of `1[L2 > L1]` (the clipped branch is active),
  * `pg_clipfrac_lower`: masked mean of the dual-clip branch being active,
  * `ppo_kl`: masked mean of `old_logp − logp` (a k1 estimate of
    KL(π_old‖π_θ)),

as verl `compute_policy_loss_*` reports them (entropy_methods.md §3.4); they
carry no gradient. Hyperparameters are plain scalars or arrays, so a loss can
be vmapped over its clip range.
"""

import chex
import jax
import jax.numpy as jnp

from jaxrl_ent.rl import aggregation

_sg = jax.lax.stop_gradient
LOG_RATIO_CLAMP = 20.0
GSPO_LOG_RATIO_MAX = 10.0


def _check_inputs(logp_bt, old_logp_bt, advantages_bt, mask_bt):
  chex.assert_rank([logp_bt, old_logp_bt, advantages_bt, mask_bt], 2)
  chex.assert_equal_shape([logp_bt, old_logp_bt, advantages_bt, mask_bt])
  chex.assert_type([logp_bt, old_logp_bt, advantages_bt], float)


def _f32(*xs):
  return tuple(jnp.asarray(x, jnp.float32) for x in xs)


def _metrics(clipped_bt, lower_bt, neg_log_ratio_bt, mask_bt):
  mean = lambda x: _sg(aggregation.masked_mean(x, mask_bt))
  return {
      "pg_clipfrac": mean(clipped_bt.astype(jnp.float32)),
      "pg_clipfrac_lower": mean(lower_bt.astype(jnp.float32)),
      "ppo_kl": mean(neg_log_ratio_bt),
  }


def _finish(loss_bt, mask_bt):
  return jnp.where(jnp.asarray(mask_bt) > 0, loss_bt, 0.0)


def clamped_log_ratio(logp_bt, old_logp_bt):
  """`clamp(logp − old_logp, −20, 20)`, the log of verl's importance ratio.

  Args:
    logp_bt: `[B, T]` current log-probs.
    old_logp_bt: `[B, T]` behaviour log-probs.

  Returns:
    `[B, T]` log-ratio (its exp is the ratio `r_t`).
  """
  return jnp.clip(logp_bt - old_logp_bt, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def ppo_clip_loss(logp_bt, old_logp_bt, advantages_bt, mask_bt, *,
                  eps_low=0.2, eps_high=0.2, clip_ratio_c=3.0):
  """PPO clipped surrogate with clip-higher and dual clip, verl `vanilla`.

  .. math::
    r_t = \\exp(\\mathrm{clip}(\\log π_θ - \\log π_{old}, -20, 20)) \\\\
    L_1 = -A r_t, \\quad L_2 = -A\\,\\mathrm{clip}(r_t, 1-ε_{low}, 1+ε_{high}),
    \\quad L^{clip} = \\max(L_1, L_2) \\\\
    L = \\begin{cases} \\min(L^{clip}, -A c) & A < 0 \\\\
                       L^{clip} & A \\ge 0 \\end{cases}

  PPO: Schulman et al. 2017. Asymmetric `ε_high > ε_low` ("clip-higher"): DAPO,
  Yu et al. 2025 (0.2/0.28). Dual clip with `c = clip_ratio_c > 1`: Ye et al.
  2020 ("Mastering Complex Control in MOBA Games with Deep RL"); verl applies
  it by default with `c = 3`, the DAPO / Clip-Cov recipes set 10. Pass
  `clip_ratio_c=None` for plain PPO (the original Cui et al. repo's
  baselines).

  Args:
    logp_bt: `[B, T]` current log-probs (differentiable).
    old_logp_bt: `[B, T]` behaviour log-probs.
    advantages_bt: `[B, T]` advantages.
    mask_bt: `[B, T]` response mask.
    eps_low: lower clip range `ε_low`.
    eps_high: upper clip range `ε_high`.
    clip_ratio_c: dual-clip bound `c` (> 1), or None to disable.

  Returns:
    `(loss_bt, metrics)`, see the module docstring.

  Raises:
    ValueError: a concrete `clip_ratio_c <= 1`.
  """
  _check_inputs(logp_bt, old_logp_bt, advantages_bt, mask_bt)
  if isinstance(clip_ratio_c, (int, float)) and clip_ratio_c <= 1.0:
    raise ValueError(f"clip_ratio_c must be > 1, got {clip_ratio_c}.")
  logp_bt, old_logp_bt, adv_bt = _f32(logp_bt, old_logp_bt, advantages_bt)
  log_ratio_bt = clamped_log_ratio(logp_bt, old_logp_bt)
  ratio_bt = jnp.exp(log_ratio_bt)
  l1_bt = -adv_bt * ratio_bt
  l2_bt = -adv_bt * jnp.clip(ratio_bt, 1.0 - eps_low, 1.0 + eps_high)
  clip_loss_bt = jnp.maximum(l1_bt, l2_bt)
  if clip_ratio_c is None:
    loss_bt = clip_loss_bt
    lower_bt = jnp.zeros_like(clip_loss_bt, bool)
  else:
    l3_bt = -adv_bt * clip_ratio_c
    negative_bt = adv_bt < 0
    loss_bt = jnp.where(negative_bt, jnp.minimum(l3_bt, clip_loss_bt),
                        clip_loss_bt)
    lower_bt = (clip_loss_bt > l3_bt) & negative_bt
  metrics = _metrics(l2_bt > l1_bt, lower_bt, -log_ratio_bt, mask_bt)
  return _finish(loss_bt, mask_bt), metrics


def reinforce_loss(logp_bt, old_logp_bt, advantages_bt, mask_bt):
  """Unclipped importance-weighted policy gradient `−A·r_t`.

  .. math::
    L_t = -A_t\\, r_t, \\qquad
    ∇_θ L_t = -A_t\\, r_t\\, ∇_θ \\log π_θ(y_t)

  On-policy (`old_logp = sg(logp)`) this is REINFORCE (Williams 1992) with
  the given advantages; it is also the base surrogate of KL-Cov. `r_t` uses the
  same ±20 log-ratio clamp as `ppo_clip_loss`.

  Args:
    logp_bt: `[B, T]` current log-probs (differentiable).
    old_logp_bt: `[B, T]` behaviour log-probs.
    advantages_bt: `[B, T]` advantages.
    mask_bt: `[B, T]` response mask.

  Returns:
    `(loss_bt, metrics)`; both clip fractions are 0.
  """
  _check_inputs(logp_bt, old_logp_bt, advantages_bt, mask_bt)
  logp_bt, old_logp_bt, adv_bt = _f32(logp_bt, old_logp_bt, advantages_bt)
  log_ratio_bt = clamped_log_ratio(logp_bt, old_logp_bt)
  loss_bt = -adv_bt * jnp.exp(log_ratio_bt)
  never_bt = jnp.zeros_like(loss_bt, bool)
  metrics = _metrics(never_bt, never_bt, -log_ratio_bt, mask_bt)
  return _finish(loss_bt, mask_bt), metrics


def gspo_sequence_log_ratio(logp_bt, old_logp_bt, mask_bt):
  """`log s_i = (1/|y_i|) Σ_t (log π_θ − log π_old)` over valid tokens.

  The GSPO sequence-level importance ratio is
  `s_i = (π_θ(y_i|x)/π_old(y_i|x))^{1/|y_i|}` (Zheng et al. 2025, "Group
  Sequence Policy Optimization"), the length-normalised sequence likelihood
  ratio. An empty sequence has `log s_i = 0`.

  Args:
    logp_bt: `[B, T]` current log-probs.
    old_logp_bt: `[B, T]` behaviour log-probs.
    mask_bt: `[B, T]` response mask.

  Returns:
    float32 `[B]`.
  """
  chex.assert_rank([logp_bt, old_logp_bt, mask_bt], 2)
  diff_bt = aggregation.masked_token_values(logp_bt - old_logp_bt, mask_bt)
  n_b = jnp.sum(jnp.asarray(mask_bt, jnp.float32), axis=-1)
  return aggregation.safe_div(jnp.sum(diff_bt, axis=-1), n_b)


def gspo_loss(logp_bt, old_logp_bt, advantages_bt, mask_bt, *, eps_low=3e-4,
              eps_high=4e-4):
  """GSPO clipped surrogate on the sequence ratio, token form (GSPO-token).

  .. math::
    s_{i,t}(θ) = \\mathrm{sg}[s_i(θ)]\\,
      \\frac{π_θ(y_{i,t})}{\\mathrm{sg}[π_θ(y_{i,t})]} \\\\
    L_{i,t} = \\max\\big(-A_{i,t}\\, s_{i,t},\\
      -A_{i,t}\\,\\mathrm{clip}(s_{i,t}, 1-ε_{low}, 1+ε_{high})\\big)

  `s_{i,t}` equals `s_i` in value, while its gradient is
  `s_i ∇ log π_θ(y_{i,t})` (Zheng et al. 2025, the GSPO-token variant). With a
  per-sequence advantage and `seq-mean-token-mean` aggregation (verl's choice
  for GSPO) the unclipped gradient is exactly GSPO's
  `−(1/G) Σ_i A_i ∇ s_i(θ)`. The clip ranges act on the sequence ratio, hence
  the paper's small defaults (3e-4 / 4e-4). As in verl
  `compute_policy_loss_gspo`, `log s_{i,t}` is clamped above at 10 and no
  dual clip applies.

  Args:
    logp_bt: `[B, T]` current log-probs (differentiable).
    old_logp_bt: `[B, T]` behaviour log-probs.
    advantages_bt: `[B, T]` advantages (constant along a sequence for GSPO).
    mask_bt: `[B, T]` response mask.
    eps_low: lower clip range on `s_i`.
    eps_high: upper clip range on `s_i`.

  Returns:
    `(loss_bt, metrics)`; `pg_clipfrac_lower` is 0, `ppo_kl` is the token
    masked mean of `old_logp − logp`.
  """
  _check_inputs(logp_bt, old_logp_bt, advantages_bt, mask_bt)
  logp_bt, old_logp_bt, adv_bt = _f32(logp_bt, old_logp_bt, advantages_bt)
  log_seq_ratio_b = gspo_sequence_log_ratio(logp_bt, old_logp_bt, mask_bt)
  log_ratio_bt = _sg(log_seq_ratio_b)[:, None] + logp_bt - _sg(logp_bt)
  ratio_bt = jnp.exp(jnp.minimum(log_ratio_bt, GSPO_LOG_RATIO_MAX))
  l1_bt = -adv_bt * ratio_bt
  l2_bt = -adv_bt * jnp.clip(ratio_bt, 1.0 - eps_low, 1.0 + eps_high)
  loss_bt = jnp.maximum(l1_bt, l2_bt)
  never_bt = jnp.zeros_like(loss_bt, bool)
  metrics = _metrics(l2_bt > l1_bt, never_bt, old_logp_bt - logp_bt, mask_bt)
  return _finish(loss_bt, mask_bt), metrics
