"""Logit parity with transformers' PyTorch models on tiny random checkpoints."""

import pathlib
import tempfile

import jax.numpy as jnp
import numpy as np
import torch
from absl.testing import absltest
from absl.testing import parameterized

from jaxrl_ent import models
from jaxrl_ent.models import decoder
from jaxrl_ent.models import tiny_hf

CASES = (
    ("qwen2_untied", "qwen2", False),
    ("qwen2_tied", "qwen2", True),
    ("qwen3_untied", "qwen3", False),
    ("qwen3_tied", "qwen3", True),
    ("llama3_untied", "llama", False),
    ("llama3_tied", "llama", True),
)


def _batch(vocab, seed=0):
  rng = np.random.default_rng(seed)
  # 40 positions: long enough that the llama3 frequency scaling changes the
  # logits by ~1e-3 (>> tolerance) compared with unscaled RoPE.
  tokens = rng.integers(0, vocab, size=(3, 40))
  mask = np.ones((3, 40), np.int64)
  mask[1, 29:] = 0   # right padding
  mask[2, 3:] = 0
  return tokens, mask


class HFParityTest(parameterized.TestCase):

  @parameterized.named_parameters(*CASES)
  def test_logits_match_pytorch(self, model_type, tie):
    with tempfile.TemporaryDirectory() as d:
      ref = tiny_hf.write_checkpoint(d, model_type, tie=tie)
      model = models.from_pretrained(d)
    self.assertEqual(model.cfg.tie_word_embeddings, tie)
    tokens, mask = _batch(model.cfg.vocab_size)
    with torch.no_grad():
      expected = ref(input_ids=torch.tensor(tokens),
                     attention_mask=torch.tensor(mask)).logits.numpy()
    got, _ = model(jnp.asarray(tokens), attention_mask_bt=jnp.asarray(mask))
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[valid], expected[valid],
                               atol=1e-4, rtol=1e-4)

  def test_left_padding_with_positions(self):
    with tempfile.TemporaryDirectory() as d:
      ref = tiny_hf.write_checkpoint(d, "qwen2")
      model = models.from_pretrained(d)
    tokens, _ = _batch(model.cfg.vocab_size, seed=1)
    mask = np.ones_like(tokens)
    mask[1, :4] = 0   # left padding
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with torch.no_grad():
      expected = ref(input_ids=torch.tensor(tokens),
                     attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(positions)).logits.numpy()
    got, _ = model(jnp.asarray(tokens), jnp.asarray(positions),
                   jnp.asarray(mask))
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[valid], expected[valid],
                               atol=1e-4, rtol=1e-4)

  def test_llama3_rope_scaling_is_applied(self):
    # The tiny llama config has original_max_position_embeddings=16, so the
    # scaled frequencies differ from the default ones; a model that ignored
    # the scaling would not match.
    with tempfile.TemporaryDirectory() as d:
      tiny_hf.write_checkpoint(d, "llama")
      cfg = models.from_pretrained(d).cfg
    self.assertIsNotNone(cfg.rope_scaling)
    self.assertEqual(dict(cfg.rope_scaling)["factor"], 8.0)

  def test_kv_cache_decoding_matches_full_forward(self):
    with tempfile.TemporaryDirectory() as d:
      tiny_hf.write_checkpoint(d, "qwen3")
      model = models.from_pretrained(d)
    tokens, _ = _batch(model.cfg.vocab_size, seed=2)
    tokens = jnp.asarray(tokens)
    full, _ = model(tokens)
    cache = models.init_cache(model.cfg, tokens.shape[0], 48)
    logits, cache = model(tokens[:, :30], cache=cache)
    steps = [logits]
    for t in range(30, tokens.shape[1]):
      logits, cache = model(tokens[:, t:t + 1], cache=cache)
      steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full,
                               atol=1e-5, rtol=1e-5)

  @parameterized.parameters("qwen2", "qwen3", "llama")
  def test_fused_decode_weights_equal_unfused(self, kind):
    # The rollout fuses q/k/v and gate/up into one matrix each; the cached
    # forward must compute the same logits, in prefill and in decode, and
    # the fused matrices must hold exactly the original weights.
    with tempfile.TemporaryDirectory() as d:
      tiny_hf.write_checkpoint(d, kind, seed=4)
      model = models.from_pretrained(d)
    cfg = model.cfg
    plain = model.decode_weights()
    fused = model.decode_weights(fuse=True)
    self.assertEqual(set(fused.layers[0]) - set(plain.layers[0]),
                     {"qkv_w", "gate_up_w"} | (
                         {"qkv_b"} if cfg.qkv_bias else set()))
    self.assertNotIn("q_w", fused.layers[0])
    d_model = cfg.hidden_size
    np.testing.assert_array_equal(
        fused.layers[1]["qkv_w"][:, cfg.num_heads * cfg.head_dim:][
            :, :cfg.num_kv_heads * cfg.head_dim],
        plain.layers[1]["k_w"].reshape(d_model, -1))
    np.testing.assert_array_equal(
        fused.layers[1]["gate_up_w"][:, cfg.intermediate_size:],
        plain.layers[1]["up_w"])
    tokens, mask = _batch(cfg.vocab_size, seed=5)
    tokens, mask = jnp.asarray(tokens[:, :20]), jnp.asarray(mask[:, :20])
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    outs = []
    for w in (plain, fused):
      cache = models.init_cache(cfg, 3, 24)
      h, cache = decoder.cached_forward(w, tokens, positions, mask, cache)
      steps = [decoder.cached_logits(w, h)]
      for t in range(3):
        tok = jnp.full((3, 1), 7 + t)
        h, cache = decoder.cached_forward(w, tok, positions[:, -1:] + 1 + t,
                                          jnp.ones((3, 1)), cache)
        steps.append(decoder.cached_logits(w, h))
      outs.append(np.concatenate(steps, axis=1))
    np.testing.assert_allclose(outs[1], outs[0], atol=2e-5, rtol=1e-5)


if __name__ == "__main__":
  absltest.main()
