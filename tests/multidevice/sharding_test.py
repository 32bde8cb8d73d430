"""Sharding on 8 fake CPU devices (run in its own process: see tests/run.sh)."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

# pylint: disable=g-import-not-at-top,wrong-import-position
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxrl_ent import models
from jaxrl_ent import sharding
from jaxrl_ent.models import tiny_hf

jax.config.update("jax_disable_most_optimizations", True)

# Expected PartitionSpec per parameter of the tiny qwen2 (vocab 128, D 32,
# F 64, N 4, K 2, H 8) on mesh data=2, fsdp=2, tensor=2 with the default
# rules: embed->fsdp, vocab/mlp/heads->tensor, layers/head_dim/norm replicated.
GOLDEN_222 = {
    "embed": P("tensor", "fsdp"),
    "final_norm": P(),
    "lm_head": P("fsdp", "tensor"),
    "layers/attn_norm": P(),
    "layers/mlp_norm": P(),
    "layers/q_w": P(None, "fsdp", "tensor"),
    "layers/k_w": P(None, "fsdp", "tensor"),
    "layers/v_w": P(None, "fsdp", "tensor"),
    "layers/o_w": P(None, "tensor", None, "fsdp"),
    "layers/q_b": P(None, "tensor"),
    "layers/k_b": P(None, "tensor"),
    "layers/v_b": P(None, "tensor"),
    "layers/gate_w": P(None, "fsdp", "tensor"),
    "layers/up_w": P(None, "fsdp", "tensor"),
    "layers/down_w": P(None, "tensor", "fsdp"),
}
# On data=1, fsdp=2, tensor=4 the 2 KV heads cannot be split 4 ways: the
# kv_heads dimension falls back to replicated instead of failing.
GOLDEN_124_CHANGES = {
    "layers/k_w": P(None, "fsdp"),
    "layers/v_w": P(None, "fsdp"),
    "layers/k_b": P(),
    "layers/v_b": P(),
}


def _flat_specs(model):
  state = nnx.state(model, nnx.Param)
  return {"/".join(map(str, k)): v.get_value().sharding.spec
          for k, v in nnx.to_flat_state(state)}


class ShardingTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = tempfile.mkdtemp()
    tiny_hf.write_checkpoint(cls.dir, "qwen2", vocab_size=128)
    cls.reference = models.from_pretrained(cls.dir)
    rng = np.random.default_rng(0)
    cls.tokens = jnp.asarray(rng.integers(0, 128, (8, 12)))
    cls.mask = jnp.asarray(np.arange(12)[None, :] < rng.integers(4, 13, (8, 1)))
    cls.expected = np.asarray(cls.reference(cls.tokens,
                                            attention_mask_bt=cls.mask)[0])

  def test_eight_devices(self):
    self.assertEqual(jax.device_count(), 8)

  @parameterized.parameters((8, 1, 1), (2, 2, 2), (1, 2, 4))
  def test_sharded_forward_equals_unsharded(self, data, fsdp, tensor):
    mesh = sharding.make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor})
    model = models.from_pretrained(self.dir, mesh)
    tokens = jax.device_put(self.tokens, jax.sharding.NamedSharding(
        mesh, sharding.logical_to_spec(("act_batch", None))))

    @jax.jit
    def forward(model, tokens, mask):
      return model(tokens, attention_mask_bt=mask)[0]

    with sharding.use_mesh(mesh):
      got = forward(model, tokens, self.mask)
    np.testing.assert_allclose(np.asarray(got), self.expected, atol=1e-5,
                               rtol=1e-5)
    valid = np.asarray(self.mask)
    self.assertTrue(np.isfinite(np.asarray(got)[valid]).all())

  def test_golden_partition_specs(self):
    mesh = sharding.make_mesh([("data", 2), ("fsdp", 2), ("tensor", 2)])
    self.assertEqual(_flat_specs(models.from_pretrained(self.dir, mesh)),
                     GOLDEN_222)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    self.assertEqual(_flat_specs(models.from_pretrained(self.dir, mesh)),
                     {**GOLDEN_222, **GOLDEN_124_CHANGES})

  def test_loaded_arrays_are_sharded_not_replicated(self):
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    model = models.from_pretrained(self.dir, mesh)
    embed = model.embed.get_value()
    # Each device holds a quarter (tensor) of vocab x half (fsdp) of embed.
    self.assertEqual(embed.addressable_shards[0].data.shape, (32, 16))

  def test_jit_init_has_exact_shardings(self):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = models.init_sharded(self.reference.cfg, mesh, seed=3)
    self.assertEqual(_flat_specs(model), GOLDEN_222)
    # The same seed gives the same values as an unsharded init.
    plain = models.init_sharded(self.reference.cfg, None, seed=3)
    np.testing.assert_array_equal(np.asarray(model.embed.get_value()),
                                  np.asarray(plain.embed.get_value()))

  def test_auto_axis(self):
    mesh = sharding.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    self.assertEqual(dict(mesh.shape), {"data": 2, "fsdp": 2, "tensor": 2})

  @parameterized.parameters(
      ({"data": 3, "fsdp": 1, "tensor": 1}, "needs 3 devices but 8"),
      ({"data": 2, "fsdp": 2, "tensor": 4}, "needs 16 devices but 8"),
      ({"data": -1, "fsdp": -1}, "at most one axis may be -1"),
      ({"data": 3, "tensor": -1}, "does not divide the 8"),
      ({"pipeline": 8}, "unknown axis 'pipeline'"),
      ({"data": 0}, "has size 0"),
  )
  def test_bad_mesh_is_a_clear_error(self, shape, message):
    with self.assertRaisesRegex(ValueError, message):
      sharding.make_mesh(shape)

  def test_replication_check(self):
    mesh = sharding.make_mesh({"fsdp": 8})
    _, abs_state = models.hf_io.abstract_model(self.reference.cfg)
    good = sharding.state_shardings(abs_state, mesh)
    self.assertLess(sharding.check_replication(abs_state, good, 0.1), 0.1)
    everything_replicated = sharding.merge_rules(
        {"embed": None, "vocab": None, "mlp": None})
    bad = sharding.state_shardings(abs_state, mesh, everything_replicated)
    with self.assertRaisesRegex(ValueError, "fully replicated"):
      sharding.check_replication(abs_state, bad, 0.1)
    with self.assertRaisesRegex(ValueError, "fully replicated"):
      models.from_pretrained(self.dir, mesh, rules=everything_replicated,
                             max_replicated_fraction=0.1)

  def test_rule_overrides(self):
    rules = sharding.merge_rules({"embed": ("fsdp", "data")})
    spec = sharding.logical_to_spec(("vocab", "embed"), rules)
    self.assertEqual(spec, P("tensor", ("fsdp", "data")))
    with self.assertRaisesRegex(ValueError, "unknown mesh axis 'model'"):
      sharding.merge_rules({"embed": "model"})
    with self.assertRaisesRegex(ValueError, "no rule for logical axis"):
      sharding.logical_to_spec(("bogus",))

  def test_splits(self):
    # The rollout fuses q/k/v and gate/up only where this says no mesh axis
    # of size > 1 splits heads or the MLP width.
    heads = ("act_heads", "act_kv_heads", "act_mlp")
    self.assertFalse(sharding.splits(heads))  # no active mesh
    for shape, expected in (({"data": 8, "fsdp": 1, "tensor": 1}, False),
                            ({"data": 1, "fsdp": 8, "tensor": 1}, False),
                            ({"data": 2, "fsdp": 2, "tensor": 2}, True),
                            ({"data": 1, "fsdp": 2, "tensor": 4}, True)):
      with sharding.use_mesh(sharding.make_mesh(shape)):
        self.assertEqual(sharding.splits(heads), expected, shape)
        self.assertEqual(sharding.splits(("act_batch",)),
                         shape["data"] * shape["fsdp"] > 1, shape)
    rules = sharding.merge_rules({"act_mlp": "fsdp"})
    with sharding.use_mesh(sharding.make_mesh({"data": 1, "fsdp": 8,
                                               "tensor": 1}), rules):
      self.assertTrue(sharding.splits(heads))


if __name__ == "__main__":
  absltest.main()
