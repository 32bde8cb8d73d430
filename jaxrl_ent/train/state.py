"""The training state: a frozen pytree of arrays only (params, optimizer,
entropy-controller state, step). The model graph and the optimizer are passed
by closure, never stored in the state."""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax import struct


@struct.dataclass
class TrainState:
  """Attributes:
    step: int32 [], optimizer steps taken.
    params: nnx.State of the policy's `nnx.Param`s.
    opt_state: optax state of the parameter optimizer.
    ctrl_state: optax state of the token-space entropy-controller chain.
    skipped: int32 [], updates skipped because of non-finite values.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  ctrl_state: Any
  skipped: jax.Array


def create(params, optimizer, controller) -> TrainState:
  """A fresh state. Call under the mesh so counters are replicated."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    ctrl_state=controller.init(None),
                    skipped=jnp.zeros((), jnp.int32))


def split_model(model):
  """(graphdef, params, rest): the trainable `nnx.Param`s and everything else."""
  return nnx.split(model, nnx.Param, ...)
