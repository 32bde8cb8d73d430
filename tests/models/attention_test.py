"""Every attention kernel against today's `layers.attention` (masks built here)."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from jaxrl_ent.models import attention
from jaxrl_ent.models import config as config_lib
from jaxrl_ent.models import decoder
from jaxrl_ent.models import layers

jax.config.update("jax_default_matmul_precision", "highest")


def _segments(b, t, rng):
  """Rows mixing left padding, right padding and packed segments."""
  seg = np.zeros((b, t), np.int32)
  for i in range(b):
    kind = i % 3
    if kind == 0:  # left-padded prompt + completion
      seg[i, rng.integers(1, t // 3):] = 1
    elif kind == 1:  # right padding
      seg[i, :rng.integers(t // 2, t)] = 1
    else:  # packed: 3 segments then padding
      cuts = np.sort(rng.choice(np.arange(2, t - 2), 3, replace=False))
      seg[i, :cuts[0]] = 1
      seg[i, cuts[0]:cuts[1]] = 2
      seg[i, cuts[1]:cuts[2]] = 3
  return seg


def _reference_mask(seg):
  """Today's mask `causal & key_is_real`, plus same-segment for packing."""
  t = seg.shape[1]
  causal = np.tril(np.ones((t, t), bool))[None]
  return causal & (seg[:, None, :] > 0) & (seg[:, :, None] == seg[:, None, :])


def _inputs(b, t, n, kh, h, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(b, t, kh, h)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(b, t, kh, h)), jnp.float32)
  seg = _segments(b, t, rng)
  w = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)
  return q, k, v, seg, w


class KernelTest(parameterized.TestCase):

  def _check(self, fn, b=3, t=40, n=4, kh=2, h=8, tol=1e-5):
    q, k, v, seg, w = _inputs(b, t, n, kh, h)
    real = jnp.asarray(seg > 0)[:, :, None, None]
    allowed = jnp.asarray(_reference_mask(seg))
    ref_fn = lambda q, k, v: layers.attention(q, k, v, allowed)
    ours_fn = lambda q, k, v: fn(q, k, v, jnp.asarray(seg))
    np.testing.assert_allclose(ours_fn(q, k, v) * real, ref_fn(q, k, v) * real,
                               atol=tol, rtol=tol)
    # Loss over real query rows only: padding outputs are never used.
    loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * w * real)
    g_ours = jax.grad(loss(ours_fn), (0, 1, 2))(q, k, v)
    g_ref = jax.grad(loss(ref_fn), (0, 1, 2))(q, k, v)
    for a, r, name in zip(g_ours, g_ref, "qkv"):
      np.testing.assert_allclose(a, r, atol=tol, rtol=tol, err_msg=name)

  @parameterized.parameters((8, 8), (16, 8), (7, 5), (40, 40), (64, 2048))
  def test_blockwise(self, bq, bkv):
    self._check(lambda q, k, v, s: attention.blockwise_attention(
        q, k, v, s, bq, bkv))

  def test_blockwise_jit_default_blocks(self):
    self._check(jax.jit(lambda q, k, v, s: attention.attention(
        q, k, v, s, impl="blockwise")), t=33)

  def test_xla_naive(self):
    self._check(lambda q, k, v, s: attention.attention(q, k, v, s,
                                                       impl="xla_naive"))

  def test_splash_interpret(self):
    # T = 100 is padded to 128 inside (padding = segment -1); H = 128 is
    # the lane width the TPU kernel tiles by.
    self._check(jax.jit(lambda q, k, v, s: attention.splash_attention(
        q, k, v, s, interpret=True)), b=3, t=100, n=2, kh=1, h=128)

  def test_splash_selected_by_config_off_tpu_runs_interpreted(self):
    self._check(lambda q, k, v, s: attention.attention(q, k, v, s,
                                                       impl="splash"),
                b=2, t=128, n=2, kh=2, h=128)

  def test_cudnn_falls_back_on_cpu_with_a_message(self):
    with self.assertLogs(level="WARNING") as logs:
      attention._warned.clear()  # pylint: disable=protected-access
      self._check(lambda q, k, v, s: attention.attention(q, k, v, s,
                                                         impl="cudnn"))
    self.assertIn("falling back to 'blockwise'", "".join(logs.output))

  def test_selection(self):
    bf16, f32 = jnp.bfloat16, jnp.float32
    self.assertEqual(attention.resolve_impl("auto", bf16, 128, "tpu"),
                     "splash")
    self.assertEqual(attention.resolve_impl("auto", bf16, 128, "gpu"),
                     "cudnn")
    self.assertEqual(attention.resolve_impl("auto", f32, 128, "gpu"),
                     "blockwise")  # cuDNN flash is bf16/fp16 only
    self.assertEqual(attention.resolve_impl("auto", bf16, 256, "gpu"),
                     "blockwise")
    self.assertEqual(attention.resolve_impl("auto", bf16, 64, "cpu"),
                     "blockwise")
    self.assertEqual(attention.resolve_impl("cudnn", bf16, 64, "cpu"),
                     "blockwise")
    self.assertEqual(attention.resolve_impl("cudnn", bf16, 64, "gpu"),
                     "cudnn")
    self.assertEqual(attention.resolve_impl("xla_naive", bf16, 64, "tpu"),
                     "xla_naive")
    self.assertIn("bf16", attention.cudnn_unsupported(f32, 64, "gpu"))
    with self.assertRaisesRegex(ValueError, "attention_impl"):
      attention.resolve_impl("flash", f32, 64, "cpu")
    self.assertEqual(attention.IMPLS, config_lib.ATTENTION_IMPLS)

  def test_blockwise_backward_memory_is_linear_in_length(self):
    """The compiled gradient's temporaries grow ~T for blockwise, ~T² naive."""
    def temp(impl, t):
      q = jax.ShapeDtypeStruct((1, t, 4, 16), jnp.float32)
      kv = jax.ShapeDtypeStruct((1, t, 2, 16), jnp.float32)
      seg = jax.ShapeDtypeStruct((1, t), jnp.int32)
      f = lambda q, k, v, s: jnp.sum(attention.attention(
          q, k, v, s, impl=impl, block_q=128, block_kv=512) ** 2)
      c = jax.jit(jax.grad(f, (0, 1, 2))).lower(q, kv, kv, seg).compile()
      return c.memory_analysis().temp_size_in_bytes
    blockwise = temp("blockwise", 4096) / temp("blockwise", 1024)
    naive = temp("xla_naive", 4096) / temp("xla_naive", 1024)
    self.assertLess(blockwise, 4.5)
    self.assertGreater(naive, 10)


class ModelTest(parameterized.TestCase):

  def _model(self, **kw):
    cfg = config_lib.ModelConfig(
        model_type="qwen3", vocab_size=64, hidden_size=32,
        intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=16, qk_norm=True, **kw)
    return decoder.init_model(cfg, seed=1)

  def _batch(self):
    rng = np.random.default_rng(3)
    b, t = 3, 24
    tokens = jnp.asarray(rng.integers(0, 64, (b, t)), jnp.int32)
    mask = np.ones((b, t), np.int32)
    mask[0, :5] = 0   # left padding
    mask[1, 20:] = 0  # right padding
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    return tokens, jnp.asarray(pos), jnp.asarray(mask)

  @parameterized.parameters("blockwise", "auto", "splash")
  def test_hidden_states_match_naive_on_real_tokens(self, impl):
    tokens, pos, mask = self._batch()
    ref_model = self._model(attention_impl="xla_naive")
    model = self._model(attention_impl=impl)
    ref, _ = ref_model.hidden_states(tokens, pos, mask)
    ours, _ = model.hidden_states(tokens, pos, mask)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(ours)[real], np.asarray(ref)[real],
                               atol=1e-5, rtol=1e-5)

  @parameterized.parameters("full", "dots_saveable",
                            "dots_with_no_batch_dims_saveable", "save_names")
  def test_remat_policies_keep_gradients(self, policy):
    from flax import nnx  # pylint: disable=g-import-not-at-top
    tokens, pos, mask = self._batch()

    def grads(model):
      graphdef, params, rest = nnx.split(model, nnx.Param, ...)

      def loss(p):
        m = nnx.merge(graphdef, p, rest)
        h, _ = m.hidden_states(tokens, pos, mask)
        return jnp.sum(h * mask[..., None])
      return jax.grad(loss)(params)
    ref = grads(self._model(remat_policy="none"))
    ours = grads(self._model(remat_policy=policy))
    # Recomputation re-associates float32 sums (grads here are O(50)).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-4,
                                                         rtol=2e-4), ours, ref)

  def test_scan_unroll_keeps_values_and_gradients(self):
    from flax import nnx  # pylint: disable=g-import-not-at-top
    tokens, pos, mask = self._batch()

    def value_and_grads(model):
      graphdef, params, rest = nnx.split(model, nnx.Param, ...)

      def loss(p):
        h, _ = nnx.merge(graphdef, p, rest).hidden_states(tokens, pos, mask)
        return jnp.sum(h * mask[..., None])
      return jax.value_and_grad(loss)(params)
    ref = value_and_grads(self._model())
    self.assertEqual(self._model().cfg.num_layers, 2)
    for unroll in (2, 5):  # every layer; more than the layers clips
      jax.tree.map(lambda a, b: np.testing.assert_allclose(
          a, b, atol=1e-5, rtol=1e-5), value_and_grads(
              self._model(scan_unroll=unroll)), ref)
    with self.assertRaisesRegex(ValueError, "scan_unroll"):
      self._model(scan_unroll=0)

  def test_legacy_remat_bool_maps_to_full(self):
    self.assertEqual(self._model(remat=True).cfg.effective_remat_policy,
                     "full")
    self.assertEqual(self._model().cfg.effective_remat_policy, "none")
    self.assertEqual(self._model(remat=True, remat_policy="save_names"
                                 ).cfg.effective_remat_policy, "save_names")
    self.assertEqual(config_lib.REMAT_POLICIES[0], "none")
    with self.assertRaisesRegex(ValueError, "remat_policy"):
      self._model(remat_policy="sometimes")


if __name__ == "__main__":
  absltest.main()
