"""The rollout's decode step with the Pallas TPU paged attention kernel
(`decode_attention.pallas_tpu`) compiled for a v5e topology (libtpu, no
TPU): `auto` picks it under a TPU mesh, it lowers to one Mosaic call per
layer inside `shard_map`, and the step fits."""

import aot_testlib  # First: CPU platform, repository path, libtpu.

from absl.testing import absltest

from configs import tpu_grpo
from jaxrl_ent import sharding
from jaxrl_ent.aot import decode_estimate
from jaxrl_ent.aot import programs
from jaxrl_ent.models import decode_attention

needs_libtpu = aot_testlib.needs_libtpu


@needs_libtpu
class PallasTpuDecodeCompileTest(absltest.TestCase):

  def test_decode_step_compiles_for_v5e(self):
    c = tpu_grpo.get_config("job=qwen2_5_0_5b_v5e8")  # v5e:2x4
    # A small model with the kernel's head dim (a multiple of 128).
    for k, v in dict(num_layers=2, vocab_size=8192, hidden_size=256,
                     intermediate_size=512, num_heads=4, num_kv_heads=2,
                     head_dim=128).items():
      c.model[k] = v
    c.rollout.max_new_tokens = 256
    setup = programs.build_setup(c)
    self.assertEqual(setup.topology.chip.name[:3], "v5e")
    with sharding.use_mesh(setup.mesh, setup.rules):
      self.assertEqual(decode_attention.resolve("auto", head_dim=128),
                       "pallas_tpu")
      self.assertEqual(decode_attention.resolve("auto", head_dim=64),
                       "blockwise")
    rep = decode_estimate.step_time(setup, setup.sizes.rows // 4, 1.0,
                                    lockstep=False, impl="pallas_tpu")
    self.assertEqual(rep.error, "")
    self.assertTrue(rep.fits)
    self.assertEqual(rep.custom_calls.get("tpu_custom_call"), 2)
    self.assertGreater(rep.roofline.seconds, 0)


if __name__ == "__main__":
  absltest.main()
