"""Splash attention compiled for a TPU topology (libtpu, no TPU).

The training forward's attention on TPU is a Mosaic custom call inside
`shard_map`; this checks it compiles for a real TPU target, that the HLO
check finds it, and that the loop-exact FLOP count charges its causal half.
"""

import aot_testlib  # First: CPU platform, repository path, libtpu.

import jax
import jax.numpy as jnp
from absl.testing import absltest

from jaxrl_ent import sharding
from jaxrl_ent.aot import chips
from jaxrl_ent.aot import cost
from jaxrl_ent.aot import hlo
from jaxrl_ent.models import attention

HAVE_LIBTPU = aot_testlib.HAVE_LIBTPU
needs_libtpu = aot_testlib.needs_libtpu


class SplashFlopsTest(absltest.TestCase):

  def test_causal_half_of_the_block_grid(self):
    b, t, n, kh, h = 2, 1024, 4, 2, 128
    q = jax.ShapeDtypeStruct((b, t, n, h), jnp.float32)
    kv = jax.ShapeDtypeStruct((b, t, kh, h), jnp.float32)
    seg = jax.ShapeDtypeStruct((b, t), jnp.int32)
    f = lambda q, k, v, s: attention.splash_attention(q, k, v, s,
                                                      interpret=True)
    blocks = t // 512
    causal = (blocks + 1) / (2 * blocks)  # 3/4 of the 2 x 2 block pairs
    # Forward: QK^T and PV, 2 · 2·T·T·H per head on the computed blocks.
    fwd = 4 * b * n * t * t * h * causal
    self.assertEqual(cost.jaxpr_flops(jax.jit(f).trace(q, kv, kv, seg).jaxpr),
                     fwd)
    # Fused backward: QK^T, dO V^T, dV, dK, dQ: 5 products.
    grad = jax.grad(lambda *a: f(*a).sum(), (0, 1, 2))
    # (+ the kernel's small dO·O row sums, written as a product.)
    self.assertAlmostEqual(
        cost.jaxpr_flops(jax.jit(grad).trace(q, kv, kv, seg).jaxpr) /
        (fwd + fwd * 5 / 2), 1.0, places=3)


@needs_libtpu
class SplashCompileTest(absltest.TestCase):

  def test_compiles_sharded_for_tpu_and_is_found_in_hlo(self):
    devices = chips.topology_devices(chips.parse_topology("v5e:2x2"))
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 2}, devices)
    b, t, n, kh, h = 4, 512, 4, 2, 128
    qs = jax.ShapeDtypeStruct((b, t, n, h), jnp.bfloat16)
    kvs = jax.ShapeDtypeStruct((b, t, kh, h), jnp.bfloat16)
    segs = jax.ShapeDtypeStruct((b, t), jnp.int32)
    with sharding.use_mesh(mesh):
      self.assertEqual(attention.resolve_impl("auto", jnp.bfloat16, h),
                       "splash")
      f = lambda q, k, v, s: jnp.sum(attention.attention(
          q, k, v, s).astype(jnp.float32))
      text = jax.jit(jax.grad(f, (0, 1, 2))).trace(
          qs, kvs, kvs, segs).lower().compile().as_text()
    calls = hlo.count_custom_calls(text)
    # Forward (with residuals) and the fused dkv backward kernel.
    self.assertGreaterEqual(calls.get("splash", 0), 2, calls)
    self.assertEqual(hlo.count_custom_calls("%x = f32[2] add(%a, %b)"), {})


if __name__ == "__main__":
  absltest.main()
