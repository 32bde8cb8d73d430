"""Checkpoint restore onto another mesh, on 8 fake CPU devices (own process)."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

# pylint: disable=g-import-not-at-top,wrong-import-position
import chex
import jax
import numpy as np
import optax
from absl.testing import absltest

from jaxrl_ent import models
from jaxrl_ent import sharding
from jaxrl_ent.entropy import controllers
from jaxrl_ent.train import checkpoint
from jaxrl_ent.rl import state as state_lib

jax.config.update("jax_disable_most_optimizations", True)

# Vocab 64 and width 16 divide the 8-way fsdp and 2-way tensor axes.
_CFG = models.ModelConfig("qwen2", 64, 16, 32, 2, 4, 2, 4, qkv_bias=True)


def _state_on(mesh, shift=0.0):
  """A TrainState created the way rl_loop does it, on `mesh`."""
  _, params, _ = state_lib.split_model(models.init_sharded(_CFG, mesh))
  controller = controllers.attributed_chain(("kl_cov", controllers.kl_cov()))
  with sharding.use_mesh(mesh):
    params = jax.jit(lambda p: jax.tree.map(lambda x: x + shift, p))(params)
    return jax.jit(lambda p: state_lib.create(p, optax.adamw(1e-3),
                                              controller))(params)


def _sharded_leaves(state):
  return [x for x in jax.tree.leaves(state)
          if not x.sharding.is_fully_replicated]


class CheckpointMeshTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # The same values on two meshes; parameters sharded differently.
    cls.fsdp8 = _state_on(sharding.make_mesh({"fsdp": 8}), shift=0.5)
    cls.mesh222 = _state_on(
        sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), shift=0.5)

  def test_eight_devices(self):
    self.assertEqual(jax.device_count(), 8)

  def test_save_fsdp8_restore_on_other_meshes(self):
    saved = self.fsdp8
    self.assertNotEmpty(_sharded_leaves(saved))
    ckpt = checkpoint.Checkpointer(self.create_tempdir().full_path)
    self.addCleanup(ckpt.close)
    self.assertTrue(ckpt.save(4, saved, data_state={"next_index": 2}))
    want = jax.tree.map(np.asarray, saved)

    # Onto data=2, fsdp=2, tensor=2: every leaf lands in the sharding of a
    # state created on that mesh.
    target = checkpoint.abstract_state(self.mesh222)
    state, data_state, _, step = ckpt.restore(target)
    self.assertEqual((step, data_state), (4, {"next_index": 2}))
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state), want)
    for got, spec in zip(jax.tree.leaves(state), jax.tree.leaves(target)):
      self.assertEqual(got.sharding, spec.sharding)
    self.assertTrue(any("tensor" in str(x.sharding.spec)
                        for x in _sharded_leaves(state)))

    # Onto one device, from `jax.eval_shape` plus a sharding.
    one = jax.sharding.SingleDeviceSharding(jax.devices()[3])
    state, _, _, _ = ckpt.restore(
        checkpoint.abstract_like(jax.eval_shape(lambda: saved), one))
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state), want)
    for x in jax.tree.leaves(state):
      self.assertEqual(x.sharding, one)

  def test_fingerprint_does_not_depend_on_sharding(self):
    one = jax.device_put(self.fsdp8,
                         jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    want = checkpoint.state_fingerprint(self.fsdp8)
    self.assertEqual(checkpoint.state_fingerprint(self.mesh222), want)
    self.assertEqual(checkpoint.state_fingerprint(one), want)


if __name__ == "__main__":
  absltest.main()
