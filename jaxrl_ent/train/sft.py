"""Supervised warm start: next-token cross-entropy on demonstrations.

Used to give a tiny policy a non-trivial starting accuracy before RL (the
main job's synthetic tasks), and by `launch/sft.py`. The log-likelihood goes
through the same chunked token statistics as RL, so the [N, V] logits are
never materialised here either.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax import struct

from jaxrl_ent.entropy import token_stats as token_stats_lib
from jaxrl_ent.rl import state as state_lib


@struct.dataclass
class SFTBatch:
  """Attributes:
    tokens: int32 [B, S] prompt + target, padded.
    positions: int32 [B, S].
    attention_mask: int32 [B, S].
    loss_mask: int32 [B, S], 1 on tokens to predict (the target part).
  """
  tokens: jax.Array
  positions: jax.Array
  attention_mask: jax.Array
  loss_mask: jax.Array


def sft_loss(model, batch: SFTBatch, token_chunk: int = 256):
  """Mean negative log-likelihood over `loss_mask` tokens, and token accuracy
  proxy (mean log-prob)."""
  hidden, _ = model.hidden_states(batch.tokens, batch.positions,
                                  batch.attention_mask)
  stats = token_stats_lib.token_stats(
      hidden[:, :-1], model.head_weight(), batch.tokens[:, 1:],
      token_chunk=token_chunk, vocab_chunk=None)
  mask = batch.loss_mask[:, 1:].astype(jnp.float32)
  nll = -jnp.sum(stats.logp * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  return nll


def make_sft_step(graphdef, rest, optimizer, token_chunk: int = 256):
  """`step(state, batch) -> (state, metrics)`, jitted, donating the state."""

  def step(state: state_lib.TrainState, batch: SFTBatch):
    def loss_fn(params):
      return sft_loss(nnx.merge(graphdef, params, rest), batch, token_chunk)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params,
                         opt_state=opt_state), {
                             "sft/nll": loss,
                             "sft/grad_norm": optax.tree.norm(grads)}

  return jax.jit(step, donate_argnums=(0,))
