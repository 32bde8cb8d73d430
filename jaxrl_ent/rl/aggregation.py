"""Loss aggregation over tokens (verl `agg_loss`), its weights, micro-batching.

Every aggregate here is a ratio `numerator / denominator` of a masked sum and a
count, entropy_methods.md §3.2:

=========================  ===========================  =======================
mode                       numerator                    denominator
=========================  ===========================  =======================
`token-mean`               Σ_{b,t} L·M                  Σ_{b,t} M
`seq-mean-token-sum`       Σ_b Σ_t L·M                  #{b : Σ_t M > 0}
`seq-mean-token-mean`      Σ_b (Σ_t L·M / Σ_t M)        #{b : Σ_t M > 0}
`seq-mean-token-sum-norm`  Σ_{b,t} L·M                  C (`loss_scale_factor`,
                                                        default padded T)
=========================  ===========================  =======================

Sequences without a valid token are left out of the sequence means (as verl
does now); a ratio whose denominator is 0 is 0, never NaN. `token-mean` is the
DAPO / TRL `"dapo"` form, `seq-mean-token-mean` the original GRPO form and
`seq-mean-token-sum-norm` the Dr.GRPO form (Liu et al. 2025, "Understanding
R1-Zero-Like Training"), whose `C` must stay constant over training.

Micro-batches. `agg_loss(..., denominator=agg_denominator(mask_all, mode))` on
each micro-batch sums *exactly* to the aggregate of the whole mini-batch (the
verl `batch_num_tokens` / `global_batch_size` path). The FSDP `dp_actor` in
verl does not pass those counts: each micro-batch is token-averaged on its own
and scaled by `1/grad_accum` (or `#seqs_micro / ppo_mini_batch_size` with a
dynamic batch size), i.e. a *mean of micro-batch token-means*.
`token_sum_and_count` and `combine_token_means` give both.

Masks may be bool or 0/1 floats; a non-binary float mask acts as a weight.
Losses at masked tokens never reach the result, whatever their value (NaN
included), and get a zero gradient.
"""

import chex
import jax.numpy as jnp

TOKEN_MEAN = "token-mean"
SEQ_MEAN_TOKEN_SUM = "seq-mean-token-sum"
SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"
SEQ_MEAN_TOKEN_SUM_NORM = "seq-mean-token-sum-norm"
AGG_MODES = (TOKEN_MEAN, SEQ_MEAN_TOKEN_SUM, SEQ_MEAN_TOKEN_MEAN,
             SEQ_MEAN_TOKEN_SUM_NORM)


def validate_agg_mode(mode):
  """Returns `mode` if it is one of `AGG_MODES`.

  Raises:
    ValueError: for any other name.
  """
  if mode not in AGG_MODES:
    raise ValueError(
        f"Unknown loss aggregation mode {mode!r}; expected one of {AGG_MODES}.")
  return mode


def _mask_f32(mask_bt):
  return jnp.asarray(mask_bt).astype(jnp.float32)


def safe_div(num, den):
  """`num / den`, and `num` (0 in every use here) where `den == 0`."""
  return num / jnp.where(den > 0, den, 1.0)


def masked_token_values(x_bt, mask_bt):
  """`x·M` with masked entries exactly 0 (no NaN leaks, zero gradient).

  Args:
    x_bt: `[B, T]` values.
    mask_bt: `[B, T]` mask, bool or float.

  Returns:
    float32 `[B, T]`.
  """
  m_bt = _mask_f32(mask_bt)
  return jnp.where(m_bt > 0, jnp.asarray(x_bt, jnp.float32), 0.0) * m_bt


def masked_mean(x_bt, mask_bt):
  """`Σ x·M / Σ M` over all entries (verl `masked_mean`); 0 if no valid entry.

  Args:
    x_bt: values, any shape (`[B, T]` in practice).
    mask_bt: mask of the same shape.

  Returns:
    float32 scalar.
  """
  chex.assert_equal_shape([x_bt, mask_bt])
  return safe_div(jnp.sum(masked_token_values(x_bt, mask_bt)),
                  jnp.sum(_mask_f32(mask_bt)))


def _seq_counts_b(mask_bt):
  return jnp.sum(_mask_f32(mask_bt), axis=-1)


def agg_denominator(mask_bt, mode, *, loss_scale_factor=None):
  """The denominator of `mode` (table in the module docstring).

  Computed on the *whole* mini-batch mask and passed as `denominator` to
  `agg_loss` / `aggregation_weights` of each micro-batch, it makes their sum
  the exact mini-batch aggregate.

  Args:
    mask_bt: `[B, T]` mask.
    mode: one of `AGG_MODES`.
    loss_scale_factor: `C` of `seq-mean-token-sum-norm`; default `T`.

  Returns:
    float32 scalar.

  Raises:
    ValueError: unknown mode, or a non-positive concrete `loss_scale_factor`.
  """
  chex.assert_rank(mask_bt, 2)
  validate_agg_mode(mode)
  if mode == TOKEN_MEAN:
    return jnp.sum(_mask_f32(mask_bt))
  if mode == SEQ_MEAN_TOKEN_SUM_NORM:
    if loss_scale_factor is None:
      loss_scale_factor = mask_bt.shape[-1]
    if isinstance(loss_scale_factor, (int, float)) and loss_scale_factor <= 0:
      raise ValueError(
          f"loss_scale_factor must be > 0, got {loss_scale_factor}.")
    return jnp.asarray(loss_scale_factor, jnp.float32)
  return jnp.sum((_seq_counts_b(mask_bt) > 0).astype(jnp.float32))


def agg_numerator(loss_bt, mask_bt, mode):
  """The numerator of `mode` (table in the module docstring).

  Args:
    loss_bt: `[B, T]` per-token loss.
    mask_bt: `[B, T]` mask.
    mode: one of `AGG_MODES`.

  Returns:
    float32 scalar, additive over micro-batches split along `B`.
  """
  chex.assert_rank([loss_bt, mask_bt], 2)
  chex.assert_equal_shape([loss_bt, mask_bt])
  validate_agg_mode(mode)
  lm_bt = masked_token_values(loss_bt, mask_bt)
  if mode == SEQ_MEAN_TOKEN_MEAN:
    return jnp.sum(safe_div(jnp.sum(lm_bt, axis=-1), _seq_counts_b(mask_bt)))
  return jnp.sum(lm_bt)


def agg_loss(loss_bt, mask_bt, mode, *, loss_scale_factor=None,
             denominator=None):
  """verl `agg_loss`: aggregate a per-token loss into a scalar.

  .. math::
    \\mathrm{agg}(L, M) = \\frac{\\mathrm{num}(L, M)}{\\mathrm{den}(M)}
    = \\sum_{b,t} w_{bt} L_{bt}

  with `num`, `den` from the module docstring and `w` from
  `aggregation_weights`.

  Args:
    loss_bt: `[B, T]` per-token loss.
    mask_bt: `[B, T]` mask.
    mode: one of `AGG_MODES`.
    loss_scale_factor: `C` of `seq-mean-token-sum-norm`; default `T`.
    denominator: optional global denominator (`agg_denominator` of the whole
      mini-batch) replacing this batch's own; see the module docstring.

  Returns:
    float32 scalar.
  """
  if denominator is None:
    denominator = agg_denominator(mask_bt, mode,
                                  loss_scale_factor=loss_scale_factor)
  return safe_div(agg_numerator(loss_bt, mask_bt, mode), denominator)


def aggregation_weights(mask_bt, mode, *, loss_scale_factor=None,
                        denominator=None):
  """Per-token weights `w = ∂ agg_loss / ∂ L`, so `agg_loss == Σ w·L`.

  .. math::
    w_{bt} = \\frac{M_{bt}}{\\mathrm{den}} \\times
      \\begin{cases} 1/\\sum_t M_{bt} & \\text{seq-mean-token-mean} \\\\
      1 & \\text{otherwise} \\end{cases}

  The entropy controllers scale their per-token cotangents by these weights,
  so an entropy bonus aggregates exactly like the policy loss.

  Args:
    mask_bt: `[B, T]` mask.
    mode: one of `AGG_MODES`.
    loss_scale_factor: `C` of `seq-mean-token-sum-norm`; default `T`.
    denominator: optional global denominator, as in `agg_loss`.

  Returns:
    float32 `[B, T]`, 0 on masked tokens.
  """
  chex.assert_rank(mask_bt, 2)
  validate_agg_mode(mode)
  if denominator is None:
    denominator = agg_denominator(mask_bt, mode,
                                  loss_scale_factor=loss_scale_factor)
  m_bt = _mask_f32(mask_bt)
  if mode == SEQ_MEAN_TOKEN_MEAN:
    m_bt = safe_div(m_bt, _seq_counts_b(mask_bt)[:, None])
  return safe_div(m_bt, denominator)


def token_sum_and_count(loss_bt, mask_bt):
  """`(Σ L·M, Σ M)` of one micro-batch: the token-mean numerator/denominator.

  Carry the pair across micro-batches (tunix `WeightedMetric` style) and
  combine with `combine_token_means`.

  Args:
    loss_bt: `[B, T]` per-token loss (or any per-token metric).
    mask_bt: `[B, T]` mask.

  Returns:
    `(sum, count)`, two float32 scalars.
  """
  return (agg_numerator(loss_bt, mask_bt, TOKEN_MEAN),
          agg_denominator(mask_bt, TOKEN_MEAN))


def combine_token_means(sums_k, counts_k, *, exact=True,
                        microbatch_weights_k=None):
  """Combines per-micro-batch `(sum, count)` pairs into one token-mean.

  .. math::
    \\text{exact:}\\ \\frac{\\sum_k s_k}{\\sum_k n_k} \\qquad
    \\text{verl:}\\ \\sum_k \\alpha_k \\frac{s_k}{n_k},
    \\ \\alpha_k = 1/K \\text{ by default}

  The verl form (`exact=False`) is what the FSDP `dp_actor` optimises when no
  global token count is given: it weighs a token of a short micro-batch more
  than one of a long micro-batch. With dynamic batch sizes verl uses
  `α_k = #seqs_k / ppo_mini_batch_size`; pass those as
  `microbatch_weights_k`.

  Args:
    sums_k: `[K]` per-micro-batch masked sums.
    counts_k: `[K]` per-micro-batch token counts.
    exact: the exact global token-mean if True, else verl's weighted mean of
      micro-batch token-means.
    microbatch_weights_k: `[K]` weights `α_k` of the verl form; ignored when
      `exact`.

  Returns:
    float32 scalar.
  """
  chex.assert_rank([sums_k, counts_k], 1)
  chex.assert_equal_shape([sums_k, counts_k])
  sums_k = jnp.asarray(sums_k, jnp.float32)
  counts_k = jnp.asarray(counts_k, jnp.float32)
  if exact:
    return safe_div(jnp.sum(sums_k), jnp.sum(counts_k))
  if microbatch_weights_k is None:
    microbatch_weights_k = jnp.full(sums_k.shape, 1.0 / sums_k.shape[0])
  chex.assert_equal_shape([sums_k, microbatch_weights_k])
  return jnp.sum(microbatch_weights_k * safe_div(sums_k, counts_k))
