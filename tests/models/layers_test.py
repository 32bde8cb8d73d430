"""`layers.dense`: the flat (2-D matmul) and the plain form against NumPy."""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx

from jaxrl_ent.models import config as config_lib
from jaxrl_ent.models import decoder
from jaxrl_ent.models import layers

jax.config.update("jax_default_matmul_precision", "highest")


class DenseTest(parameterized.TestCase):

  @parameterized.product(flat=(False, True), in_dims=(1, 2))
  def test_values_and_gradients_match_numpy(self, flat, in_dims):
    rng = np.random.default_rng(0)
    ins, outs = (6, 4)[:in_dims], (5, 3)
    x = rng.normal(size=(2, 7) + ins).astype(np.float32)
    w = rng.normal(size=ins + outs).astype(np.float32)
    dy = rng.normal(size=(2, 7) + outs).astype(np.float32)
    # NumPy: y = x·w over the contracted axes; dL/dw = xᵀ dy, dL/dx = dy wᵀ
    # for L = Σ y ⊙ dy.
    k, o = int(np.prod(ins)), int(np.prod(outs))
    x2, w2, dy2 = x.reshape(14, k), w.reshape(k, o), dy.reshape(14, o)
    y_ref = (x2 @ w2).reshape(dy.shape)
    dw_ref = (x2.T @ dy2).reshape(w.shape)
    dx_ref = (dy2 @ w2.T).reshape(x.shape)
    f = lambda x, w: layers.dense(x, w, in_dims, flat=flat)
    y = f(x, w)
    self.assertEqual(y.shape, dy.shape)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    dx, dw = jax.grad(lambda x, w: jnp.sum(f(x, w) * dy), (0, 1))(x, w)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    # Forward mode works too (the exact entropy dynamics' `jax.jvp`).
    tx = rng.normal(size=x.shape).astype(np.float32)
    tw = rng.normal(size=w.shape).astype(np.float32)
    _, ty = jax.jvp(f, (x, w), (tx, tw))
    ty_ref = (tx.reshape(14, k) @ w2 + x2 @ tw.reshape(k, o)).reshape(dy.shape)
    np.testing.assert_allclose(ty, ty_ref, rtol=1e-5, atol=1e-5)

  def test_mismatched_axes_name_the_shapes(self):
    with self.assertRaisesRegex(ValueError, r"x \(2, 3\) and w \(4, 5\)"):
      layers.dense(jnp.zeros((2, 3)), jnp.zeros((4, 5)))


class FlatModelTest(absltest.TestCase):

  def test_flat_and_plain_projections_give_the_same_model(self):
    cfg = config_lib.ModelConfig(
        model_type="qwen2", vocab_size=64, hidden_size=32,
        intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=8, qkv_bias=True)
    graphdef, params, rest = nnx.split(decoder.init_model(cfg, seed=0),
                                       nnx.Param, ...)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, 64, (2, 12)), jnp.int32)
    mask = jnp.asarray(np.arange(12)[None] >= np.array([[0], [4]]), jnp.int32)

    def value_and_grads(flat):
      def loss(p):
        h, _ = nnx.merge(graphdef, p, rest).hidden_states(
            tokens, attention_mask_bt=mask)
        return jnp.sum(jnp.sin(h) * mask[..., None])
      with mock.patch.object(decoder, "_flat_dots", lambda: flat):
        return jax.jit(jax.value_and_grad(loss))(params)

    self.assertTrue(decoder._flat_dots())  # the CPU path of the suite
    flat, plain = value_and_grads(True), value_and_grads(False)
    # Float32 sums re-associate: gradients here reach O(100).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max())), flat, plain)


if __name__ == "__main__":
  absltest.main()
