"""Tests for jaxrl_ent.rl.aggregation against NumPy/PyTorch verl `agg_loss`."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxrl_ent.rl import aggregation

MODES = aggregation.AGG_MODES


def _batch(seed=0, b=5, t=7):
  rng = np.random.default_rng(seed)
  loss = rng.normal(size=(b, t)).astype(np.float32)
  lengths = rng.integers(1, t + 1, size=b)
  lengths[2] = 0  # one fully masked sequence
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
  return loss, mask


def _np_agg(loss, mask, mode, scale=None):
  """entropy_methods.md §3.2, written loop-by-loop in float64."""
  loss, mask = loss.astype(np.float64), mask.astype(np.float64)
  if mode == "token-mean":
    n = mask.sum()
    return (loss * mask).sum() / n if n else 0.0
  seqs = [b for b in range(loss.shape[0]) if mask[b].sum() > 0]
  if mode == "seq-mean-token-sum-norm":
    return (loss * mask).sum() / (scale or loss.shape[1])
  if not seqs:
    return 0.0
  if mode == "seq-mean-token-sum":
    return np.mean([(loss[b] * mask[b]).sum() for b in seqs])
  return np.mean([(loss[b] * mask[b]).sum() / mask[b].sum() for b in seqs])


def _torch_verl_agg(loss, mask, mode, scale=None):
  """verl `agg_loss` (current form, spec's sum-norm), in torch."""
  if mode == "token-mean":
    return (loss * mask).sum() / mask.sum()
  if mode == "seq-mean-token-sum-norm":
    return torch.sum(torch.sum(loss * mask, dim=-1)) / (scale or mask.shape[-1])
  counts = torch.sum(mask, dim=-1)
  if mode == "seq-mean-token-sum":
    seq_losses = torch.sum(loss * mask, dim=-1)
  else:
    seq_losses = torch.sum(loss * mask, dim=-1) / (counts + 1e-8)
  seq_mask = (counts > 0).float()
  return (seq_losses * seq_mask).sum() / seq_mask.sum()


class AggregationTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODES)
  def test_matches_numpy_reference(self, mode):
    loss, mask = _batch()
    got = self.variant(functools.partial(aggregation.agg_loss, mode=mode))(
        loss, mask)
    np.testing.assert_allclose(got, _np_agg(loss, mask, mode), rtol=1e-6,
                               atol=1e-7)

  @parameterized.parameters(*MODES)
  def test_values_and_grads_match_torch(self, mode):
    loss, mask = _batch(seed=1)
    loss_t = torch.tensor(loss, requires_grad=True)
    want = _torch_verl_agg(loss_t, torch.tensor(mask), mode)
    want.backward()
    agg = functools.partial(aggregation.agg_loss, mode=mode)
    got, grad = jax.value_and_grad(agg)(jnp.asarray(loss), mask)
    np.testing.assert_allclose(got, want.item(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, loss_t.grad.numpy(), rtol=1e-5,
                               atol=1e-7)

  def test_hand_computed(self):
    loss = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    want = {"token-mean": 7 / 3, "seq-mean-token-sum": (3 + 4) / 2,
            "seq-mean-token-mean": (1.5 + 4) / 2,
            "seq-mean-token-sum-norm": 7 / 3}
    for mode, value in want.items():
      self.assertAlmostEqual(
          float(aggregation.agg_loss(loss, mask, mode)), value, places=5)
    self.assertAlmostEqual(float(aggregation.agg_loss(
        loss, mask, "seq-mean-token-sum-norm", loss_scale_factor=14.0)),
                           0.5, places=6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODES)
  def test_weights_are_the_gradient_and_reproduce_the_loss(self, mode):
    loss, mask = _batch(seed=2)
    agg = functools.partial(aggregation.agg_loss, mode=mode,
                            loss_scale_factor=11.0)
    weights = self.variant(functools.partial(
        aggregation.aggregation_weights, mode=mode, loss_scale_factor=11.0))(
            mask)
    np.testing.assert_allclose(np.sum(weights * loss), agg(loss, mask),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.grad(agg)(jnp.asarray(loss), mask),
                               weights, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(np.asarray(weights)[mask == 0], 0.0)

  @parameterized.parameters(*MODES)
  def test_masked_tokens_change_nothing(self, mode):
    loss, mask = _batch(seed=3)
    garbage = np.where(mask > 0, loss, np.nan).astype(np.float32)
    garbage[0, -1] = np.inf if mask[0, -1] == 0 else garbage[0, -1]
    agg = functools.partial(aggregation.agg_loss, mode=mode)
    value, grad = jax.value_and_grad(agg)(jnp.asarray(garbage), mask)
    np.testing.assert_allclose(value, agg(loss, mask), rtol=1e-6)
    self.assertTrue(np.all(np.isfinite(grad)))
    np.testing.assert_array_equal(np.asarray(grad)[mask == 0], 0.0)

  @parameterized.parameters(*MODES)
  def test_all_masked_is_zero_not_nan(self, mode):
    loss, _ = _batch()
    mask = np.zeros_like(loss)
    self.assertEqual(float(aggregation.agg_loss(loss, mask, mode)), 0.0)
    np.testing.assert_array_equal(
        aggregation.aggregation_weights(mask, mode), 0.0)

  @parameterized.parameters(*MODES)
  def test_global_denominator_makes_microbatches_sum_exactly(self, mode):
    loss, mask = _batch(seed=4, b=6)
    full = aggregation.agg_loss(loss, mask, mode)
    den = aggregation.agg_denominator(mask, mode)
    parts = [aggregation.agg_loss(loss[i:i + 2], mask[i:i + 2], mode,
                                  denominator=den) for i in range(0, 6, 2)]
    np.testing.assert_allclose(sum(parts), full, rtol=1e-5, atol=1e-7)
    nums = [aggregation.agg_numerator(loss[i:i + 2], mask[i:i + 2], mode)
            for i in range(0, 6, 2)]
    np.testing.assert_allclose(sum(nums) / den, full, rtol=1e-5, atol=1e-7)
    weights = np.concatenate([aggregation.aggregation_weights(
        mask[i:i + 2], mode, denominator=den) for i in range(0, 6, 2)])
    np.testing.assert_allclose(weights, aggregation.aggregation_weights(
        mask, mode), rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_combine_token_means_exact_vs_verl(self):
    # Micro-batch 1: 1 token of loss 4; micro-batch 2: 3 tokens of loss 0.
    loss = np.array([[4.0, 9.0, 9.0], [0.0, 0.0, 0.0]], np.float32)
    mask = np.array([[1, 0, 0], [1, 1, 1]], np.float32)
    pairs = [aggregation.token_sum_and_count(loss[i:i + 1], mask[i:i + 1])
             for i in range(2)]
    sums, counts = (jnp.stack(x) for x in zip(*pairs))
    exact = self.variant(aggregation.combine_token_means)(sums, counts)
    verl = self.variant(functools.partial(aggregation.combine_token_means,
                                          exact=False))(sums, counts)
    self.assertAlmostEqual(float(exact), 1.0, places=6)  # 4 / 4 tokens
    self.assertAlmostEqual(float(verl), 2.0, places=6)  # (4/1 + 0/3) / 2
    np.testing.assert_allclose(exact, aggregation.agg_loss(
        loss, mask, "token-mean"), rtol=1e-6)
    dyn = aggregation.combine_token_means(
        sums, counts, exact=False, microbatch_weights_k=jnp.array([0.25, 0.75]))
    self.assertAlmostEqual(float(dyn), 1.0, places=6)

  def test_vmaps_over_a_leading_axis(self):
    loss = np.stack([_batch(seed=s)[0] for s in range(3)])
    _, mask = _batch()
    got = jax.vmap(functools.partial(aggregation.agg_loss,
                                     mode="seq-mean-token-mean"),
                   in_axes=(0, None))(loss, mask)
    want = [_np_agg(l, mask, "seq-mean-token-mean") for l in loss]
    np.testing.assert_allclose(got, want, rtol=1e-5)

  def test_invalid_arguments_raise(self):
    loss, mask = _batch()
    with self.assertRaisesRegex(ValueError, "token-mean"):
      aggregation.agg_loss(loss, mask, "token_mean")
    with self.assertRaises(ValueError):
      aggregation.aggregation_weights(mask, "sum")
    with self.assertRaises(ValueError):
      aggregation.agg_loss(loss, mask, "seq-mean-token-sum-norm",
                           loss_scale_factor=0)
    with self.assertRaises(AssertionError):
      aggregation.agg_loss(loss[0], mask[0], "token-mean")


if __name__ == "__main__":
  absltest.main()
