"""Tests for jaxrl_ent.rl.policy_losses against PyTorch ports of verl."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxrl_ent.rl import aggregation
from jaxrl_ent.rl import policy_losses


def _batch(seed=0, b=4, t=6, spread=0.4):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.1, 3.0, (b, t)).astype(np.float32)
  old = (logp + rng.normal(0.0, spread, (b, t))).astype(np.float32)
  adv = np.repeat(rng.normal(size=(b, 1)), t, 1).astype(np.float32)
  lengths = rng.integers(2, t + 1, size=b)
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
  return logp, old, adv, mask


def _torch_masked_mean(x, mask):
  return (x * mask).sum() / (mask.sum() + 1e-8)


def _torch_vanilla(old, logp, adv, mask, eps_low, eps_high, c):
  """verl compute_policy_loss_vanilla, before agg_loss."""
  neg_kl = torch.clamp(logp - old, min=-20.0, max=20.0)
  ratio = torch.exp(neg_kl)
  ppo_kl = _torch_masked_mean(-neg_kl, mask)
  l1 = -adv * ratio
  l2 = -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
  clip1 = torch.maximum(l1, l2)
  clipfrac = _torch_masked_mean(torch.gt(l2, l1).float(), mask)
  l3 = -adv * c
  clip2 = torch.min(l3, clip1)
  lower = _torch_masked_mean(torch.gt(clip1, l3) * (adv < 0).float(), mask)
  losses = torch.where(adv < 0, clip2, clip1)
  return losses, dict(pg_clipfrac=clipfrac, pg_clipfrac_lower=lower,
                      ppo_kl=ppo_kl)


def _torch_gspo(old, logp, adv, mask, eps_low, eps_high):
  """verl compute_policy_loss_gspo, before agg_loss."""
  neg_kl = logp - old
  seq_len = torch.sum(mask, dim=-1).clamp(min=1)
  neg_kl_seq = torch.sum(neg_kl * mask, dim=-1) / seq_len
  log_ratio = logp - logp.detach() + neg_kl_seq.detach().unsqueeze(-1)
  ratio = torch.exp(torch.clamp(log_ratio, max=10.0))
  l1 = -adv * ratio
  l2 = -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
  return torch.maximum(l1, l2), dict(
      pg_clipfrac=_torch_masked_mean(torch.gt(l2, l1).float(), mask),
      ppo_kl=_torch_masked_mean(-neg_kl, mask))


def _token_mean(loss_fn, logp, *args, mode="token-mean"):
  loss_bt, metrics = loss_fn(logp, *args)
  return aggregation.agg_loss(loss_bt, args[-1], mode), metrics


class PpoClipTest(parameterized.TestCase):

  @parameterized.parameters((0.2, 0.2, 3.0), (0.2, 0.28, 10.0),
                            (0.1, 0.3, 1.5))
  def test_values_grads_metrics_match_torch(self, eps_low, eps_high, c):
    logp, old, adv, mask = _batch(spread=0.6)
    adv[1] = -2.0  # make the dual-clip branch active somewhere
    old[1, :2] = logp[1, :2] - 3.0  # ratio e^3 > c
    logp_t = torch.tensor(logp, requires_grad=True)
    losses_t, metrics_t = _torch_vanilla(
        torch.tensor(old), logp_t, torch.tensor(adv), torch.tensor(mask),
        eps_low, eps_high, c)
    (losses_t * torch.tensor(mask)).sum().div(mask.sum()).backward()
    fn = functools.partial(policy_losses.ppo_clip_loss, eps_low=eps_low,
                           eps_high=eps_high, clip_ratio_c=c)
    (_, metrics), grad = jax.value_and_grad(
        functools.partial(_token_mean, fn), has_aux=True)(
            jnp.asarray(logp), old, adv, mask)
    loss_bt, _ = fn(logp, old, adv, mask)
    np.testing.assert_allclose(loss_bt, losses_t.detach().numpy() * mask,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, logp_t.grad.numpy(), rtol=1e-5,
                               atol=1e-7)
    for k, v in metrics_t.items():
      np.testing.assert_allclose(metrics[k], v.item(), rtol=1e-5, atol=1e-7)
    self.assertGreater(float(metrics["pg_clipfrac_lower"]), 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_ratio_one_has_no_clipping_and_is_minus_advantage(self):
    logp, _, adv, mask = _batch()
    loss_bt, metrics = self.variant(policy_losses.ppo_clip_loss)(
        logp, logp, adv, mask)
    np.testing.assert_allclose(loss_bt, -adv * mask, rtol=1e-6)
    for v in metrics.values():
      self.assertEqual(float(v), 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_dual_clip_hand_computed(self):
    # A = -1, ratio = 5: L1 = 5, L2 = 1.2, max = 5, dual clip min(5, 3) = 3.
    logp = np.array([[np.log(5.0), np.log(5.0)]], np.float32)
    old = np.zeros_like(logp)
    adv = np.array([[-1.0, 1.0]], np.float32)
    mask = np.ones_like(logp)
    loss_bt, metrics = self.variant(policy_losses.ppo_clip_loss)(
        logp, old, adv, mask)
    np.testing.assert_allclose(loss_bt, [[3.0, -1.2]], rtol=1e-6)
    self.assertAlmostEqual(float(metrics["pg_clipfrac_lower"]), 0.5)
    self.assertAlmostEqual(float(metrics["pg_clipfrac"]), 0.5)  # A>0 token
    plain, metrics = self.variant(functools.partial(
        policy_losses.ppo_clip_loss, clip_ratio_c=None))(logp, old, adv, mask)
    np.testing.assert_allclose(plain, [[5.0, -1.2]], rtol=1e-6)
    self.assertEqual(float(metrics["pg_clipfrac_lower"]), 0.0)

  def test_clip_higher_is_asymmetric(self):
    logp = np.full((1, 1), np.log(1.25), np.float32)
    args = (logp, np.zeros_like(logp), np.ones_like(logp), np.ones_like(logp))
    grad = lambda **kw: jax.grad(lambda lp: policy_losses.ppo_clip_loss(
        lp, *args[1:], **kw)[0].sum())(logp)
    np.testing.assert_allclose(grad(eps_high=0.28), -1.25, rtol=1e-6)
    np.testing.assert_array_equal(grad(eps_high=0.2), 0.0)

  @parameterized.parameters(policy_losses.ppo_clip_loss,
                            policy_losses.gspo_loss,
                            policy_losses.reinforce_loss)
  def test_masked_tokens_change_nothing(self, fn):
    logp, old, adv, mask = _batch(seed=5)
    pad = mask == 0
    junk = [np.where(pad, v, x).astype(np.float32)
            for x, v in ((logp, 50.0), (old, -70.0), (adv, 1e4))]
    f = functools.partial(_token_mean, fn, mode="seq-mean-token-mean")
    (value, metrics), grad = jax.value_and_grad(f, has_aux=True)(
        jnp.asarray(logp), old, adv, mask)
    (value_j, metrics_j), grad_j = jax.value_and_grad(f, has_aux=True)(
        jnp.asarray(junk[0]), *junk[1:], mask)
    np.testing.assert_allclose(value_j, value, rtol=1e-6)
    np.testing.assert_allclose(grad_j, grad, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(grad)[pad], 0.0)
    chex.assert_trees_all_close(metrics_j, metrics, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(fn(junk[0], *junk[1:], mask)[0])
                                  [pad], 0.0)

  def test_vmaps_over_clip_range_and_rejects_bad_dual_clip(self):
    logp, old, adv, mask = _batch(seed=6, spread=0.5)
    eps = jnp.array([0.1, 0.2, 0.3])
    got = jax.jit(jax.vmap(lambda e: policy_losses.ppo_clip_loss(
        logp, old, adv, mask, eps_high=e)[1]["pg_clipfrac"]))(eps)
    for i, e in enumerate([0.1, 0.2, 0.3]):
      self.assertAlmostEqual(float(got[i]), float(policy_losses.ppo_clip_loss(
          logp, old, adv, mask, eps_high=e)[1]["pg_clipfrac"]), places=6)
    with self.assertRaisesRegex(ValueError, "clip_ratio_c"):
      policy_losses.ppo_clip_loss(logp, old, adv, mask, clip_ratio_c=1.0)


class GspoAndReinforceTest(parameterized.TestCase):

  @parameterized.parameters((3e-4, 4e-4), (0.2, 0.2))
  def test_gspo_matches_torch(self, eps_low, eps_high):
    logp, old, adv, mask = _batch(seed=1, spread=0.01)
    logp_t = torch.tensor(logp, requires_grad=True)
    losses_t, metrics_t = _torch_gspo(torch.tensor(old), logp_t,
                                      torch.tensor(adv), torch.tensor(mask),
                                      eps_low, eps_high)
    m_t = torch.tensor(mask)
    seq = (losses_t * m_t).sum(-1) / (m_t.sum(-1) + 1e-8)
    seq.mean().backward()
    fn = functools.partial(policy_losses.gspo_loss, eps_low=eps_low,
                           eps_high=eps_high)
    (value, metrics), grad = jax.value_and_grad(functools.partial(
        _token_mean, fn, mode="seq-mean-token-mean"), has_aux=True)(
            jnp.asarray(logp), old, adv, mask)
    np.testing.assert_allclose(value, seq.mean().item(), rtol=1e-5)
    np.testing.assert_allclose(grad, logp_t.grad.numpy(), rtol=1e-5,
                               atol=1e-7)
    for k, v in metrics_t.items():
      np.testing.assert_allclose(metrics[k], v.item(), rtol=1e-5, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_gspo_token_form_has_the_sequence_objective_gradient(self):
    logp, old, adv, mask = _batch(seed=2, spread=0.05)
    fn = functools.partial(policy_losses.gspo_loss, eps_low=10.0,
                           eps_high=10.0)
    grad = jax.grad(lambda lp: _token_mean(
        fn, lp, old, adv, mask, mode="seq-mean-token-mean")[0])(
            jnp.asarray(logp))

    def sequence_objective(lp):  # −(1/G) Σ_i A_i s_i(θ), GSPO eq. (5)
      s_b = jnp.exp(policy_losses.gspo_sequence_log_ratio(lp, old, mask))
      return -jnp.mean(adv[:, 0] * s_b)

    np.testing.assert_allclose(grad, jax.grad(sequence_objective)(
        jnp.asarray(logp)), rtol=1e-5, atol=1e-7)
    s_b = self.variant(policy_losses.gspo_sequence_log_ratio)(logp, old, mask)
    want = [np.mean((logp - old)[b][mask[b] > 0]) for b in range(4)]
    np.testing.assert_allclose(s_b, want, rtol=1e-5, atol=1e-6)
    loss_bt, _ = self.variant(fn)(logp, old, adv, mask)
    np.testing.assert_allclose(loss_bt, -adv * np.exp(want)[:, None] * mask,
                               rtol=1e-5)

  def test_gspo_clips_whole_sequences(self):
    logp, _, _, mask = _batch(seed=3)
    old = logp - 0.01  # every sequence ratio ≈ 1.01 > 1 + 4e-4
    adv = np.ones_like(logp)
    loss_bt, metrics = policy_losses.gspo_loss(logp, old, adv, mask)
    self.assertAlmostEqual(float(metrics["pg_clipfrac"]), 1.0)
    np.testing.assert_allclose(loss_bt, -(1 + 4e-4) * mask, rtol=1e-6)
    grad = jax.grad(lambda lp: policy_losses.gspo_loss(
        lp, old, adv, mask)[0].sum())(jnp.asarray(logp))
    np.testing.assert_array_equal(grad, 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_reinforce_on_policy_gradient_is_minus_advantage(self):
    logp, old, adv, mask = _batch(seed=4)
    loss_bt, metrics = self.variant(policy_losses.reinforce_loss)(
        logp, old, adv, mask)
    np.testing.assert_allclose(loss_bt, -adv * np.exp(logp - old) * mask,
                               rtol=1e-5)
    self.assertEqual(float(metrics["pg_clipfrac"]), 0.0)
    grad = jax.grad(lambda lp: policy_losses.reinforce_loss(
        lp, jax.lax.stop_gradient(lp), adv, mask)[0].sum())(jnp.asarray(logp))
    np.testing.assert_allclose(grad, -adv * mask, rtol=1e-6)


if __name__ == "__main__":
  absltest.main()
