"""Tests for jaxrl_ent.entropy.token_stats: values, chunking, grads, memory."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_ent.entropy import token_stats


def _np_stats(logits_nv, tokens_n, temperature):
  """Float64 reference straight from the definitions."""
  z = np.asarray(logits_nv, np.float64) / temperature
  z = z - z.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  pi = np.exp(logp)
  ent = -(pi * logp).sum(-1)
  dev = logp + ent[:, None]
  return dict(logp=logp[np.arange(len(tokens_n)), tokens_n], entropy=ent,
              m2=(pi * pi * dev).sum(-1), m3=(pi * pi * dev * dev).sum(-1))


def _naive_stats(hidden_nd, head_dv, tokens_n, temperature):
  """Full-logits JAX version: the gradient reference."""
  logp_nv = jax.nn.log_softmax(hidden_nd @ head_dv / temperature)
  pi_nv = jnp.exp(logp_nv)
  ent_n = -(pi_nv * logp_nv).sum(-1)
  dev_nv = logp_nv + ent_n[:, None]
  return (jnp.take_along_axis(logp_nv, tokens_n[:, None], 1)[:, 0], ent_n,
          (pi_nv**2 * dev_nv).sum(-1), (pi_nv**2 * dev_nv**2).sum(-1))


def _inputs(n=13, d=5, v=37, scale=1.5, seed=0):
  k_h, k_w, k_y = jax.random.split(jax.random.PRNGKey(seed), 3)
  hidden = jax.random.normal(k_h, (n, d))
  head = scale * jax.random.normal(k_w, (d, v))
  tokens = jax.random.randint(k_y, (n,), 0, v)
  return hidden, head, tokens


def _as_tuple(stats):
  return (stats.logp, stats.entropy, stats.m2, stats.m3)


class TokenStatsTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_float64_reference(self):
    temperature = 0.6
    hidden, head, tokens = _inputs()
    fn = self.variant(functools.partial(
        token_stats.token_stats, temperature=temperature, token_chunk=4,
        vocab_chunk=8))
    got = fn(hidden, head, tokens)
    want = _np_stats(np.asarray(hidden @ head), np.asarray(tokens), temperature)
    for name, value in want.items():
      np.testing.assert_allclose(getattr(got, name), value, atol=1e-5,
                                 rtol=1e-5, err_msg=name)
    from_logits = self.variant(functools.partial(
        token_stats.token_stats_from_logits, temperature=temperature,
        token_chunk=5))(hidden @ head, tokens)
    for name, value in want.items():
      np.testing.assert_allclose(getattr(from_logits, name), value, atol=1e-5,
                                 rtol=1e-5, err_msg=name)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((4, 8), (1, 36), (64, 5))
  def test_chunked_equals_unchunked(self, token_chunk, vocab_chunk):
    hidden, head, tokens = _inputs()  # N=13, V=37: neither divides evenly.
    ref = token_stats.token_stats(hidden, head, tokens, token_chunk=13,
                                  vocab_chunk=None)
    got = self.variant(functools.partial(
        token_stats.token_stats, token_chunk=token_chunk,
        vocab_chunk=vocab_chunk))(hidden, head, tokens)
    chex.assert_trees_all_close(_as_tuple(got), _as_tuple(ref), atol=1e-6,
                                rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_uniform_logits_give_log_v(self):
    hidden, head, tokens = _inputs(v=37)
    got = self.variant(functools.partial(
        token_stats.token_stats, token_chunk=4, vocab_chunk=8))(
            hidden, jnp.zeros_like(head), tokens)
    np.testing.assert_allclose(got.entropy, np.log(37.0), rtol=1e-6)
    np.testing.assert_allclose(got.logp, -np.log(37.0), rtol=1e-6)
    # log π_a + H = 0 for every a, so both moments vanish.
    np.testing.assert_allclose(got.m2, 0.0, atol=1e-7)
    np.testing.assert_allclose(got.m3, 0.0, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_extreme_logits_are_stable(self):
    # Logits of ±1e4: near one-hot rows, plus a row tied between two tokens.
    v = 11
    logits = np.zeros((3, v), np.float32)
    logits[0, 3] = 1e4
    logits[1] = -1e4
    logits[1, 7] = 1e4
    logits[2, [2, 5]] = 1e4
    logits[2, 0] = -1e4
    tokens = jnp.array([3, 0, 2])
    fn = self.variant(functools.partial(token_stats.token_stats_from_logits,
                                        token_chunk=2))
    got = fn(jnp.asarray(logits), tokens)
    np.testing.assert_allclose(got.entropy, [0.0, 0.0, np.log(2.0)], atol=1e-6)
    np.testing.assert_allclose(got.logp[np.array([0, 2])], [0.0, -np.log(2.0)],
                               atol=1e-6)
    self.assertLess(float(got.logp[1]), -1e4)  # −2e4 exactly, not -inf/NaN.
    # Two tied tokens: log π + H = 0 on them, π = 0 elsewhere.
    np.testing.assert_allclose(got.m2, 0.0, atol=1e-6)
    np.testing.assert_allclose(got.m3, 0.0, atol=1e-6)
    grads = jax.grad(lambda z: sum(
        x.sum() for x in _as_tuple(token_stats.token_stats_from_logits(
            z, tokens, token_chunk=2))))(jnp.asarray(logits))
    self.assertTrue(np.all(np.isfinite(grads)))
    # Same through the hidden-state path with a one-hot head.
    head = jnp.asarray(logits[0][None, :])
    got_h = token_stats.token_stats(jnp.ones((2, 1)), head, jnp.array([3, 4]),
                                    vocab_chunk=4)
    np.testing.assert_allclose(got_h.entropy, 0.0, atol=1e-6)
    np.testing.assert_allclose(got_h.logp, [0.0, -1e4], atol=1e-6)

  def test_grads_match_naive_full_logits(self):
    # V=37 with vocab_chunk=8: the last slice overlaps and is partly masked.
    token_chunk, vocab_chunk, temperature = 4, 8, 0.7
    hidden, head, tokens = _inputs()
    cot = jax.random.normal(jax.random.PRNGKey(7), (4, tokens.shape[0]))

    def contract(stats):
      return sum(jnp.sum(c * x) for c, x in zip(cot, stats))

    def chunked(h, w):
      return contract(_as_tuple(token_stats.token_stats(
          h, w, tokens, temperature=temperature, token_chunk=token_chunk,
          vocab_chunk=vocab_chunk)))

    def naive(h, w):
      return contract(_naive_stats(h, w, tokens, temperature))

    want = jax.jit(jax.grad(naive, (0, 1)))(hidden, head)
    got = jax.jit(jax.grad(chunked, (0, 1)))(hidden, head)
    chex.assert_trees_all_close(got, want, atol=2e-5, rtol=2e-5)
    got_logits = jax.jit(jax.grad(lambda z: contract(_as_tuple(
        token_stats.token_stats_from_logits(
            z, tokens, temperature=temperature, token_chunk=token_chunk)))))(
                hidden @ head)
    want_logits = jax.grad(lambda z: contract(_naive_stats(
        z, jnp.eye(z.shape[1]), tokens, temperature)))(hidden @ head)
    np.testing.assert_allclose(got_logits, want_logits, atol=2e-5, rtol=2e-5)

  def test_backward_never_materialises_a_full_vocab_row_block(self):
    n, d, v, token_chunk, vocab_chunk = 64, 4, 96, 8, 16
    hidden, head, tokens = _inputs(n=n, d=d, v=v)

    def loss(h, w):
      return sum(jnp.sum(x) for x in _as_tuple(token_stats.token_stats(
          h, w, tokens, token_chunk=token_chunk, vocab_chunk=vocab_chunk)))

    sizes = []

    def walk(jaxpr):
      for eqn in jaxpr.eqns:
        sizes.extend(int(np.prod(x.aval.shape)) for x in eqn.outvars)
        for param in eqn.params.values():
          for sub in param if isinstance(param, (list, tuple)) else [param]:
            if isinstance(sub, jax.extend.core.ClosedJaxpr):
              walk(sub.jaxpr)
            elif isinstance(sub, jax.extend.core.Jaxpr):
              walk(sub)

    walk(jax.make_jaxpr(jax.grad(loss, (0, 1)))(hidden, head).jaxpr)
    # Largest legitimate arrays: the head gradient [D, V] = 384 and one
    # [token_chunk, vocab_chunk] = 128 block. A [token_chunk, V] = 768 block
    # (let alone [N, V]) would mean the chunking leaked into the backward.
    self.assertLessEqual(max(sizes), d * v)
    self.assertLess(max(sizes), token_chunk * v)

  @chex.variants(with_jit=True, without_jit=True)
  def test_bf16_inputs_are_upcast(self):
    hidden, head, tokens = _inputs()
    h16, w16 = hidden.astype(jnp.bfloat16), head.astype(jnp.bfloat16)
    fn = self.variant(functools.partial(token_stats.token_stats, token_chunk=4,
                                        vocab_chunk=8))
    got = fn(h16, w16, tokens)
    chex.assert_trees_all_equal_dtypes(_as_tuple(got), (jnp.zeros(1),) * 4)
    # bf16 products are exact in f32: equal to upcasting the same values.
    want = fn(h16.astype(jnp.float32), w16.astype(jnp.float32), tokens)
    chex.assert_trees_all_close(_as_tuple(got), _as_tuple(want), atol=1e-5,
                                rtol=1e-5)
    # And close to the unrounded f32 inputs (bf16 has ~3 significant digits).
    full = fn(hidden, head, tokens)
    chex.assert_trees_all_close(_as_tuple(got), _as_tuple(full), atol=0.1,
                                rtol=0.05)
    logits = self.variant(token_stats.token_stats_from_logits)(
        (hidden @ head).astype(jnp.bfloat16), tokens)
    self.assertEqual(logits.entropy.dtype, jnp.float32)

  def test_leading_axes_and_other_rows_are_independent(self):
    hidden, head, tokens = _inputs(n=12)
    fn = jax.jit(functools.partial(token_stats.token_stats, token_chunk=5))
    bt = fn(hidden.reshape(3, 4, -1), head, tokens.reshape(3, 4))
    chex.assert_shape(_as_tuple(bt), (3, 4))
    want = _np_stats(np.asarray(hidden @ head), np.asarray(tokens), 1.0)
    np.testing.assert_allclose(bt.entropy.reshape(-1), want["entropy"],
                               atol=1e-5)
    # Changing other rows (masked or padded tokens) changes nothing here.
    other = fn(hidden.at[1:].set(9.0).reshape(3, 4, -1), head,
               tokens.reshape(3, 4))
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[0, 0], other),
                                jax.tree.map(lambda x: x[0, 0], bt), atol=1e-6)

  def test_vmap_over_temperature(self):
    hidden, head, tokens = _inputs()
    temps = jnp.array([0.5, 1.0, 2.0])
    got = jax.vmap(lambda t: token_stats.token_stats(
        hidden, head, tokens, temperature=t, vocab_chunk=8).entropy)(temps)
    for i, t in enumerate([0.5, 1.0, 2.0]):
      want = _np_stats(np.asarray(hidden @ head), np.asarray(tokens), t)
      np.testing.assert_allclose(got[i], want["entropy"], atol=1e-5)

  @parameterized.parameters(0.0, -1.0)
  def test_rejects_bad_temperature(self, temperature):
    hidden, head, tokens = _inputs()
    with self.assertRaisesRegex(ValueError, "temperature"):
      token_stats.token_stats(hidden, head, tokens, temperature=temperature)


if __name__ == "__main__":
  absltest.main()
