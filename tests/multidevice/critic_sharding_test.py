"""The PPO critic on 8 fake CPU devices: its params and AdamW moments follow
the logical-axis rules (the critic model's trunk exactly as the policy's
params, the value head along `embed`), and a jitted update keeps them there
(own process: see tests/run.sh)."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

# pylint: disable=g-import-not-at-top,wrong-import-position
import functools

import jax
import numpy as np
import optax
from absl.testing import absltest

from jaxrl_ent import models
from jaxrl_ent import rollout
from jaxrl_ent import sharding
from jaxrl_ent.rl import critic as critic_lib
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
      "critic.lr": 1e-2, "critic.cliprange_value": 0.5,
      "critic.weight_decay": 0.0, "critic.grad_clip": 1.0,
      "advantage.gamma": 1.0, "advantage.lam": 1.0}
SPEC = update_lib.UpdateSpec(
    loss=ts.LossConfig(token_chunk=16, num_micro_batches=2),
    optimizer=hparams_lib.OptimizerSpec(total_steps=4),
    controller=hparams_lib.ControllerSpec(method="none"),
    estimator="gae", group_size=2, ppo_epochs=1, num_mini_batches=2,
    critic=critic_lib.CriticSpec(kind="model"))


def _specs(tree):
  return [tuple(s) for s in jax.tree.leaves(sharding.tree_specs(tree))]


class CriticShardingTest(absltest.TestCase):

  def test_critic_follows_the_rules_through_an_update(self):
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
    state_sh = sharding.train_state_shardings(
        checkpoint.abstract_state(state), mesh)
    crit = state_sh.critic
    # The trunk: exactly the policy's specs (the same logical axes), and
    # really split; AdamW's moments mirror the params.
    trunk = _specs(crit.params["trunk"])
    self.assertEqual(trunk, _specs(state_sh.params))
    self.assertTrue(any(any(a is not None for a in s) for s in trunk))
    self.assertEqual(
        _specs(optax.tree_utils.tree_get(crit.opt_state, "mu")),
        _specs(crit.params))
    # The head: w [D] along `embed` (→ fsdp), b replicated.
    self.assertEqual(_specs(crit.params["head"]), [(), ("fsdp",)])
    self.assertEqual(
        crit.params["head"]["w"].get_value().spec,
        sharding.logical_to_spec(("embed",), sharding.DEFAULT_RULES,
                                 (CFG.hidden_size,), mesh))
    # Float32 critic whatever the policy's dtype.
    self.assertTrue(all(x.dtype == np.float32 for x in jax.tree.leaves(
        state.critic.params)))

    batch = update_lib.RolloutBatch.from_rollout(
        out, np.arange(16, dtype=np.float32) % 3)
    batch_sh = sharding.batch_shardings(batch, mesh)
    state = jax.device_put(state, state_sh)
    update = update_lib.jit_update(
        update_lib.make_update(graphdef, rest, SPEC), state_sh, batch_sh,
        sharding.replicated(mesh), measure=False)
    with sharding.use_mesh(mesh):
      new_state, metrics = update(state, jax.device_put(batch, batch_sh),
                                  jax.random.key(1), None)
    self.assertEqual(
        [x.sharding.spec for x in jax.tree.leaves(new_state.critic)],
        [s.spec for s in jax.tree.leaves(
            state_sh.critic, is_leaf=lambda s: hasattr(s, "spec"))])
    self.assertTrue(np.isfinite(float(metrics["critic/vf_loss"])))


if __name__ == "__main__":
  absltest.main()
