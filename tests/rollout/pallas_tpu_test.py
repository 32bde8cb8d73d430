"""The Pallas TPU decode attention (`decode_attention.pallas_tpu`), run in
the Pallas TPU interpreter on CPU: equal to the cached attention over
ragged lengths, GQA ratios and page/block sizes; and a rollout through it
equal to the default (XLA blockwise) one."""

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax.experimental.pallas import tpu as pltpu

from jaxrl_ent import models
from jaxrl_ent import rollout
from jaxrl_ent.models import decode_attention
from jaxrl_ent.models import layers
from jaxrl_ent.models import tiny_hf


def _bf16(x):
  # The kernel reads keys and values in bfloat16 (see `pallas_tpu`): the
  # caches here hold bfloat16 values, so that rounding is exact.
  return x.astype(jnp.bfloat16).astype(jnp.float32)


def _inputs(b, kh, g, h, s, seed=0):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(kq, (b, kh * g, h), jnp.float32)
  k_bksh = _bf16(jax.random.normal(kk, (b, kh, s, h), jnp.float32))
  v_bksh = _bf16(jax.random.normal(kv, (b, kh, s, h), jnp.float32))
  return q, k_bksh, v_bksh


def _reference(q, k_bksh, v_bksh, lengths):
  # The training-side cached attention (keys [B, K, H, S]), [B, 1, S] mask.
  allowed = jnp.arange(k_bksh.shape[2])[None, None, :] < lengths[:, None,
                                                                 None]
  return layers.cached_attention(q[:, None], k_bksh.transpose(0, 1, 3, 2),
                                 v_bksh, allowed)[:, 0]


class PallasTpuKernelTest(parameterized.TestCase):

  @parameterized.parameters(
      # (kv heads, G = N / K, page, block): MHA, GQA 2/4/8 (G = 8 takes
      # the kernel's other query layout), one page per block and several.
      (2, 1, 16, 16), (2, 2, 8, 16), (1, 4, 8, 32), (2, 8, 16, 32))
  def test_equals_cached_attention(self, kh, g, page, block):
    s = 64
    q, k, v = _inputs(4, kh, g, 8, s)
    # Ragged: one column, mid-block, a block boundary + 1, the whole cache.
    lengths = jnp.asarray([1, 13, block + 1, s], jnp.int32)
    got = decode_attention.pallas_tpu(q, k, v, lengths, block=block,
                                      page_size=page, interpret=True)
    np.testing.assert_allclose(got, _reference(q, k, v, lengths), atol=1e-5,
                               rtol=0)

  def test_reads_each_slots_own_blocks(self):
    # Ragged per slot: past each slot's last block the cache may hold
    # anything (NaN), not only past the longest slot's (as `blockwise`).
    q, k, v = _inputs(3, 2, 2, 8, 64, seed=1)
    lengths = jnp.asarray([3, 20, 40], jnp.int32)
    want = _reference(q, k, v, lengths)
    for slot, end in enumerate((16, 32, 48)):
      k = k.at[slot, :, end:].set(jnp.nan)
      v = v.at[slot, :, end:].set(jnp.nan)
    got = decode_attention.pallas_tpu(q, k, v, lengths, block=16,
                                      interpret=True)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

  def test_attend_dispatch_and_errors(self):
    q, k, v = _inputs(2, 1, 2, 8, 32)
    lengths = jnp.asarray([5, 32], jnp.int32)
    with pltpu.force_tpu_interpret_mode():
      got = decode_attention.attend(q, k, v, lengths, impl="pallas_tpu",
                                    block=16)
    np.testing.assert_allclose(got, _reference(q, k, v, lengths), atol=1e-5,
                               rtol=0)
    with self.assertRaisesRegex(ValueError, "int8"):
      decode_attention.pallas_tpu(q, k, v, lengths, jnp.ones((2, 1, 32, 1)),
                                  jnp.ones((2, 1, 32, 1)), block=16)
    with self.assertRaisesRegex(ValueError, "left-aligned"):
      decode_attention.pallas_tpu(q, k, v, lengths, starts_b=lengths - 1,
                                  block=16)

  def test_resolve(self):
    r = decode_attention.resolve
    self.assertEqual(r("auto"), "blockwise")  # CPU: unchanged default.
    self.assertEqual(r("auto", "tpu"), "pallas_tpu")
    self.assertEqual(r("auto", "tpu", kv_int8=True), "blockwise")
    self.assertEqual(r("auto", "gpu"), "blockwise")
    self.assertEqual(r("full", "tpu"), "full")


class PallasTpuRolloutTest(absltest.TestCase):

  def test_rollout_equals_blockwise(self):
    # A continuous rollout (6 rows, 2 slots: refills) through the kernel's
    # layout (keys token-major, rows left-aligned, per-slot writes) against
    # the default layout. bfloat16 model: both caches hold the same bfloat16 keys and
    # values; the two attentions round differently inside (bfloat16 probs
    # in `blockwise`), hence the log-prob tolerance.
    with tempfile.TemporaryDirectory() as d:
      tiny_hf.write_checkpoint(d, "qwen2", seed=3)
      model = models.from_pretrained(d, dtype=jnp.bfloat16)
    prompts = [[5, 17, 3, 9, 22, 41], [7, 8], [30, 31, 32]]
    kw = dict(max_new_tokens=5, n_samples=2, greedy=True, temperature=1.0,
              continuous=True, num_slots=2)
    key = jax.random.key(0)
    want = rollout.generate(model, prompts, key, decode_attention="blockwise",
                            **kw)
    with pltpu.force_tpu_interpret_mode():
      got = rollout.generate(model, prompts, key,
                             decode_attention="pallas_tpu", **kw)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logp, want.logp, atol=3e-2, rtol=0)


if __name__ == "__main__":
  absltest.main()
