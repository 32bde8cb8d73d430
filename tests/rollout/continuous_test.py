"""Continuous batching, length-aware decode attention and the int8 KV cache."""

import functools
import tempfile

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
import numpy as np
import torch
from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx

from jaxrl_ent import models
from jaxrl_ent import rollout
from jaxrl_ent.models import decode_attention
from jaxrl_ent.models import layers
from jaxrl_ent.models import tiny_hf
from jaxrl_ent.rollout import sampler

PROMPTS = [[5, 17, 3, 9, 22, 41], [7, 8], [30, 31, 32, 33], [60, 2, 9]]


def _hf_logp(ref, out, temperature):
  """Behaviour log-probs recomputed by transformers (teacher forcing)."""
  tokens = np.asarray(out.tokens)
  mask = np.asarray(out.attention_mask)
  with torch.no_grad():
    logits = ref(input_ids=torch.tensor(tokens),
                 attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(np.asarray(out.positions))
                 ).logits.double().numpy()
  p = out.prompt_mask.shape[1]
  z = logits[:, p - 1:-1] / temperature
  z = z - z.max(-1, keepdims=True)
  logp_all = z - np.log(np.exp(z).sum(-1, keepdims=True))
  comp = tokens[:, p:]
  return np.take_along_axis(logp_all, comp[..., None], -1)[..., 0]


class ContinuousTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    with tempfile.TemporaryDirectory() as d:
      cls.ref = tiny_hf.write_checkpoint(d, "qwen2", seed=3)
      cls.model = models.from_pretrained(d)

  def _kw(self, **kw):
    return dict(dict(max_new_tokens=10, n_samples=3, temperature=1.0,
                     stop_token_ids=[11, 40], return_entropy=True), **kw)

  @parameterized.parameters(1, 2, 5)
  def test_continuous_equals_static(self, num_slots):
    # 12 rows through 1, 2 or 5 slots: rows start at different steps in
    # different slots, yet each row's tokens, log-probs and entropies are
    # those of the static batch (per-row keys, schedule-independent).
    budgets = np.random.default_rng(0).integers(1, 11, len(PROMPTS) * 3)
    key = jax.random.key(4)
    static = rollout.generate(self.model, PROMPTS, key, **self._kw(),
                              row_budgets=budgets)
    cont = rollout.generate(self.model, PROMPTS, key, **self._kw(),
                            row_budgets=budgets, continuous=True,
                            num_slots=num_slots)
    for name in ("tokens", "completion_mask", "lengths", "positions",
                 "prompt_index"):
      np.testing.assert_array_equal(np.asarray(getattr(cont, name)),
                                    np.asarray(getattr(static, name)), name)
    # Same tokens, so the same log-probs; the vocabulary reductions behind
    # them may round differently at a different slot count (one ulp).
    for name in ("logp", "entropy"):
      np.testing.assert_allclose(np.asarray(getattr(cont, name)),
                                 np.asarray(getattr(static, name)),
                                 rtol=1e-6, atol=0, err_msg=name)
    self.assertTrue((np.asarray(static.lengths) <= budgets).all())
    # Some rows stop early on a stop token, some run to their budget.
    stopped = np.asarray(static.lengths) < budgets
    self.assertTrue(stopped.any() and (~stopped).any())

  def test_logp_matches_transformers_teacher_forcing(self):
    out = rollout.generate(self.model, PROMPTS, jax.random.key(1),
                           **self._kw(temperature=0.8, top_p=0.9),
                           continuous=True, num_slots=3)
    m = np.asarray(out.completion_mask, bool)
    ref = _hf_logp(self.ref, out, 0.8)
    np.testing.assert_allclose(np.asarray(out.logp)[m], ref[m], atol=1e-5)
    # Padding after the stop token, zero log-probs there.
    self.assertTrue((np.asarray(out.completion)[~m] == 0).all())
    self.assertTrue((np.asarray(out.logp)[~m] == 0).all())

  def test_no_stop_runs_every_row_to_budget(self):
    out = rollout.generate(self.model, PROMPTS, jax.random.key(2),
                           **self._kw(stop_token_ids=()), continuous=True,
                           num_slots=4)
    np.testing.assert_array_equal(out.lengths, 10)

  def _replicas(self, continuous):
    """Two parameter copies, prompts, settings and budgets 2 vs 6: the
    cache has two blocks of 8 columns, of which replica 0 fills one."""
    graphdef, state = nnx.split(self.model)
    other = jax.tree.map(lambda x: x * 1.5 if x.ndim == 2 else x, state)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), state, other)
    ids = np.zeros((len(PROMPTS), 6), np.int32)
    mask = np.zeros_like(ids)
    for i, p in enumerate(PROMPTS):
      ids[i, 6 - len(p):], mask[i, 6 - len(p):] = p, 1
    params = sampler.SamplingParams(max_new_tokens=6, n_samples=2,
                                    stop_token_ids=(11,),
                                    continuous=continuous, num_slots=3,
                                    decode_attention="blockwise", kv_block=8)
    rows = 2 * len(PROMPTS)
    budgets = np.stack([np.full(rows, 2), np.full(rows, 6)]).astype(np.int32)

    def run(st, budget, axis=None):
      return sampler.generate_arrays(nnx.merge(graphdef, st), ids, mask,
                                     jax.random.key(5), params, budget,
                                     axis_name=axis)
    return run, state, other, stacked, budgets

  @parameterized.product(continuous=(False, True),
                         axis_name=(None, "replicas"))
  def test_vmap_over_stacked_params(self, continuous, axis_name):
    # A seeds axis: two parameter copies, one program; each copy gets the
    # rollout it gets on its own, also when one replica's rows are all done
    # long before the other's (budgets 2 vs 6): with `axis_name` (the
    # trainer's replicas) it steps on as a no-op until the other is done,
    # reads the other's second cache block (masked: adds exactly 0) and
    # runs the other's refills (writing its own slots back).
    run, state, other, stacked, budgets = self._replicas(continuous)
    both = jax.jit(jax.vmap(functools.partial(run, axis=axis_name),
                            axis_name=axis_name))(stacked, budgets)
    for i, st in enumerate((state, other)):
      one = jax.jit(run)(st, budgets[i])
      for name in ("tokens", "completion_mask", "lengths"):
        np.testing.assert_array_equal(getattr(both, name)[i],
                                      getattr(one, name), err_msg=name)
      np.testing.assert_allclose(both.logp[i], one.logp, atol=1e-6)
      np.testing.assert_allclose(both.entropy[i], one.entropy, atol=1e-6)
    self.assertLessEqual(int(both.lengths[0].max()), 2)
    self.assertGreater(int(both.lengths[1].max()), 2)
    self.assertFalse(np.array_equal(both.tokens[0], both.tokens[1]))

  @parameterized.parameters(False, True)
  def test_vmap_with_axis_name_keeps_every_cond(self, continuous):
    # vmap turns a `cond` with a batched test into both branches and a
    # select over every carry leaf (the KV cache, each token). With the
    # replicas' axis name the vmapped rollout keeps all the conds of one
    # replica's (the attention's per-block read, the refill); without it
    # those become selects.
    run, state, _, stacked, budgets = self._replicas(continuous)

    def conds(fn, *args):
      def count(jaxpr):
        return sum((eqn.primitive.name == "cond") + sum(
            count(sub) for sub in jax_core.jaxprs_in_params(eqn.params))
                   for eqn in jaxpr.eqns)
      return count(jax.make_jaxpr(fn)(*args).jaxpr)

    one = conds(run, state, budgets[0])
    # Per layer one block read; continuous batching adds the refill.
    self.assertGreaterEqual(one, self.model.cfg.num_layers + continuous)
    shared = functools.partial(run, axis="replicas")
    self.assertEqual(
        conds(jax.vmap(shared, axis_name="replicas"), stacked, budgets), one)
    self.assertLess(conds(jax.vmap(run), stacked, budgets), one)

  def test_int8_cache_logp_mismatch_is_small(self):
    # Same sampled tokens scored by the float cache (teacher forcing by
    # transformers): the int8 cache shifts the behaviour log-probs a little.
    kw = self._kw(stop_token_ids=())
    out = rollout.generate(self.model, PROMPTS, jax.random.key(3), **kw,
                           kv_int8=True, continuous=True, num_slots=5)
    ref = _hf_logp(self.ref, out, 1.0)
    err = np.abs(np.asarray(out.logp) - ref)
    self.assertGreater(err.max(), 1e-6)  # it is quantised
    self.assertLess(err.max(), 5e-2)
    static = rollout.generate(self.model, PROMPTS, jax.random.key(3), **kw,
                              kv_int8=True)
    np.testing.assert_array_equal(static.tokens, out.tokens)

  def test_bad_settings_fail_before_compiling(self):
    for kw, msg in (({"num_slots": -1}, "num_slots"),
                    ({"decode_attention": "flash"}, "decode_attention"),
                    ({"row_budgets": [11] * 12}, "row_budgets"),
                    ({"row_budgets": [1] * 5}, "row_budgets")):
      with self.assertRaisesRegex(ValueError, msg):
        rollout.generate(self.model, PROMPTS, jax.random.key(0),
                         **self._kw(), **kw)


class DecodeAttentionTest(parameterized.TestCase):

  def _inputs(self, b=3, n=4, kh=2, h=8, s=32, dtype=jnp.float32, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (b, n, h), dtype)
    k = jax.random.normal(ks[1], (b, kh, h, s), dtype)
    v = jax.random.normal(ks[2], (b, kh, s, h), dtype)
    lengths = jnp.asarray([1, 9, s][:b], jnp.int32)
    starts = jnp.asarray([0, 3, 13][:b], jnp.int32)
    return q, k, v, lengths, starts

  def _reference(self, q, k, v, lengths, starts=None):
    # The training-side cached attention, with an explicit [B, 1, S] mask.
    col = jnp.arange(k.shape[-1])[None, None, :]
    allowed = col < lengths[:, None, None]
    if starts is not None:
      allowed &= col >= starts[:, None, None]
    return layers.cached_attention(q[:, None], k, v, allowed)[:, 0]

  @parameterized.parameters(8, 16, 32)
  def test_blockwise_equals_cached_attention(self, block):
    q, k, v, lengths, starts = self._inputs()
    for st in (None, starts):
      want = self._reference(q, k, v, lengths, st)
      got = jax.jit(functools.partial(decode_attention.blockwise,
                                      block=block))(q, k, v, lengths,
                                                    starts_b=st)
      np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
      np.testing.assert_allclose(
          decode_attention.full(q, k, v, lengths, starts_b=st), want,
          atol=1e-5, rtol=0)

  def test_blockwise_reads_only_filled_blocks(self):
    # Columns past every slot's length may hold anything (NaN here): the
    # loop never reads them, so the result is unchanged.
    q, k, v, _, _ = self._inputs()
    lengths = jnp.asarray([3, 7, 12], jnp.int32)
    want = self._reference(q, k, v, lengths)
    k = k.at[..., 16:].set(jnp.nan)
    v = v.at[:, :, 16:].set(jnp.nan)
    got = decode_attention.blockwise(q, k, v, lengths, block=8)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

  def test_int8_dequantised_attention(self):
    q, k, v, lengths, _ = self._inputs()
    kq, ks = decode_attention.quantize(k, axis=2)
    vq, vs = decode_attention.quantize(v, axis=3)
    want = self._reference(q, kq * ks, vq * vs, lengths)
    got = decode_attention.blockwise(q, kq, vq, lengths, ks, vs, block=8)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # Quantisation error itself is within half a step per entry.
    self.assertLess(float(jnp.max(jnp.abs(kq * ks - k) - ks / 2)), 1e-6)

  def test_pallas_gpu_interpret_equals_cached_attention(self):
    q, k, v, lengths, starts = self._inputs(s=32)
    want = self._reference(q, k, v, lengths, starts)
    got = decode_attention.pallas_gpu(q, k, v, lengths, starts_b=starts,
                                      block=16, interpret=True)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


if __name__ == "__main__":
  absltest.main()
