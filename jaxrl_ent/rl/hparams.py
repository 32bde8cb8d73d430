"""Hyperparameters as state: what may be swept, and the transforms built from it.

A run's coefficients (learning rate, clip ranges, KL and entropy
coefficients, Clip-Cov/KL-Cov ratios and bands, adaptive targets, …) are
float32 scalars in `TrainState.hparams`, keyed by their dotted config name
(`"optim.lr"`, `"entropy.coef"`). Inside the jitted `update` the optimizer
and the controller chain are built from those arrays (optax's
`inject_hyperparams` idea, without storing them twice), so `jax.vmap(update)`
over stacked states runs replicas with different coefficients in one
compiled program. What stays static (a jit key) is structure: which method,
which schedule kind, how many steps a schedule lasts, whether gradient
clipping is on.

One clock: every schedule here is evaluated at `TrainState.step`, which
counts RL steps (one `update` call each). Anneal durations and warm-ups are
therefore in RL steps. Within an RL step all epochs × mini-batches ×
micro-batches use the same coefficients; Adam's own bias-correction count is
the only other counter, because the AdamW formula needs it.
"""

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from jaxrl_ent.entropy import controllers
from jaxrl_ent.entropy import methods

_F32 = jnp.float32

ENTROPY_METHODS = methods.NAMES
ANNEALS = methods.ANNEALS
LR_SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "sgd")

# The `config.entropy` fields each method reads as (sweepable) coefficients,
# from its parameter class (`entropy.methods`).
ENTROPY_HPARAMS = {m: methods.hparam_keys(m) for m in ENTROPY_METHODS}
# The coefficient an anneal schedule multiplies, per method.
ANNEALED = methods.ANNEALED
# The anneal's coefficients per kind (`anneal_steps`, a schedule length, is
# structure: not an hparam).
ANNEAL_HPARAMS = {kind: tuple(k for k in keys
                              if k in methods.Anneal.hparam_keys())
                  for kind, keys in methods.Anneal.READERS.items()}


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """Static structure of clip → AdamW or SGD (values live in the hparams).

  Attributes:
    kind: one of `OPTIMIZERS`: `adamw` (clip → Adam → decoupled weight decay
      → lr, optax `adamw`) or `sgd` (clip → decoupled weight decay → lr, no
      momentum; `optim.b1/b2/eps` are then unused).
    schedule: learning-rate schedule kind, one of `LR_SCHEDULES`.
    warmup_steps: linear warm-up, in RL steps.
    total_steps: RL steps of the run (the decay horizon).
    end_fraction: final lr of a decaying schedule, as a fraction of peak.
    clip: global-norm clipping on (`optim.grad_clip` in the hparams).
  """
  schedule: str = "constant"
  warmup_steps: int = 0
  total_steps: int = 1
  end_fraction: float = 0.0
  clip: bool = True
  kind: str = "adamw"


@dataclasses.dataclass(frozen=True)
class ControllerSpec:
  """Static structure of the entropy-controller chain.

  Attributes:
    method: one of `ENTROPY_METHODS`.
    anneal: one of `ANNEALS` (applies to `ANNEALED[method]`).
    anneal_steps: duration of a linear/cosine anneal, in RL steps.
    rule, measure: adaptive_entropy's rule and entropy measure.
    steer_mode, steer_score: STEER's weighting.
    track: wrap in `controllers.attributed_chain` (tabular ΔH by source).
  """
  method: str = "none"
  anneal: str = "constant"
  anneal_steps: int = 100
  rule: str = "bang_bang"
  measure: str = "old_logp"
  steer_mode: str = "exponential"
  steer_score: str = "reference"
  track: bool = True

  def hparam_fields(self) -> tuple[str, ...]:
    """`entropy.*` fields of this chain that live in the hparams."""
    fields = ENTROPY_HPARAMS[self.method]
    if self.method in ANNEALED:
      fields += ANNEAL_HPARAMS[self.anneal]
    return tuple(f"entropy.{f}" for f in fields)


def as_hparams(values: Mapping[str, float]) -> dict[str, jax.Array]:
  """float32 scalars, in sorted key order (one pytree structure per set)."""
  return {k: jnp.asarray(values[k], _F32) for k in sorted(values)}


def lr_at(spec: OptimizerSpec, peak, step):
  """The learning rate at RL step `step` (all traceable)."""
  t = jnp.asarray(step, _F32)
  peak = jnp.asarray(peak, _F32)
  w = spec.warmup_steps
  frac = jnp.clip((t - w) / max(spec.total_steps - w, 1), 0.0, 1.0)
  end = spec.end_fraction
  if spec.schedule == "constant":
    decay = 1.0
  elif spec.schedule == "linear":
    decay = 1.0 - (1.0 - end) * frac
  elif spec.schedule == "cosine":
    decay = end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(math.pi * frac))
  else:
    raise ValueError(f"optim.schedule={spec.schedule!r}; allowed: "
                     f"{LR_SCHEDULES}.")
  if w > 0:
    # Linear warm-up 0 → peak over the first `w` RL steps.
    return jnp.where(t < w, peak * t / w, peak * decay)
  return peak * decay


def clip_by_global_norm(max_norm):
  """`optax.clip_by_global_norm` for a traced float32 bound: the factor
  `min(1, max_norm / ‖g‖)` is computed in float32 and applied in each
  leaf's dtype (optax's own select refuses a float32 bound against
  bfloat16 leaves). Below the bound the updates pass unchanged."""
  def update_fn(updates, state, params=None):
    del params
    g_norm = optax.tree.norm(updates).astype(_F32)
    factor = jnp.where(g_norm < max_norm, 1.0, max_norm / g_norm)
    return jax.tree.map(lambda t: t * factor.astype(t.dtype), updates), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def keep_dtypes(inner):
  """`inner` with its updates and state cast back to their input dtypes.

  The hyperparameters are float32 arrays (not Python floats, which JAX
  treats as weakly typed), so with bfloat16 parameters optax's arithmetic
  would promote the moments to float32 and the state's dtypes would change
  from one step to the next (a scan carry or a donated buffer must not).
  """
  def update_fn(updates, state, params=None):
    new_updates, new_state = inner.update(updates, state, params)
    cast = lambda new, old: new.astype(old.dtype)
    return (jax.tree.map(cast, new_updates, updates),
            jax.tree.map(cast, new_state, state))
  return optax.GradientTransformation(inner.init, update_fn)


def optimizer(spec: OptimizerSpec, hp: Mapping[str, jax.Array], step):
  """clip_by_global_norm → AdamW at RL step `step`, from (traced) hparams.

  The state structure does not depend on the values, so a state made by
  one replica's optimizer is valid for any other's.
  """
  parts = ([clip_by_global_norm(hp["optim.grad_clip"])]
           if spec.clip else [])
  lr = lr_at(spec, hp["optim.lr"], step)
  if spec.kind == "adamw":
    parts.append(optax.adamw(
        learning_rate=lr, b1=hp["optim.b1"], b2=hp["optim.b2"],
        eps=hp["optim.eps"], weight_decay=hp["optim.weight_decay"]))
  elif spec.kind == "sgd":
    parts += [optax.add_decayed_weights(hp["optim.weight_decay"]),
              optax.scale_by_learning_rate(lr)]
  else:
    raise ValueError(f"optim.name={spec.kind!r}; allowed: {OPTIMIZERS}.")
  return keep_dtypes(optax.chain(*parts))


def optimizer_values(spec: OptimizerSpec, hp: Mapping[str, jax.Array], step):
  """The scalars `optimizer(spec, hp, step)` applies, for the exact ΔH split
  (`entropy.exact_dynamics`): lr, b1, b2, eps, weight_decay, grad_clip
  (None when clipping is off)."""
  return {"lr": jnp.asarray(lr_at(spec, hp["optim.lr"], step), _F32),
          "b1": hp["optim.b1"], "b2": hp["optim.b2"], "eps": hp["optim.eps"],
          "weight_decay": hp["optim.weight_decay"],
          "grad_clip": hp["optim.grad_clip"] if spec.clip else None}


def annealed(spec: ControllerSpec, value, hp: Mapping[str, jax.Array], step):
  """`value` annealed per `spec.anneal`, evaluated at RL step `step`."""
  t = jnp.asarray(step, _F32)
  if spec.anneal == "constant":
    return value
  if spec.anneal == "inverse_power":
    return value * (1.0 + t / hp["entropy.anneal_tau"]) ** (
        -hp["entropy.anneal_power"])
  frac = jnp.clip(t / max(spec.anneal_steps, 1), 0.0, 1.0)
  end = hp["entropy.anneal_end"]
  if spec.anneal == "linear":
    return value * (1.0 - (1.0 - end) * frac)
  if spec.anneal == "cosine":
    return value * (end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(math.pi * frac)))
  raise ValueError(f"entropy.anneal={spec.anneal!r}; allowed: {ANNEALS}.")


def controller(spec: ControllerSpec, hp: Mapping[str, jax.Array], step):
  """The token-space controller chain at RL step `step`, from hparams.

  Coefficients are evaluated here (one clock) and handed to the controllers
  as constants, so each controller's own `count` does not schedule anything.
  """
  if spec.method not in methods.METHODS:
    raise ValueError(f"entropy.method={spec.method!r}; allowed: "
                     f"{ENTROPY_METHODS}.")
  e = {k.split(".", 1)[1]: v for k, v in hp.items()
       if k.startswith("entropy.")}
  p = methods.with_values(spec.method, e)
  coef = lambda name: annealed(spec, getattr(p, name), hp, step)
  stages = methods.stages(spec.method, p, spec, coef, hp)
  if spec.track:
    return controllers.attributed_chain(*stages)
  return optax.chain(*[t for _, t in stages]) if stages else optax.identity()
