"""Rollout sampler: parity with transformers' generate, teacher forcing, keys."""

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl.testing import absltest
from absl.testing import parameterized

from jaxrl_ent import models
from jaxrl_ent import rollout
from jaxrl_ent.models import tiny_hf
from jaxrl_ent.rollout import sampler as generate_lib
from jaxrl_ent.rollout import sampling

PROMPTS = [[5, 17, 3, 9, 22, 41], [7, 8], [30, 31, 32, 33]]


def _left_pad(prompts, pad=0):
  length = max(map(len, prompts))
  ids = np.full((len(prompts), length), pad)
  mask = np.zeros_like(ids)
  for i, p in enumerate(prompts):
    ids[i, length - len(p):] = p
    mask[i, length - len(p):] = 1
  return ids, mask


class GenerateTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.refs, cls.models = {}, {}
    for kind in ("qwen2", "llama"):
      with tempfile.TemporaryDirectory() as d:
        # Seed 3 gives varied greedy continuations for both families (seed 1
        # makes the tiny qwen2 repeat one token, a weak parity check).
        cls.refs[kind] = tiny_hf.write_checkpoint(d, kind, seed=3)
        cls.models[kind] = models.from_pretrained(d)

  @parameterized.parameters("qwen2", "llama")
  def test_greedy_matches_transformers_generate(self, kind):
    ref, model = self.refs[kind], self.models[kind]
    new = 12
    ids, mask = _left_pad(PROMPTS)
    with torch.no_grad():
      hf = ref.generate(input_ids=torch.tensor(ids),
                        attention_mask=torch.tensor(mask), do_sample=False,
                        max_new_tokens=new, pad_token_id=0,
                        eos_token_id=None).numpy()[:, ids.shape[1]:]
    out = rollout.generate(model, PROMPTS, jax.random.key(0),
                           max_new_tokens=new, greedy=True)
    np.testing.assert_array_equal(np.asarray(out.completion), hf)
    # Now stop on a token row 0 first emits at a later step: rows stop there,
    # keep the stop token, and pad afterwards, like transformers with it.
    step = next(s for s in range(2, new) if hf[0, s] not in hf[0, :s])
    eos = int(hf[0, step])
    with torch.no_grad():
      hf_eos = ref.generate(input_ids=torch.tensor(ids),
                            attention_mask=torch.tensor(mask),
                            do_sample=False, max_new_tokens=new,
                            pad_token_id=0, eos_token_id=eos
                            ).numpy()[:, ids.shape[1]:]
    out = rollout.generate(model, PROMPTS, jax.random.key(0),
                           max_new_tokens=new, greedy=True,
                           stop_token_ids=[eos])
    got = np.asarray(out.completion)
    for row in range(len(PROMPTS)):
      n = int(out.lengths[row])
      np.testing.assert_array_equal(got[row, :n], hf_eos[row, :n])
      if n < new:
        self.assertEqual(got[row, n - 1], eos)
        self.assertTrue((got[row, n:] == 0).all())
    self.assertEqual(int(out.lengths[0]), step + 1)

  @parameterized.parameters((1.0, 1.0, 0), (0.7, 0.9, 0), (1.3, 1.0, 5))
  def test_behaviour_logp_equals_teacher_forcing(self, temperature, top_p,
                                                 top_k):
    model = self.models["qwen2"]
    out = rollout.generate(model, PROMPTS, jax.random.key(3),
                           max_new_tokens=10, temperature=temperature,
                           top_p=top_p, top_k=top_k, n_samples=2,
                           stop_token_ids=[11], return_entropy=True)
    logits, _ = model(out.tokens, out.positions, out.attention_mask)
    p = out.prompt_mask.shape[1]
    # Logits at t predict token t+1.
    logits = logits[:, p - 1:-1] / temperature
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, out.completion[..., None], -1)[..., 0]
    ent = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    m = np.asarray(out.completion_mask, bool)
    np.testing.assert_allclose(np.asarray(out.logp)[m], np.asarray(logp)[m],
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(out.entropy)[m],
                               np.asarray(ent)[m], atol=1e-5, rtol=0)
    self.assertTrue((np.asarray(out.logp)[~m] == 0).all())

  def test_groups_and_reproducibility(self):
    model = self.models["qwen2"]
    kw = dict(max_new_tokens=6, n_samples=3, temperature=1.0)
    a = rollout.generate(model, PROMPTS, jax.random.key(7), **kw)
    b = rollout.generate(model, PROMPTS, jax.random.key(7), **kw)
    c = rollout.generate(model, PROMPTS, jax.random.key(8), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    self.assertFalse(np.array_equal(a.tokens, c.tokens))
    np.testing.assert_array_equal(a.prompt_index, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    # Rows of one group share the prompt but (almost surely) not completions.
    np.testing.assert_array_equal(a.tokens[0, :a.prompt_mask.shape[1]],
                                  a.tokens[2, :a.prompt_mask.shape[1]])
    self.assertFalse(np.array_equal(a.completion[0], a.completion[1]))

  def test_bucketing_bounds_compiles(self):
    model = self.models["llama"]
    kw = dict(max_new_tokens=4, prompt_buckets=(8, 16), greedy=True)
    rollout.generate(model, [[1, 2, 3]], jax.random.key(0), **kw)
    before = generate_lib._generate_jit._cache_size()
    for prompt in ([1, 2], [1, 2, 3, 4, 5], list(range(1, 9))):
      out = rollout.generate(model, [prompt], jax.random.key(0), **kw)
      self.assertEqual(out.prompt_mask.shape, (1, 8))
    self.assertEqual(generate_lib._generate_jit._cache_size(), before)
    out = rollout.generate(model, [list(range(1, 12))], jax.random.key(0),
                           **kw)
    self.assertEqual(out.prompt_mask.shape, (1, 16))
    self.assertEqual(generate_lib._generate_jit._cache_size(), before + 1)

  @parameterized.named_parameters(
      ("empty_list", [], {}, "prompt list is empty"),
      ("empty_prompt", [[1], []], {}, "prompt 1 is empty"),
      ("too_long", [list(range(20))], {"max_prompt_len": 16},
       "prompt 0 has 20 tokens, more than max_prompt_len=16"),
      ("top_p_zero", [[1]], {"top_p": 0.0}, "top_p must be in"),
      ("top_p_big", [[1]], {"top_p": 1.5}, "top_p must be in"),
      ("n_samples", [[1]], {"n_samples": 0}, "n_samples must be"),
      ("temperature", [[1]], {"temperature": 0.0}, "temperature must be > 0"),
      ("top_k", [[1]], {"top_k": -1}, "top_k must be"),
      ("token_range", [[1000]], {}, "token ids must be in"),
      ("stop_range", [[1]], {"stop_token_ids": [500]}, "outside the vocab"),
  )
  def test_bad_input_fails_before_compiling(self, prompts, kw, message):
    before = generate_lib._generate_jit._cache_size()
    with self.assertRaisesRegex(ValueError, message):
      rollout.generate(self.models["qwen2"], prompts, jax.random.key(0),
                       **{"max_new_tokens": 4, **kw})
    self.assertEqual(generate_lib._generate_jit._cache_size(), before)


class SamplingDistributionTest(parameterized.TestCase):
  """Empirical frequencies vs the exact truncated distribution (chi-square)."""

  @parameterized.parameters(
      (1.0, 1.0, 0), (0.5, 1.0, 0), (2.0, 1.0, 0), (1.0, 0.8, 0),
      (1.0, 1.0, 3), (0.7, 0.6, 4))
  def test_frequencies(self, temperature, top_p, top_k):
    logits = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], np.float32)
    # Exact distribution, computed independently in NumPy.
    z = logits / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-z)
    keep = np.zeros(8, bool)
    if top_k:
      keep[order[:top_k]] = True
    else:
      keep[:] = True
    mass = 0.0
    nucleus = np.zeros(8, bool)
    for i in order:
      if mass < top_p:
        nucleus[i] = True
      mass += p[i]
    keep &= nucleus
    expected = np.where(keep, p, 0.0)
    expected /= expected.sum()

    n = 40_000
    keys = jax.random.split(jax.random.key(0), 1)
    tokens, _, _ = jax.jit(lambda k: rollout.sample(
        k, jnp.broadcast_to(logits, (n, 8)), temperature=temperature,
        top_p=top_p, top_k=top_k))(keys[0])
    counts = np.bincount(np.asarray(tokens), minlength=8)
    self.assertTrue((counts[~keep] == 0).all(), (counts, keep))
    e = expected[keep] * n
    chi2 = float(((counts[keep] - e) ** 2 / e).sum())
    # 99.9% quantile of chi-square with <= 7 degrees of freedom is 24.3.
    self.assertLess(chi2, 24.3, (counts, expected * n))

  def test_categorical_across_blocks(self):
    # The inverse-transform sampler searches blocks of ~sqrt(V) tokens: put
    # the kept tokens in different blocks, at both ends of the vocabulary,
    # in a padded last block (V = 1000 is not a multiple of the block), and
    # leave whole blocks without mass.
    v = 1000
    kept = np.array([0, 1, 31, 32, 333, 640, 641, 998, 999])
    logits = np.full(v, -np.inf, np.float32)
    logits[kept] = np.linspace(1.0, -1.0, len(kept))
    p = np.exp(logits[kept] - logits[kept].max())
    p /= p.sum()
    n = 60_000
    tokens = jax.jit(sampling.categorical)(
        jax.random.key(1), jnp.broadcast_to(jnp.asarray(logits), (n, v)))
    counts = np.bincount(np.asarray(tokens), minlength=v)
    self.assertEqual(counts.sum(), n)
    self.assertEqual(counts[np.setdiff1d(np.arange(v), kept)].sum(), 0)
    e = p * n
    chi2 = float(((counts[kept] - e) ** 2 / e).sum())
    # 99.9 % quantile of chi-square with 8 degrees of freedom is 26.1.
    self.assertLess(chi2, 26.1, (counts[kept], e))

  def test_categorical_single_token_and_extremes(self):
    # One finite logit: always that token, wherever it is; a logit far below
    # the others (exp underflows to 0) is never drawn.
    for v, i in ((7, 0), (7, 6), (300, 299), (4096, 2049)):
      logits = np.full((64, v), -np.inf, np.float32)
      logits[:, i] = 3.0
      got = sampling.categorical(jax.random.key(v), logits)
      self.assertTrue((np.asarray(got) == i).all(), (v, i))
    logits = np.zeros((5000, 16), np.float32)
    logits[:, 3] = -200.0
    got = np.asarray(sampling.categorical(jax.random.key(2), logits))
    self.assertFalse((got == 3).any())
    self.assertTrue(((got >= 0) & (got < 16)).all())


if __name__ == "__main__":
  absltest.main()
