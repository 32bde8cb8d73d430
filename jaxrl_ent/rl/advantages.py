"""Advantage estimators: group-relative outcome advantages and GAE.

Outcome estimators take one scalar reward per response, `rewards_b` `[B]`,
for `B = P·G` responses to `P` prompts with `G = group_size` responses each;
**groups are contiguous** (responses `g·G … g·G + G − 1` share a prompt, the
layout of `rollout.generate` and of TRL's `repeat_interleave`). They return
the advantage broadcast to the response tokens, `[B, T]`, zero on masked
tokens (verl multiplies by `response_mask`). All share the signature
`fn(rewards_b, mask_bt, *, group_size, **hparams) -> advantages_bt`, the one
`registry.ADVANTAGE_ESTIMATORS` holds.

GAE (`gae_advantages`) is the PPO estimator with a value head and per-token
rewards; it has its own signature.

Everything is computed in float32 and is pure: `group_size` is static (it sets
a reshape), the other hyperparameters may be traced (vmap over `gamma`).
"""

import chex
import jax
import jax.numpy as jnp

from jaxrl_ent.rl import aggregation


def _check_groups(rewards_b, group_size):
  chex.assert_rank(rewards_b, 1)
  if not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f"group_size must be a positive int, got {group_size!r}.")
  if rewards_b.shape[0] % group_size:
    raise ValueError(f"Batch of {rewards_b.shape[0]} responses is not a whole "
                     f"number of groups of {group_size}.")


def broadcast_to_tokens(adv_b, mask_bt):
  """`A_b` on every valid token of response `b`: `A_b · M_bt`.

  Args:
    adv_b: `[B]` per-response advantages.
    mask_bt: `[B, T]` response mask.

  Returns:
    float32 `[B, T]`, 0 on masked tokens.
  """
  chex.assert_rank([adv_b, mask_bt], [1, 2])
  chex.assert_equal_shape_prefix([adv_b, mask_bt], 1)
  return aggregation.masked_token_values(
      jnp.broadcast_to(adv_b[:, None], mask_bt.shape), mask_bt)


def group_mean_std(rewards_b, group_size):
  """Per-response mean and **unbiased** (n−1) std of its group.

  As verl `compute_grpo_outcome_advantage`: a group of size 1 has mean 0 and
  std 1, so its advantage is its reward.

  Args:
    rewards_b: `[B]` rewards, `B` a multiple of `group_size`.
    group_size: `G`, a static positive int.

  Returns:
    `(mean_b, std_b)`, float32 `[B]` each (the group value repeated G times).
  """
  _check_groups(rewards_b, group_size)
  r_pg = jnp.asarray(rewards_b, jnp.float32).reshape(-1, group_size)
  if group_size == 1:
    return jnp.zeros_like(rewards_b, jnp.float32), jnp.ones_like(
        rewards_b, jnp.float32)
  mean_p = jnp.mean(r_pg, axis=-1)
  std_p = jnp.std(r_pg, axis=-1, ddof=1)
  return jnp.repeat(mean_p, group_size), jnp.repeat(std_p, group_size)


def grpo_advantages(rewards_b, mask_bt, *, group_size, epsilon=1e-6,
                    scale_by_std=True):
  """GRPO group-normalised outcome advantage (Shao et al. 2024, DeepSeekMath).

  .. math::
    \\hat A_i = \\frac{R_i - \\mathrm{mean}_g(R)}{\\mathrm{std}_g(R) + ε}

  with the unbiased group std, exactly verl `compute_grpo_outcome_advantage`
  (entropy_methods.md §3.3). `scale_by_std=False` is verl
  `norm_adv_by_std_in_grpo=False`, i.e. Dr.GRPO. A group whose rewards are all
  equal gets advantage 0.

  Args:
    rewards_b: `[B]` outcome rewards.
    mask_bt: `[B, T]` response mask.
    group_size: `G`, static.
    epsilon: added to the std.
    scale_by_std: divide by `std + ε`.

  Returns:
    float32 `[B, T]`.
  """
  mean_b, std_b = group_mean_std(rewards_b, group_size)
  adv_b = jnp.asarray(rewards_b, jnp.float32) - mean_b
  if scale_by_std:
    adv_b = adv_b / (std_b + epsilon)
  return broadcast_to_tokens(adv_b, mask_bt)


def dr_grpo_advantages(rewards_b, mask_bt, *, group_size):
  """Dr.GRPO advantage `R_i − mean_g(R)`, without the std.

  Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
  Perspective".

  Args:
    rewards_b: `[B]` outcome rewards.
    mask_bt: `[B, T]` response mask.
    group_size: `G`, static.

  Returns:
    float32 `[B, T]`.
  """
  return grpo_advantages(rewards_b, mask_bt, group_size=group_size,
                         scale_by_std=False)


def rloo_advantages(rewards_b, mask_bt, *, group_size):
  """RLOO leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics").

  .. math::
    \\hat A_i = R_i - \\frac{1}{G-1}\\sum_{j \\ne i} R_j
              = \\frac{G}{G-1}\\,(R_i - \\mathrm{mean}_g R)

  As verl `compute_rloo_outcome_advantage`, a group of size 1 keeps its raw
  reward.

  Args:
    rewards_b: `[B]` outcome rewards.
    mask_bt: `[B, T]` response mask.
    group_size: `G`, static.

  Returns:
    float32 `[B, T]`.
  """
  mean_b, _ = group_mean_std(rewards_b, group_size)
  adv_b = jnp.asarray(rewards_b, jnp.float32)
  if group_size > 1:
    adv_b = (adv_b - mean_b) * (group_size / (group_size - 1))
  return broadcast_to_tokens(adv_b, mask_bt)


def batch_normalized_advantages(rewards_b, mask_bt, *, group_size,
                                epsilon=1e-4):
  """Group-mean baseline, **batch** std scale: TRL `scale_rewards="batch"`.

  .. math::
    \\hat A_i = \\frac{R_i - \\mathrm{mean}_g(R)}
                      {\\mathrm{std}_{\\text{batch}}(R) + ε}

  The baseline stays per group; only the scale is the unbiased std of all `B`
  rewards (0 when `B = 1`), as in TRL `GRPOTrainer` (whose ε is 1e-4). This is
  the "group mean, batch std" normalisation of Liu et al. 2025 ("Part I:
  Tricks or Traps?", Lite PPO). Under data parallelism the batch is the one
  passed in: gather rewards first for a global std, as TRL does.

  Args:
    rewards_b: `[B]` outcome rewards.
    mask_bt: `[B, T]` response mask.
    group_size: `G`, static.
    epsilon: added to the std.

  Returns:
    float32 `[B, T]`.
  """
  mean_b, _ = group_mean_std(rewards_b, group_size)
  r_b = jnp.asarray(rewards_b, jnp.float32)
  std = jnp.std(r_b, ddof=1) if r_b.shape[0] > 1 else jnp.float32(0.0)
  if group_size == 1:
    # TRL's group mean of a singleton group is the reward itself.
    mean_b = r_b
  return broadcast_to_tokens((r_b - mean_b) / (std + epsilon), mask_bt)


def last_token_rewards(rewards_b, mask_bt):
  """Outcome reward placed on the last valid token, the rest 0.

  verl's reward managers write the score at `valid_response_length − 1`; this
  is the per-token reward that `gae_advantages` and `kl.kl_in_reward` expect.

  Args:
    rewards_b: `[B]` outcome rewards.
    mask_bt: `[B, T]` response mask.

  Returns:
    float32 `[B, T]`; an all-masked row is all 0.
  """
  chex.assert_rank([rewards_b, mask_bt], [1, 2])
  valid_bt = jnp.asarray(mask_bt) > 0
  t_idx = jnp.arange(mask_bt.shape[-1])
  last_b = jnp.max(jnp.where(valid_bt, t_idx, -1), axis=-1)
  onehot_bt = t_idx[None, :] == last_b[:, None]
  return jnp.where(onehot_bt, jnp.asarray(rewards_b, jnp.float32)[:, None],
                   0.0)


def masked_whiten(values_bt, mask_bt, *, shift_mean=True):
  """verl `masked_whiten`: `(x − mean) / sqrt(var + 1e−8)` over valid tokens.

  `var` is the masked variance with Bessel's correction `n/(n−1)` (verl raises
  for `n ≤ 1`; here the correction is dropped then, to stay jittable).

  Args:
    values_bt: `[B, T]` values.
    mask_bt: `[B, T]` mask.
    shift_mean: if False the mean is added back (scale only).

  Returns:
    float32 `[B, T]`, 0 on masked tokens (verl leaves them whitened too; they
    never reach a masked loss).
  """
  chex.assert_rank([values_bt, mask_bt], 2)
  n = jnp.sum(jnp.asarray(mask_bt, jnp.float32))
  mean = aggregation.masked_mean(values_bt, mask_bt)
  var = aggregation.masked_mean(jnp.square(values_bt - mean), mask_bt)
  var = var * jnp.where(n > 1, n / jnp.maximum(n - 1, 1.0), 1.0)
  out_bt = (values_bt - mean) * jax.lax.rsqrt(var + 1e-8)
  if not shift_mean:
    out_bt = out_bt + mean
  return aggregation.masked_token_values(out_bt, mask_bt)


def gae_advantages(token_rewards_bt, values_bt, mask_bt, *, gamma=1.0, lam=1.0,
                   whiten=True):
  """Generalised advantage estimation (Schulman et al. 2016), verl semantics.

  A reverse `lax.scan` over `t`, skipping masked tokens (multi-turn
  observations, padding): they neither add a TD error nor break the chain.

  .. math::
    δ_t = r_t + γ V_{t'} - V_t, \\qquad
    A_t = δ_t + γλ A_{t'}, \\qquad G_t = A_t + V_t

  where `t'` is the next valid token (`V_{t'} = A_{t'} = 0` past the end).
  With `γ = λ = 1`, `A_t = Σ_{s ≥ t} r_s − V_t`. Returns are computed before
  whitening; the advantages are then `masked_whiten`ed if `whiten` (verl
  `compute_gae_advantage_return` always whitens).

  Args:
    token_rewards_bt: `[B, T]` per-token rewards (e.g. `last_token_rewards`,
      minus an in-reward KL).
    values_bt: `[B, T]` value-head predictions `V_t`.
    mask_bt: `[B, T]` response mask.
    gamma: discount `γ` (may be traced).
    lam: GAE `λ` (may be traced).
    whiten: whiten the advantages over the valid tokens of the batch.

  Returns:
    `(advantages_bt, returns_bt)`, float32 `[B, T]`, 0 on masked tokens.
  """
  chex.assert_rank([token_rewards_bt, values_bt, mask_bt], 2)
  chex.assert_equal_shape([token_rewards_bt, values_bt, mask_bt])
  valid_tb = (jnp.asarray(mask_bt) > 0).T
  rewards_tb = jnp.asarray(token_rewards_bt, jnp.float32).T
  values_tb = jnp.asarray(values_bt, jnp.float32).T
  gamma = jnp.asarray(gamma, jnp.float32)
  lam = jnp.asarray(lam, jnp.float32)

  def step(carry, x):
    next_value_b, next_adv_b = carry
    r_b, v_b, valid_b = x
    delta_b = r_b + gamma * next_value_b - v_b
    adv_b = delta_b + gamma * lam * next_adv_b
    # Masked tokens pass the carry through untouched (verl's blend with mask).
    next_value_b = jnp.where(valid_b, v_b, next_value_b)
    next_adv_b = jnp.where(valid_b, adv_b, next_adv_b)
    return (next_value_b, next_adv_b), next_adv_b

  zeros_b = jnp.zeros(rewards_tb.shape[1], jnp.float32)
  _, adv_tb = jax.lax.scan(step, (zeros_b, zeros_b),
                           (rewards_tb, values_tb, valid_tb), reverse=True)
  adv_bt = adv_tb.T
  returns_bt = aggregation.masked_token_values(adv_bt + values_bt, mask_bt)
  if whiten:
    adv_bt = masked_whiten(adv_bt, mask_bt)
  else:
    adv_bt = aggregation.masked_token_values(adv_bt, mask_bt)
  return adv_bt, returns_bt


def gae_outcome_advantages(rewards_b, mask_bt, *, group_size, values_bt=None,
                           gamma=1.0, lam=1.0, whiten=True):
  """`gae_advantages` of outcome rewards placed on the last valid token.

  The `ADVANTAGE_ESTIMATORS` entry `gae` (it needs the critic's values, so
  `rl.update` calls `gae_advantages` itself, for the returns too, and with
  per-token rewards when an in-reward KL is on). `group_size` is unused:
  GAE's baseline is the critic, not the group.

  Args:
    rewards_b: `[B]` outcome rewards.
    mask_bt: `[B, T]` response mask.
    group_size: unused (the registry's common signature).
    values_bt: `[B, T]` value predictions at rollout time (None: `V ≡ 0`,
      i.e. the whitened discounted reward-to-go).
    gamma, lam: GAE's `γ`, `λ`.
    whiten: whiten the advantages over the batch's valid tokens.

  Returns:
    float32 `[B, T]`.
  """
  del group_size
  if values_bt is None:
    values_bt = jnp.zeros(jnp.shape(mask_bt), jnp.float32)
  adv_bt, _ = gae_advantages(last_token_rewards(rewards_b, mask_bt),
                             values_bt, mask_bt, gamma=gamma, lam=lam,
                             whiten=whiten)
  return adv_bt
