"""Rollouts on a mesh of 8 fake CPU devices equal unsharded ones (greedy)."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

# pylint: disable=g-import-not-at-top,wrong-import-position
import tempfile

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from jaxrl_ent import models
from jaxrl_ent import rollout
from jaxrl_ent import sharding
from jaxrl_ent.models import tiny_hf

jax.config.update("jax_disable_most_optimizations", True)

PROMPTS = [[5, 17, 3, 9, 22, 41], [7, 8], [30, 31, 32, 33], [1, 2, 3]]


class RolloutShardingTest(parameterized.TestCase):

  @parameterized.parameters((8, 1, 1), (2, 2, 2))
  def test_greedy_same_on_mesh(self, data, fsdp, tensor):
    with tempfile.TemporaryDirectory() as d:
      tiny_hf.write_checkpoint(d, "qwen2", vocab_size=128, seed=3)
      plain = models.from_pretrained(d)
      mesh = sharding.make_mesh({"data": data, "fsdp": fsdp,
                                 "tensor": tensor})
      sharded = models.from_pretrained(d, mesh)
    kw = dict(max_new_tokens=8, greedy=True, n_samples=2, return_entropy=True)
    expected = rollout.generate(plain, PROMPTS, jax.random.key(0), **kw)
    with sharding.use_mesh(mesh):
      got = rollout.generate(sharded, PROMPTS, jax.random.key(0), mesh=mesh,
                             **kw)
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    np.testing.assert_allclose(got.logp, expected.logp, atol=1e-5)
    # The rows really are split over the batch axes.
    self.assertEqual(len(got.tokens.sharding.device_set), 8)
    self.assertFalse(got.tokens.sharding.is_fully_replicated)


if __name__ == "__main__":
  absltest.main()
