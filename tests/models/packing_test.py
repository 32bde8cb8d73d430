"""Packed vs unpacked rows: same per-token log-probs, entropies, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx

from jaxrl_ent.entropy import token_stats as token_stats_lib
from jaxrl_ent.models import config as config_lib
from jaxrl_ent.models import decoder
from jaxrl_ent.models import packing

jax.config.update("jax_default_matmul_precision", "highest")

P, C, V = 8, 12, 64


def _rollout_batch(rows=6, seed=0):
  """Left-padded prompts (1..P tokens) + right-padded completions."""
  rng = np.random.default_rng(seed)
  s = P + C
  tokens = rng.integers(1, V, (rows, s)).astype(np.int32)
  mask = np.zeros((rows, s), np.int32)
  prompt_len = rng.integers(1, P + 1, rows)
  comp_len = rng.integers(1, C + 1, rows)
  comp_len[0] = C  # one full row
  for r in range(rows):
    mask[r, P - prompt_len[r]:P + comp_len[r]] = 1
  tokens = tokens * mask
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)
  return tokens, positions, mask, mask[:, P:].astype(bool)


def _model(impl):
  cfg = config_lib.ModelConfig(
      model_type="qwen2", vocab_size=V, hidden_size=32, intermediate_size=48,
      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, qkv_bias=True,
      attention_impl=impl)
  return decoder.init_model(cfg, seed=2)


def _stats(model, hidden_rcd, tokens_rc):
  return token_stats_lib.token_stats(hidden_rcd, model.head_weight(), tokens_rc,
                                     token_chunk=16, vocab_chunk=32)


def unpacked_stats(model, tokens, positions, mask):
  """`rl.train_step.completion_stats`, written out: the reference."""
  hidden, _ = model.hidden_states(tokens, positions, mask)
  return _stats(model, hidden[:, P - 1:-1], tokens[:, P:])


def packed_stats(model, packed, tokens):
  return _stats(model, packing.completion_hidden(model, packed), tokens[:, P:])


class PackTest(parameterized.TestCase):

  def test_layout(self):
    tokens, positions, mask, _ = _rollout_batch()
    packed = packing.pack(tokens, positions, mask, C, row_len=P + C)
    seg, ptok = np.asarray(packed.segment_ids), np.asarray(packed.tokens)
    # Every real token lands exactly once, with its own position.
    self.assertEqual(np.count_nonzero(seg), mask.sum())
    self.assertCountEqual(ptok[seg > 0].tolist(),
                          tokens[mask > 0].tolist())
    self.assertLess(seg.shape[0], tokens.shape[0])  # packing saved rows
    # The slot that predicts completion token c holds the token before it.
    r, c = np.nonzero(np.asarray(packed.valid))
    prev = ptok[packed.src_row[r, c], packed.src_col[r, c]]
    np.testing.assert_array_equal(prev, tokens[r, P + c - 1])
    before = packing.padding_fraction(mask)
    after = packing.padding_fraction(seg)
    self.assertLess(after, before)
    self.assertAlmostEqual(before, 1 - mask.sum() / mask.size)

  def test_num_rows_and_errors(self):
    tokens, positions, mask, _ = _rollout_batch()
    packed = packing.pack(tokens, positions, mask, C, row_len=32, num_rows=8)
    self.assertEqual(packed.tokens.shape, (8, 32))
    with self.assertRaisesRegex(ValueError, "num_rows"):
      packing.pack(tokens, positions, mask, C, row_len=P + C, num_rows=1)
    with self.assertRaisesRegex(ValueError, "row_len"):
      packing.pack(tokens, positions, mask, C, row_len=4)
    holey = mask.copy()
    holey[0, P + 1] = 0
    holey[0, -1] = 1
    with self.assertRaisesRegex(ValueError, "contiguous"):
      packing.pack(tokens, positions, holey, C, row_len=P + C)
    self.assertEqual(packing.suggest_row_len(mask, 16), 32)

  @parameterized.parameters("blockwise", "xla_naive", "splash")
  def test_packed_stats_and_gradients_match_unpacked(self, impl):
    tokens, positions, mask, valid = _rollout_batch()
    row_len = 128 if impl == "splash" else P + C
    packed = jax.tree.map(jnp.asarray, packing.pack(
        tokens, positions, mask, C, row_len=row_len))
    tokens, positions, mask = map(jnp.asarray, (tokens, positions, mask))
    model = _model(impl)
    ref = unpacked_stats(_model("xla_naive"), tokens, positions, mask)
    ours = packed_stats(model, packed, tokens)
    for name in ("logp", "entropy", "m2", "m3"):
      np.testing.assert_allclose(
          np.asarray(getattr(ours, name))[valid],
          np.asarray(getattr(ref, name))[valid], atol=1e-5, rtol=1e-5,
          err_msg=name)
    np.testing.assert_array_equal(packed.valid, valid)

    # A loss of both stats over the completion mask: parameter gradients.
    rng = np.random.default_rng(1)
    w_logp = jnp.asarray(rng.normal(size=valid.shape) * valid, jnp.float32)
    w_ent = jnp.asarray(rng.normal(size=valid.shape) * valid, jnp.float32)

    def grads(model, stats_fn):
      graphdef, params, rest = nnx.split(model, nnx.Param, ...)

      def loss(p):
        st = stats_fn(nnx.merge(graphdef, p, rest))
        return jnp.sum(st.logp * w_logp + st.entropy * w_ent)
      return jax.grad(loss)(params)
    g_ref = grads(_model("xla_naive"),
                  lambda m: unpacked_stats(m, tokens, positions, mask))
    g_ours = grads(model, lambda m: packed_stats(m, packed, tokens))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, atol=2e-5, rtol=2e-4), g_ours, g_ref)

  @parameterized.parameters((6, 0, 0), (9, 1, 0), (8, 2, 1), (6, 3, 3),
                            (12, 4, 2))
  def test_traced_pack_is_the_host_layout(self, rows, seed, spare_rows):
    tokens, positions, mask, valid = _rollout_batch(rows, seed)
    need = packing.pack(tokens, positions, mask, C, row_len=P + C)
    host = packing.pack(tokens, positions, mask, C, row_len=P + C,
                        num_rows=need.tokens.shape[0] + spare_rows)
    n = host.tokens.shape[0]
    ours, fits = jax.jit(packing.pack_traced, static_argnums=(3, 4, 5))(
        tokens, positions, mask, C, n, P + C)
    self.assertTrue(bool(fits))
    for name in ("tokens", "positions", "segment_ids", "valid"):
      np.testing.assert_array_equal(getattr(ours, name), getattr(host, name),
                                    err_msg=name)
    for name in ("src_row", "src_col"):
      np.testing.assert_array_equal(np.asarray(getattr(ours, name))[valid],
                                    getattr(host, name)[valid], err_msg=name)
    # Fewer rows than first-fit needs: reported, not silently wrong.
    n = need.tokens.shape[0]
    if n > 1:
      _, fits = packing.pack_traced(tokens, positions, mask, C, n - 1, P + C)
      self.assertFalse(bool(fits))

  @parameterized.parameters(0.5, 0.2)
  def test_packed_or_unpacked_forward_matches_with_gradients(self, fraction):
    """Rows of 2 (P + C) tokens. 0.5: the six rows fit in three; 0.2:
    they do not fit in two, and the unpacked branch runs: the same values
    and gradients both ways."""
    from jaxrl_ent.rl import train_step as ts  # pylint: disable=g-import-not-at-top
    tokens, positions, mask, valid = _rollout_batch()
    row_len = 2 * (P + C)
    need = packing.pack(tokens, positions, mask, C, row_len=row_len)
    rows = packing.num_packed_rows(6, fraction)
    self.assertEqual(rows >= need.tokens.shape[0], fraction == 0.5)
    tokens, positions, mask = map(jnp.asarray, (tokens, positions, mask))
    batch = ts.RLBatch(tokens=tokens, positions=positions,
                       attention_mask=mask,
                       completion_mask=jnp.asarray(valid, jnp.int32),
                       old_logp=jnp.zeros(valid.shape),
                       advantages=jnp.zeros(valid.shape),
                       ref_logp=jnp.zeros(valid.shape))
    w = jnp.asarray(np.random.default_rng(1).normal(size=valid.shape)
                    * valid, jnp.float32)
    model = _model("blockwise")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def run(cfg):
      def loss(p):
        st = ts.completion_stats(
            nnx.merge(graphdef, p, rest), batch, temperature=1.0,
            token_chunk=16, vocab_chunk=32,
            pack=cfg.pack_shape(*tokens.shape))
        return jnp.sum(st.logp * w + st.entropy * w), st
      (_, st), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
      return st, g, ts.pack_metrics(cfg, batch)
    st, g, m = run(ts.LossConfig(pack_fraction=fraction,
                                 pack_row_len=row_len))
    st_ref, g_ref, m_ref = run(ts.LossConfig())
    for name in ("logp", "entropy"):
      np.testing.assert_allclose(np.asarray(getattr(st, name))[valid],
                                 np.asarray(getattr(st_ref, name))[valid],
                                 atol=1e-5, rtol=1e-5, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, atol=2e-5, rtol=2e-4), g, g_ref)
    before = 1 - mask.sum() / mask.size
    self.assertAlmostEqual(float(m_ref["perf/padding_fraction"]), before, 6)
    self.assertNotIn("perf/pack_fits", m_ref)
    self.assertEqual(float(m["perf/pack_fits"]), float(fraction == 0.5))
    after = (1 - mask.sum() / (rows * row_len) if fraction == 0.5
             else before)
    self.assertAlmostEqual(float(m["perf/padding_fraction_packed"]),
                           float(after), 6)

  def test_unpack_fills_missing_tokens(self):
    tokens, positions, mask, valid = _rollout_batch()
    packed = packing.pack(tokens, positions, mask, C, row_len=P + C)
    x = jnp.asarray(packed.tokens, jnp.float32)
    out = packing.unpack(x, packed, fill=-1.0)
    self.assertEqual(out.shape, valid.shape)
    np.testing.assert_array_equal(np.asarray(out)[~valid], -1.0)


if __name__ == "__main__":
  absltest.main()
