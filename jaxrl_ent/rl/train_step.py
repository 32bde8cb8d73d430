"""The RL train step: one jit, micro-batch accumulation, one backward pass.

Per micro-batch (DESIGN.md §1):
  1. `stats, pullback = jax.vjp(completion_stats, params)`  — logp, H, m2, m3
  2. `g = ∂L/∂(logp, H)` of the aggregated token loss (policy loss + KL)
  3. `g', ctrl_state = controller.update(g, ctrl_state, logp=…, key=…)`
  4. `param_grads = pullback(g')`                            — ONE backward
then the averaged gradient goes through the optimizer. A non-finite loss or
gradient skips the update (state unchanged but `skipped` counted).

Axis legend: R rows (sequences), S = P + C sequence, P prompt bucket,
C completion length, M micro-batches.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax import struct

from jaxrl_ent.entropy import controllers
from jaxrl_ent.entropy import covariance
from jaxrl_ent.entropy import token_stats as token_stats_lib
from jaxrl_ent.entropy import types
from jaxrl_ent.models import packing
from jaxrl_ent.rl import aggregation
from jaxrl_ent.rl import kl
from jaxrl_ent.rl import registry
from jaxrl_ent.rl import state as state_lib


@struct.dataclass
class RLBatch:
  """One batch of scored rollouts, ready for the policy update.

  Attributes:
    tokens: int32 [R, S] prompt (left-padded) + completion.
    positions: int32 [R, S] RoPE positions.
    attention_mask: int32 [R, S] 1 on real tokens.
    completion_mask: int32 [R, C] 1 on generated tokens (incl. the stop).
    old_logp: float32 [R, C] behaviour log-probs (the PPO ratio denominator).
    advantages: float32 [R, C].
    ref_logp: float32 [R, C] reference log-probs (zeros when KL is off).
  """
  tokens: jax.Array
  positions: jax.Array
  attention_mask: jax.Array
  completion_mask: jax.Array
  old_logp: jax.Array
  advantages: jax.Array
  ref_logp: jax.Array

  @property
  def prompt_len(self) -> int:
    return self.tokens.shape[1] - self.completion_mask.shape[1]


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Static settings of the token loss (hashable: part of the jit key).

  Attributes:
    policy_loss: name in `rl.registry.POLICY_LOSSES`.
    policy_loss_kwargs: (name, value) pairs for it, e.g. eps_low/eps_high.
    agg_mode: name in `rl.aggregation.AGG_MODES`.
    loss_scale_factor: C of `seq-mean-token-sum-norm` (None = padded T).
    kl_coef: weight of the KL-to-reference loss (0 = off).
    kl_kind: KL estimator name (`low_var_kl`, `k1`, `k3+`, …).
    temperature: sampling temperature; log-probs and entropies use it.
    token_chunk, vocab_chunk: chunking of the token statistics.
    num_micro_batches: M; the rows are split into M equal micro-batches
      whose gradients are averaged (verl's mean of micro-batch means).
    pack_fraction: sequence packing of every forward (`models.packing`):
      its R rows are packed into ceil(R · pack_fraction) rows of
      `pack_row_len` tokens (0 = the unpacked S) with segment ids, falling
      back to the unpacked forward when they do not fit; 0 = off.
    pack_row_len: L of the packed rows (0 = S).
  """
  policy_loss: str = "ppo_clip"
  policy_loss_kwargs: tuple[tuple[str, Any], ...] = ()
  agg_mode: str = "token-mean"
  loss_scale_factor: float | None = None
  kl_coef: float = 0.0
  kl_kind: str = "low_var_kl"
  temperature: float = 1.0
  token_chunk: int = 256
  vocab_chunk: int | None = 8192
  num_micro_batches: int = 1
  pack_fraction: float = 0.0
  pack_row_len: int = 0

  def validate(self):
    registry.POLICY_LOSSES.validate(self.policy_loss)
    registry.AGG_MODES.validate(self.agg_mode)
    registry.KL_ESTIMATORS.validate(self.kl_kind)
    if self.kl_coef < 0:
      raise ValueError(f"loss.kl_coef must be >= 0, got {self.kl_coef}.")
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}.")
    if self.num_micro_batches < 1:
      raise ValueError("loss.num_micro_batches must be >= 1.")
    if not 0.0 <= self.pack_fraction <= 1.0:
      raise ValueError(f"train.pack_fraction must be in [0, 1], got "
                       f"{self.pack_fraction}.")
    if self.pack_row_len < 0:
      raise ValueError(f"train.pack_row_len must be >= 0, got "
                       f"{self.pack_row_len}.")
    return self

  def pack_shape(self, rows: int, seq: int) -> tuple[int, int] | None:
    """(packed rows, row length) of a forward over [rows, seq], or None
    when packing is off."""
    if not self.pack_fraction:
      return None
    return (packing.num_packed_rows(rows, self.pack_fraction),
            self.pack_row_len or seq)


def completion_stats(model, batch: RLBatch, *, temperature, token_chunk,
                     vocab_chunk, pack=None) -> types.TokenStats:
  """Token statistics [R, C] of the completion tokens under `model`.

  `pack`: (packed rows, row length) to run the forward on packed rows
  (`models.packing`; the unpacked forward where they do not fit), None for
  the unpacked rows.
  """
  p = batch.prompt_len
  hidden = packing.forward_completion_hidden(
      model, batch.tokens, batch.positions, batch.attention_mask,
      batch.completion_mask.shape[1], pack)
  return token_stats_lib.token_stats(
      hidden, model.head_weight(), batch.tokens[:, p:],
      temperature=temperature, token_chunk=token_chunk,
      vocab_chunk=vocab_chunk)


def params_stats(graphdef, rest, loss_cfg: LossConfig, params,
                 batch: RLBatch) -> types.TokenStats:
  """`completion_stats` of `batch` under `params`, with the loss's
  temperature and chunking (differentiable in `params`)."""
  model = nnx.merge(graphdef, params, rest)
  return completion_stats(model, batch, temperature=loss_cfg.temperature,
                          token_chunk=loss_cfg.token_chunk,
                          vocab_chunk=loss_cfg.vocab_chunk,
                          pack=loss_cfg.pack_shape(*batch.tokens.shape))


def make_stats_fn(graphdef, rest, loss_cfg: LossConfig):
  """`fn(params, batch) -> TokenStats` (jitted; no gradient)."""
  return jax.jit(functools.partial(params_stats, graphdef, rest, loss_cfg))


def _token_loss(loss_cfg: LossConfig, batch: RLBatch, policy_kwargs=None,
                kl_coef=None):
  """`loss_fn(logp, entropy) -> (loss, metrics)` of the aggregated token loss.

  `policy_kwargs` / `kl_coef` replace the static values of `loss_cfg` (the
  hyperparameters-as-state path passes arrays); whether the KL term exists
  at all stays static (`loss_cfg.kl_coef > 0`).
  """
  policy_loss = registry.get_policy_loss(loss_cfg.policy_loss)
  kwargs = dict(loss_cfg.policy_loss_kwargs)
  kwargs.update(policy_kwargs or {})
  kl_coef = loss_cfg.kl_coef if kl_coef is None else kl_coef
  mask = batch.completion_mask

  def loss_fn(logp, entropy):
    del entropy  # Entropy enters only through the controllers.
    pg_bt, metrics = policy_loss(logp, batch.old_logp, batch.advantages, mask,
                                 **kwargs)
    pg = aggregation.agg_loss(pg_bt, mask, loss_cfg.agg_mode,
                              loss_scale_factor=loss_cfg.loss_scale_factor)
    total = pg
    kl_value = jnp.zeros((), jnp.float32)
    if loss_cfg.kl_coef > 0:
      kl_bt = kl.kl_penalty(logp, batch.ref_logp, loss_cfg.kl_kind)
      kl_value = aggregation.agg_loss(
          kl_bt, mask, loss_cfg.agg_mode,
          loss_scale_factor=loss_cfg.loss_scale_factor)
      total = total + kl_coef * kl_value
    return total, {"actor/pg_loss": pg, "actor/kl_loss": kl_value,
                   **{f"actor/{k}": v for k, v in metrics.items()}}
  return loss_fn


def _split_micro(batch: RLBatch, m: int) -> RLBatch:
  rows = batch.tokens.shape[0]
  if rows % m:
    raise ValueError(f"{rows} rows do not split into num_micro_batches={m}.")
  return jax.tree.map(lambda x: x.reshape((m, rows // m) + x.shape[1:]),
                      batch)


SOURCES = ("pg", "kl", "controller")


def micro_batch_grads(graphdef, rest, loss_cfg: LossConfig, controller,
                      params, ctrl_state, micro: RLBatch, key, *,
                      policy_kwargs=None, kl_coef=None, sources=(),
                      **extra_args):
  """Steps 1–4 of DESIGN.md §1 on one micro-batch.

  With `sources` (names from `SOURCES`), the token cotangent is also split
  by where it came from — `pg` the policy loss, `kl` the KL term (the input
  cotangent minus `pg`), `controller` the chain's change (its output minus
  its input) — and each part is pulled back on its own (one extra backward
  per source, vmapped). The parts telescope to the cotangent that is
  actually pulled back, so their parameter gradients sum to `grads` up to
  float rounding (the exact ΔH attribution, `entropy.exact_dynamics`).

  Returns:
    (param grads, controller state after the chain, metrics); with
    `sources`, the first item is `(grads, {name: grads_of_that_source})`.
    `controller` must support extra args (`optax.with_extra_args_support`);
    `extra_args` reach it (e.g. `measured_entropy`).
  """
  stats, pullback = jax.vjp(
      lambda p: params_stats(graphdef, rest, loss_cfg, p, micro), params)
  loss_fn = _token_loss(loss_cfg, micro, policy_kwargs, kl_coef)
  (loss, metrics), (g_logp, g_ent) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(stats.logp, stats.entropy)
  mask = micro.completion_mask
  weights = aggregation.aggregation_weights(
      mask, loss_cfg.agg_mode, loss_scale_factor=loss_cfg.loss_scale_factor)
  g, ctrl_state = controller.update(
      types.TokenGrads(logp=g_logp, entropy=g_ent), ctrl_state, None,
      logp=stats.logp, old_logp=micro.old_logp,
      advantages=micro.advantages, mask=mask, entropy=stats.entropy,
      m2=stats.m2, m3=stats.m3, weights=weights, key=key, **extra_args)
  zeros = jnp.zeros_like(stats.logp)
  (grads,) = pullback(types.TokenStats(logp=g.logp, entropy=g.entropy,
                                       m2=zeros, m3=zeros))
  if sources:
    unknown = set(sources) - set(SOURCES)
    if unknown:
      raise ValueError(f"unknown gradient sources {sorted(unknown)}; "
                       f"allowed: {SOURCES}.")
    g_pg_logp = jax.grad(lambda lp: loss_fn(lp, stats.entropy)[1][
        "actor/pg_loss"])(stats.logp)
    parts = {
        "pg": (g_pg_logp, jnp.zeros_like(g_ent)),
        "kl": (g_logp - g_pg_logp, g_ent),
        "controller": (g.logp - g_logp, g.entropy - g_ent),
    }
    cot = types.TokenStats(
        logp=jnp.stack([parts[n][0] for n in sources]),
        entropy=jnp.stack([parts[n][1] for n in sources]),
        m2=jnp.zeros((len(sources),) + zeros.shape, zeros.dtype),
        m3=jnp.zeros((len(sources),) + zeros.shape, zeros.dtype))
    (src_grads,) = jax.vmap(pullback)(cot)
    grads = (grads, {n: jax.tree.map(lambda x, i=i: x[i], src_grads)
                     for i, n in enumerate(sources)})
  # `actor/loss` is the policy loss (+ KL); the controllers' changes act on
  # its cotangent and are reported under `entropy/*`.
  metrics = dict(metrics)
  metrics["actor/loss"] = loss
  metrics["actor/entropy"] = aggregation.masked_mean(stats.entropy, mask)
  metrics["actor/logp_mean"] = aggregation.masked_mean(stats.logp, mask)
  metrics.update(off_policy_metrics(stats.logp, micro))
  metrics.update(pack_metrics(loss_cfg, micro))
  return grads, ctrl_state, metrics


def off_policy_metrics(logp, micro: RLBatch) -> dict:
  """How far this pass is from on-policy, and where the covariance scores
  fall (what Clip-Cov's band and KL-Cov's ratio act on).

  `actor/frac_off_policy`: the share of valid tokens whose log-prob differs
  from the rollout's (`old_logp`). Where it is 0 every PPO ratio is 1 and
  KL-Cov's `sign(logp − old_logp)` penalty has zero gradient.
  `entropy/cov_score/{q50,q90,q99,q99.9,max}`: quantiles of the per-token
  covariance score `(logp − mean)(A − mean)` over the micro-batch.
  """
  mask = micro.completion_mask
  moved = jnp.abs(jax.lax.stop_gradient(logp) - micro.old_logp) > 0
  out = {"actor/frac_off_policy": aggregation.masked_mean(
      moved.astype(jnp.float32), mask)}
  qs = covariance.SCORE_QUANTILES
  values = covariance.score_quantiles(logp, micro.advantages, mask, qs)
  for i, q in enumerate(qs):
    name = "max" if q == 1.0 else f"q{100 * q:g}"
    out[f"entropy/cov_score/{name}"] = values[i]
  return out


def pack_metrics(loss_cfg: LossConfig, batch: RLBatch) -> dict:
  """`perf/padding_fraction` of `batch`'s forward, and with packing on,
  `perf/padding_fraction_packed` (of the rows the forward ran on: the
  packed ones, or the unpacked where they did not fit) and `perf/pack_fits`
  (1 when they fit; the placement is recomputed, a few scalar ops)."""
  mask = batch.attention_mask.astype(bool)
  real = jnp.sum(mask, dtype=jnp.float32)
  before = 1.0 - real / mask.size
  out = {"perf/padding_fraction": before}
  shape = loss_cfg.pack_shape(*mask.shape)
  if shape is not None:
    _, _, fits = packing.plan(mask, *shape)
    after = 1.0 - real / (shape[0] * shape[1])
    out["perf/padding_fraction_packed"] = jnp.where(fits, after, before)
    out["perf/pack_fits"] = fits.astype(jnp.float32)
  return out


def accumulate_micro_batches(grad_fn, params, ctrl_state, batch: RLBatch,
                             m: int, key):
  """Mean of `grad_fn` over `m` micro-batches (verl's mean of means).

  `grad_fn(params, ctrl_state, micro, key) -> (grads, ctrl_state, metrics)`.
  The controller state is threaded through the micro-batches.

  Returns:
    (mean grads, last controller state, per-micro metrics stacked [m]).
  """
  def body(carry, xs):
    grads_acc, ctrl = carry
    micro, i = xs
    grads, ctrl, metrics = grad_fn(params, ctrl, micro,
                                   jax.random.fold_in(key, i))
    grads_acc = jax.tree.map(lambda a, g: a + g / m, grads_acc, grads)
    return (grads_acc, ctrl), metrics

  micros = _split_micro(batch, m)
  # The gradient tree may carry more than `params` (per-source gradients).
  shapes = jax.eval_shape(
      lambda: grad_fn(params, ctrl_state,
                      jax.tree.map(lambda x: x[0], micros), key)[0])
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  (grads, ctrl_state), metrics = jax.lax.scan(
      body, (zeros, ctrl_state), (micros, jnp.arange(m)))
  return grads, ctrl_state, metrics


def guarded_apply(optimizer, grads, opt_state, params, loss):
  """One optimizer update, skipped when the loss or gradient is non-finite.

  Returns:
    (params, opt_state, finite bool [], global gradient norm).
  """
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(grad_norm) & jnp.isfinite(loss)
  updates, new_opt_state = optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jax.tree.map(
      lambda a, b: jnp.where(finite, a, b), new, old)
  return (keep(new_params, params), keep(new_opt_state, opt_state), finite,
          grad_norm)


def make_train_step(graphdef, rest, optimizer, controller,
                    loss_cfg: LossConfig, *, donate: bool = True):
  """Builds `step(state, batch, key) -> (state, metrics)`, jitted: ONE
  mini-batch update with fixed transforms (the kernel; the trainer's whole
  RL step is `rl.update.make_update`).

  Args:
    graphdef, rest: from `rl.state.split_model(model)`.
    optimizer: optax transform over the params.
    controller: token-space controller chain (e.g. from
      `entropy.controllers.attributed_chain`); `optax.identity()` for none.
    loss_cfg: the token loss.
    donate: donate the input state's buffers.
  """
  loss_cfg.validate()
  m = loss_cfg.num_micro_batches
  # Plain optax transforms (e.g. optax.identity()) ignore the extra args.
  controller = optax.with_extra_args_support(controller)
  grad_fn = functools.partial(micro_batch_grads, graphdef, rest, loss_cfg,
                              controller)

  def step(state: state_lib.TrainState, batch: RLBatch, key):
    grads, ctrl_state, metrics = accumulate_micro_batches(
        grad_fn, state.params, state.ctrl_state, batch, m, key)
    metrics = jax.tree.map(jnp.mean, metrics)
    params, opt_state, finite, grad_norm = guarded_apply(
        optimizer, grads, state.opt_state, state.params,
        metrics["actor/loss"])
    ctrl_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b),
                              ctrl_state, state.ctrl_state)
    new_state = state.replace(
        step=state.step + finite.astype(jnp.int32), params=params,
        opt_state=opt_state, ctrl_state=ctrl_state,
        skipped=state.skipped + (~finite).astype(jnp.int32))
    metrics["actor/grad_norm"] = grad_norm
    metrics["train/update_finite"] = finite.astype(jnp.float32)
    metrics.update(controller_metrics(new_state.ctrl_state))
    return new_state, metrics

  return jax.jit(step, donate_argnums=(0,) if donate else ())


def controller_metrics(ctrl_state) -> dict[str, jax.Array]:
  """Flat `entropy/...` metrics from a controller chain state.

  An `attributed_chain` state gives `entropy/dH_pred_tabular/<source>` (the
  tabular prediction at unit logit step, DESIGN.md §4); every other
  stage contributes its scalar state fields (coefficients, fractions touched)
  as `entropy/<stage>/<field>`.
  """
  out = {}
  if isinstance(ctrl_state, dict):
    items = list(ctrl_state.items())
    if any(k.startswith("dH:") for k, _ in items):
      for source, value in controllers.entropy_change_by_source(
          ctrl_state).items():
        out[f"entropy/dH_pred_tabular/{source}"] = value
      tracker = ctrl_state.get("dH:input")
      if tracker is not None:
        out["entropy/covariance"] = tracker.covariance
  else:
    items = [("controller", ctrl_state)]
  for name, st in items:
    if name.startswith("dH:") or not hasattr(st, "_fields"):
      continue
    for field in st._fields:
      value = getattr(st, field)
      if field != "count" and getattr(value, "ndim", 1) == 0:
        out[f"entropy/{name}/{field}"] = jnp.asarray(value, jnp.float32)
  return out
