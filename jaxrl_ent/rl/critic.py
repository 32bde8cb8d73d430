"""The PPO critic: a float32 value head, its clipped value loss and its update.

Two kinds (`CriticSpec.kind`, config `critic.kind`):

* `head` (default): a linear value head `V_t = h_t·w + b` on the policy's
  own final hidden states (the shared trunk), with the trunk **detached**:
  only `w, b` learn from the value loss. The policy's gradient therefore
  stays exactly the token-space cotangent of DESIGN.md §2 (one backward,
  controllers and the exact ΔH split by source untouched by a value term),
  and the critic costs one trunk forward per micro-batch, no backward.
* `model`: a separate critic — a copy of the policy's decoder from the same
  initial weights (the HF checkpoint or the warm-started tiny model), its
  parameters in float32, plus the same value head; trunk and head both learn
  with the critic's optimizer. Memory: the trunk's f32 params + AdamW
  moments (12N bytes), sharded by the same logical-axis rules as the policy.

Either way the critic's parameters and optimizer state ride in
`TrainState.critic` (`CriticState`), so they are sharded by
`sharding.train_state_shardings`, checkpointed and restored with the rest,
and `jax.vmap(update)` over replicas carries them. The value head reads the
hidden state that precedes each completion token (verl's
`values[:, -C - 1:-1]`, the same slice the log-probs use), in float32. With
sequence packing on (`train.pack_fraction`) the trunk runs on the same
packed rows as the policy's passes (`packing.forward_completion_hidden`).

The value loss is verl `compute_value_loss`:

.. math::
  L^V = \\tfrac12\\,\\mathrm{agg}\\big(\\max((V - G)^2,
        (\\mathrm{clip}(V, V_{old} - ε_v, V_{old} + ε_v) - G)^2)\\big)

with `vf_clipfrac = masked_mean([clipped > unclipped])`, and the explained
variance of verl's `compute_data_metrics`,
`1 − Var(G − V_old) / (Var(G) + 1e−5)` (unbiased variances over valid
tokens).

Axis legend: R rows, S = P + C sequence, C completion length, D hidden.
"""

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax import struct

from jaxrl_ent.models import packing
from jaxrl_ent.rl import aggregation
from jaxrl_ent.rl import hparams as hparams_lib

KINDS = ("head", "model")
_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class CriticSpec:
  """Static structure of the critic (a jit key; values are hparams).

  Attributes:
    kind: one of `KINDS` (see the module docstring).
    warmup_steps: RL steps during which only the critic learns (the policy,
      its optimizer and the controllers are frozen), verl `critic_warmup`.
    agg_mode: aggregation of the value loss (`rl.aggregation.AGG_MODES`).
    loss_scale_factor: C of `seq-mean-token-sum-norm` (None = padded T).
    clip: global-norm clipping of the critic's gradient
      (`critic.grad_clip` in the hparams).
  """
  kind: str = "head"
  warmup_steps: int = 0
  agg_mode: str = "token-mean"
  loss_scale_factor: float | None = None
  clip: bool = True

  def validate(self):
    if self.kind not in KINDS:
      raise ValueError(f"critic.kind={self.kind!r}; allowed: {KINDS}.")
    if self.warmup_steps < 0:
      raise ValueError("critic.warmup_steps must be >= 0.")
    if self.agg_mode not in aggregation.AGG_MODES:
      raise ValueError(f"critic.agg_mode={self.agg_mode!r}; allowed: "
                       f"{aggregation.AGG_MODES}.")
    return self


@struct.dataclass
class CriticState:
  """Attributes:
    params: `{"head": {"w": Param [D], "b": Param []}}` plus, for
      `kind="model"`, `"trunk"`: the critic decoder's `nnx.Param`s (f32).
    opt_state: optax state of the critic's optimizer.
  """
  params: Any
  opt_state: Any


def optimizer_spec(spec: CriticSpec) -> hparams_lib.OptimizerSpec:
  """Clip → AdamW at a constant learning rate (verl's critic default)."""
  return hparams_lib.OptimizerSpec(schedule="constant", clip=spec.clip,
                                   kind="adamw")


def optimizer(spec: CriticSpec, hp):
  """The critic's optimizer from the hparams: its own lr, weight decay and
  clip bound; Adam's b1/b2/eps are the policy's (`optim.*`)."""
  opt_hp = {"optim.lr": hp["critic.lr"], "optim.b1": hp["optim.b1"],
            "optim.b2": hp["optim.b2"], "optim.eps": hp["optim.eps"],
            "optim.weight_decay": hp["critic.weight_decay"]}
  if spec.clip:
    opt_hp["optim.grad_clip"] = hp["critic.grad_clip"]
  return hparams_lib.optimizer(optimizer_spec(spec), opt_hp, 0)


def _hidden_size(policy_params) -> int:
  """D, from the policy's final norm [D]."""
  try:
    return int(jax.tree.leaves(policy_params["final_norm"])[0].shape[-1])
  except (KeyError, TypeError, IndexError):
    # LoRA trains adapters only: the base (and its norm) is not in params.
    raise NotImplementedError(
        "the PPO critic needs the policy's full parameters (final_norm); "
        "a LoRA policy's trainable params are its adapters only, which the "
        "critic does not support yet.") from None


def init_params(spec: CriticSpec, policy_params):
  """Zero value head (V ≡ 0 at start) and, for `model`, the trunk as an f32
  copy of the policy's parameters."""
  d = _hidden_size(policy_params)
  params = {"head": {
      "w": nnx.Param(jnp.zeros((d,), _F32), logical_axes=("embed",)),
      "b": nnx.Param(jnp.zeros((), _F32), logical_axes=())}}
  if spec.kind == "model":
    params["trunk"] = jax.tree.map(lambda x: jnp.asarray(x, _F32),
                                   policy_params)
  return params


def init_state(spec: CriticSpec, policy_params, hp) -> CriticState:
  spec.validate()
  params = init_params(spec, policy_params)
  return CriticState(params=params, opt_state=optimizer(spec, hp).init(params))


def values(graphdef, rest, spec: CriticSpec, critic_params, policy_params,
           tokens, positions, attention_mask, prompt_len: int, pack=None):
  """`V_t` float32 [R, C] for the completion tokens (not masked).

  Args:
    graphdef, rest: the policy model's graph (the critic trunk shares it).
    critic_params: `CriticState.params`.
    policy_params: the policy's params (the trunk of `kind="head"`; no
      gradient flows into them).
    tokens, positions, attention_mask: int32 [R, S].
    prompt_len: P (static).
    pack: (packed rows, row length) to run the trunk on packed rows
      (`packing.forward_completion_hidden`, the policy's passes' choice;
      `LossConfig.pack_shape`), None for the unpacked rows.
  """
  if spec.kind == "model":
    trunk = critic_params["trunk"]
  else:
    trunk = jax.lax.stop_gradient(policy_params)
  model = nnx.merge(graphdef, trunk, rest)
  h_rcd = packing.forward_completion_hidden(
      model, tokens, positions, attention_mask,
      tokens.shape[1] - prompt_len, pack).astype(_F32)
  if spec.kind == "head":
    h_rcd = jax.lax.stop_gradient(h_rcd)
  head = critic_params["head"]
  return (jnp.einsum("rcd,d->rc", h_rcd, head["w"][...].astype(_F32))
          + head["b"][...].astype(_F32))


def value_loss(vpreds_bt, returns_bt, values_bt, mask_bt, cliprange_value, *,
               agg_mode="token-mean", loss_scale_factor=None):
  """verl `compute_value_loss` (clipped value loss, ½ outside the agg).

  Args:
    vpreds_bt: `[B, T]` current value predictions.
    returns_bt: `[B, T]` GAE returns (targets).
    values_bt: `[B, T]` values at rollout time (the clip's centre).
    mask_bt: `[B, T]` response mask.
    cliprange_value: `ε_v` (may be traced).
    agg_mode: `rl.aggregation.AGG_MODES` name.
    loss_scale_factor: C of `seq-mean-token-sum-norm`.

  Returns:
    `(vf_loss, vf_clipfrac)` float32 scalars.
  """
  chex.assert_rank([vpreds_bt, returns_bt, values_bt, mask_bt], 2)
  chex.assert_equal_shape([vpreds_bt, returns_bt, values_bt, mask_bt])
  vpreds = jnp.asarray(vpreds_bt, _F32)
  returns = jnp.asarray(returns_bt, _F32)
  old = jnp.asarray(values_bt, _F32)
  vclipped = jnp.clip(vpreds, old - cliprange_value, old + cliprange_value)
  l1 = jnp.square(vpreds - returns)
  l2 = jnp.square(vclipped - returns)
  loss = 0.5 * aggregation.agg_loss(jnp.maximum(l1, l2), mask_bt, agg_mode,
                                    loss_scale_factor=loss_scale_factor)
  clipfrac = aggregation.masked_mean((l2 > l1).astype(_F32), mask_bt)
  return loss, clipfrac


def explained_variance(returns_bt, values_bt, mask_bt):
  """verl's `critic/vf_explained_var`: `1 − Var(G − V)/(Var(G) + 1e−5)`,
  unbiased (n−1) variances over the valid tokens."""
  valid = jnp.asarray(mask_bt) > 0
  n = jnp.sum(valid.astype(_F32))

  def var(x):
    x = jnp.asarray(x, _F32)
    mean = jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(n, 1.0)
    return jnp.sum(jnp.where(valid, jnp.square(x - mean), 0.0)) / jnp.maximum(
        n - 1.0, 1.0)
  return 1.0 - var(returns_bt - values_bt) / (var(returns_bt) + 1e-5)


@struct.dataclass
class CriticBatch:
  """Rows for the critic's update.

  Attributes:
    tokens, positions, attention_mask: int32 [R, S].
    completion_mask: int32 [R, C].
    values: float32 [R, C] values at rollout time.
    returns: float32 [R, C] GAE returns.
  """
  tokens: jax.Array
  positions: jax.Array
  attention_mask: jax.Array
  completion_mask: jax.Array
  values: jax.Array
  returns: jax.Array


def make_step(graphdef, rest, spec: CriticSpec, num_micro_batches: int,
              pack_shape=None):
  """`step(critic_state, policy_params, batch, hp) -> (critic_state, metrics)`:
  one critic optimizer update on a mini-batch, its gradient the mean over
  `num_micro_batches` micro-batches (as the policy's), skipped when not
  finite. `pack_shape(rows, seq)`: the packed shape of a micro-batch's
  forward or None (`LossConfig.pack_shape`, so the critic packs exactly
  when the policy's train pass does); None = never pack."""
  m = num_micro_batches

  def loss_fn(cparams, policy_params, micro: CriticBatch, cliprange):
    p = micro.tokens.shape[1] - micro.completion_mask.shape[1]
    pack = pack_shape(*micro.tokens.shape) if pack_shape else None
    vpreds = values(graphdef, rest, spec, cparams, policy_params,
                    micro.tokens, micro.positions, micro.attention_mask, p,
                    pack)
    loss, clipfrac = value_loss(
        vpreds, micro.returns, micro.values, micro.completion_mask, cliprange,
        agg_mode=spec.agg_mode, loss_scale_factor=spec.loss_scale_factor)
    vpred_mean = aggregation.masked_mean(vpreds, micro.completion_mask)
    return loss, {"critic/vf_loss": loss, "critic/vf_clipfrac": clipfrac,
                  "critic/vpred_mean": vpred_mean}

  def step(cstate: CriticState, policy_params, batch: CriticBatch, hp):
    rows = batch.tokens.shape[0]
    if rows % m:
      raise ValueError(f"{rows} rows do not split into {m} micro-batches.")
    micros = jax.tree.map(lambda x: x.reshape((m, rows // m) + x.shape[1:]),
                          batch)
    grad = jax.grad(loss_fn, has_aux=True)

    def body(acc, micro):
      g, metrics = grad(cstate.params, policy_params, micro,
                        hp["critic.cliprange_value"])
      return jax.tree.map(lambda a, b: a + b / m, acc, g), metrics

    zeros = jax.tree.map(jnp.zeros_like, cstate.params)
    grads, metrics = jax.lax.scan(body, zeros, micros)
    metrics = jax.tree.map(jnp.mean, metrics)
    tx = optimizer(spec, hp)
    # `guarded_apply` of the policy, for the critic's tree.
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(grad_norm) & jnp.isfinite(metrics["critic/vf_loss"])
    updates, opt_state = tx.update(grads, cstate.opt_state, cstate.params)
    params = optax.apply_updates(cstate.params, updates)
    keep = lambda new, old: jax.tree.map(
        lambda a, b: jnp.where(finite, a, b), new, old)
    new = CriticState(params=keep(params, cstate.params),
                      opt_state=keep(opt_state, cstate.opt_state))
    metrics["critic/grad_norm"] = grad_norm
    metrics["critic/update_finite"] = finite.astype(_F32)
    return new, metrics

  return step


def batch_metrics(values_bt, returns_bt, advantages_bt, mask_bt):
  """verl `compute_data_metrics`' critic block: values, returns, advantages
  (mean/max/min over valid tokens) and the explained variance."""
  valid = jnp.asarray(mask_bt) > 0
  out = {}
  for name, x in (("values", values_bt), ("returns", returns_bt),
                  ("advantages", advantages_bt)):
    out[f"critic/{name}/mean"] = aggregation.masked_mean(x, mask_bt)
    out[f"critic/{name}/max"] = jnp.max(jnp.where(valid, x, -jnp.inf))
    out[f"critic/{name}/min"] = jnp.min(jnp.where(valid, x, jnp.inf))
  out["critic/vf_explained_var"] = explained_variance(returns_bt, values_bt,
                                                      mask_bt)
  return out
