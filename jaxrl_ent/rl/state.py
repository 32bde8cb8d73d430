"""The training state: a frozen pytree of arrays only (params, optimizer,
entropy-controller state, hyperparameters, step). The model graph and the
transforms' structure are passed by closure, never stored in the state."""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax import struct

from jaxrl_ent.models import lora


@struct.dataclass
class TrainState:
  """Attributes:
    step: int32 [], the one clock: RL steps taken by `rl.update` (one per
      call, skipped or not); the mini-batch kernel
      `train_step.make_train_step` counts its finite updates instead.
    params: nnx.State of the policy's `nnx.Param`s.
    opt_state: optax state of the parameter optimizer.
    ctrl_state: optax state of the token-space entropy-controller chain.
    skipped: int32 [], optimizer updates skipped because of non-finite
      values.
    hparams: dict of float32 [] coefficients keyed by dotted config name
      (`rl.hparams`); empty for the fixed-transform kernel.
    critic: `rl.critic.CriticState` (value-head / critic-model params and
      their optimizer state) for PPO with GAE; None without a critic (no
      leaves, so critic-free states and checkpoints are unchanged).
    frozen: with LoRA (`models.lora`), the model's non-trainable state (the
      frozen, possibly quantised base weights) as an `nnx.State`, carried
      as an argument of the jitted update (closed over, it would be
      embedded in the program as constants); None otherwise. Checkpoints
      leave it out (`without_frozen`): the base is rebuilt from its source.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  ctrl_state: Any
  skipped: jax.Array
  hparams: Any = struct.field(default_factory=dict)
  critic: Any = None
  frozen: Any = None


def create(params, optimizer, controller, hparams=None) -> TrainState:
  """A fresh state. Call under the mesh so counters are replicated."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    ctrl_state=controller.init(None),
                    skipped=jnp.zeros((), jnp.int32),
                    hparams=dict(hparams or {}))


def split_model(model):
  """(graphdef, params, rest): the trainable `nnx.Param`s and everything else.

  A LoRA model (`models.lora`) trains its `lora.Adapter`s only: params are
  the adapters, and the frozen base weights go to rest.
  """
  if nnx.state(model, lora.Adapter):
    return nnx.split(model, lora.Adapter, ...)
  return nnx.split(model, nnx.Param, ...)


def has_frozen_base(rest) -> bool:
  """Whether `rest` (from `split_model`) holds frozen base weights (LoRA)."""
  return bool(jax.tree.leaves(rest))


def without_frozen(state: TrainState) -> TrainState:
  """The state as checkpoints hold it (adapters, optimizer; no base)."""
  return state.replace(frozen=None)
