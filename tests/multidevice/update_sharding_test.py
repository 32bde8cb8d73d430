"""`update` on 8 fake CPU devices: the state stays where the one sharding
helper puts it, for one run and for stacked replicas (own process: see
tests/run.sh)."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

# pylint: disable=g-import-not-at-top,wrong-import-position
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from jaxrl_ent import models
from jaxrl_ent import rollout
from jaxrl_ent import sharding
from jaxrl_ent.rl import hparams as hparams_lib
from jaxrl_ent.rl import state as state_lib
from jaxrl_ent.rl import train_step as ts
from jaxrl_ent.rl import update as update_lib
from jaxrl_ent.train import checkpoint

jax.config.update("jax_disable_most_optimizations", True)

CFG = models.ModelConfig("qwen2", 64, 32, 64, 2, 4, 2, 8, qkv_bias=True,
                         max_position_embeddings=64)
HP = {"optim.lr": 1e-2, "optim.b1": 0.9, "optim.b2": 0.999, "optim.eps": 1e-8,
      "optim.weight_decay": 0.0, "optim.grad_clip": 1.0,
      "entropy.coef": 1e-2}
SPEC = update_lib.UpdateSpec(
    loss=ts.LossConfig(token_chunk=16, num_micro_batches=2),
    optimizer=hparams_lib.OptimizerSpec(total_steps=4),
    controller=hparams_lib.ControllerSpec(method="entropy_bonus"),
    group_size=2, ppo_epochs=1, num_mini_batches=2)


def _specs(tree):
  return jax.tree.leaves(sharding.tree_specs(tree))


class UpdateShardingTest(parameterized.TestCase):

  @parameterized.parameters((False,), (True,))
  def test_step_keeps_the_helpers_shardings(self, replicas):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = models.init_sharded(CFG, mesh, seed=0)
    graphdef, params, rest = state_lib.split_model(model)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11]] * 2
    with sharding.use_mesh(mesh):
      out = rollout.generate(model, prompts, jax.random.key(0),
                             max_new_tokens=4, n_samples=2,
                             prompt_buckets=(8,), mesh=mesh)
      state = jax.jit(functools.partial(update_lib.init_state, SPEC))(
          params, HP)
    batch = update_lib.RolloutBatch.from_rollout(
        out, np.arange(16, dtype=np.float32) % 3)
    key = jax.random.key(1)
    one = sharding.train_state_shardings(checkpoint.abstract_state(state),
                                         mesh)
    if replicas:
      stack = lambda x: jax.tree.map(lambda a: jnp.stack([a, a]), x)
      state, batch, key = stack(state), stack(batch), jnp.stack([key, key])
    state_sh = sharding.train_state_shardings(
        checkpoint.abstract_state(jax.tree.map(lambda a: a[0], state))
        if replicas else checkpoint.abstract_state(state), mesh,
        replicas=replicas)
    batch_sh = sharding.batch_shardings(batch, mesh, replicas=replicas)
    state = jax.device_put(state, state_sh)
    update = update_lib.jit_update(
        update_lib.make_update(graphdef, rest, SPEC), state_sh, batch_sh,
        sharding.replicated(mesh), measure=True, replicas=replicas)
    with sharding.use_mesh(mesh):
      new_state, metrics = update(state, jax.device_put(batch, batch_sh),
                                  key, None)
    got = [x.sharding.spec for x in jax.tree.leaves(new_state)]
    self.assertEqual(got, [s.spec for s in jax.tree.leaves(
        state_sh, is_leaf=lambda s: hasattr(s, "spec"))])
    # Parameters and Adam moments really are split (not all replicated),
    # and the replica axis is whole.
    params_specs = _specs(state_sh.params)
    self.assertTrue(any(any(a is not None for a in s) for s in params_specs))
    if replicas:
      self.assertTrue(all(s[0] is None for s in params_specs))
      self.assertEqual(
          [s[1:] for s in params_specs],
          [tuple(s) for s in _specs(one.params)])
    self.assertTrue(np.all(np.isfinite(np.asarray(metrics["actor/loss"]))))
    self.assertEqual(np.asarray(new_state.step).tolist(),
                     [1, 1] if replicas else 1)


if __name__ == "__main__":
  absltest.main()
