"""Tests for jaxrl_ent.rl.kl against NumPy/PyTorch ports of verl."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxrl_ent.rl import kl

BASE = kl.BASE_KL_KINDS


def _torch_verl_kl(logp, ref, kind):
  """verl kl_penalty / kl_penalty_forward (with the '+' suffix stripped)."""
  base = kind[:-1] if kind.endswith("+") else kind
  if base in ("kl", "k1"):
    fwd = logp - ref
  elif base == "abs":
    fwd = (logp - ref).abs()
  elif base in ("mse", "k2"):
    fwd = 0.5 * (logp - ref).square()
  else:
    d = torch.clamp(ref - logp, min=-20, max=20)
    fwd = torch.clamp(torch.exp(d) - d - 1, min=-10, max=10)
  if not kind.endswith("+") or base in ("mse", "k2"):
    return fwd
  back = 0.5 * (logp - ref).square()
  return back - back.detach() + fwd.detach()


def _inputs(seed=0, shape=(3, 5)):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.05, 4.0, shape).astype(np.float32)
  ref = (logp + rng.normal(0.0, 0.7, shape)).astype(np.float32)
  return logp, ref


class KlPenaltyTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_computed(self):
    logp = np.array([[-1.0, -2.0]], np.float32)
    ref = np.array([[-2.0, -1.0]], np.float32)  # logp − ref = ±1
    want = {"k1": [1.0, -1.0], "abs": [1.0, 1.0], "k2": [0.5, 0.5],
            "k3": [np.exp(-1.0), np.exp(1.0) - 2.0]}
    for kind, value in want.items():
      got = self.variant(functools.partial(kl.kl_penalty, kind=kind))(
          logp, ref)
      np.testing.assert_allclose(got[0], value, rtol=1e-6)

  @parameterized.parameters(*kl.KL_KINDS)
  def test_values_and_grads_match_torch(self, kind):
    logp, ref = _inputs()
    logp_t = torch.tensor(logp, requires_grad=True)
    want = _torch_verl_kl(logp_t, torch.tensor(ref), kind)
    want.sum().backward()
    got, grad = jax.value_and_grad(
        lambda lp: jnp.sum(kl.kl_penalty(lp, ref, kind)))(jnp.asarray(logp))
    np.testing.assert_allclose(kl.kl_penalty(logp, ref, kind),
                               want.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, logp_t.grad.numpy(), rtol=1e-5,
                               atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("k1", "kl", "k3", "low_var_kl", "abs")
  def test_straight_through_value_of_base_gradient_of_k2(self, base):
    logp, ref = _inputs(seed=1)
    f = lambda k: self.variant(jax.value_and_grad(
        lambda lp: jnp.sum(kl.kl_penalty(lp, ref, k))))(jnp.asarray(logp))
    (v_plus, g_plus), (v_base, _), (_, g_k2) = f(base + "+"), f(base), f("k2")
    np.testing.assert_allclose(v_plus, v_base, rtol=1e-6)
    np.testing.assert_allclose(g_plus, g_k2, rtol=1e-6)
    np.testing.assert_allclose(g_k2, logp - ref, rtol=1e-5)

  def test_k3_clamps(self):
    # Δ = 100 would overflow exp without the ±20 clamp; outputs clip at 10.
    logp = np.array([0.0, 0.0, -100.0, 0.0], np.float32)
    ref = np.array([30.0, -30.0, 0.0, -5.0], np.float32)
    got = kl.kl_penalty(logp, ref, "k3")
    np.testing.assert_allclose(got, [10.0, 10.0, 10.0, np.exp(-5.0) + 4.0],
                               rtol=1e-6)
    grad = jax.grad(lambda lp: jnp.sum(kl.kl_penalty(lp, ref, "k3")))(
        jnp.asarray(logp))
    np.testing.assert_allclose(grad, [0, 0, 0, 1 - np.exp(-5.0)], rtol=1e-6)
    self.assertTrue(np.all(np.asarray(kl.kl_penalty(*_inputs(), "k3")) >= 0))

  def test_k1_and_k3_are_unbiased_k2_is_not(self):
    # Exact expectation over a categorical π: Σ_a π_a k(a) vs KL(π‖ref).
    rng = np.random.default_rng(0)
    logp = jax.nn.log_softmax(rng.normal(size=16).astype(np.float32))
    ref = jax.nn.log_softmax(rng.normal(size=16).astype(np.float32))
    p = jnp.exp(logp)
    true_kl = jnp.sum(p * (logp - ref))
    expect = lambda kind: jnp.sum(p * kl.kl_penalty(logp, ref, kind))
    np.testing.assert_allclose(expect("k1"), true_kl, rtol=1e-5)
    np.testing.assert_allclose(expect("k3"), true_kl, rtol=1e-4)
    self.assertGreater(abs(float(expect("k2") - true_kl)), 1e-3)

  def test_unknown_kind_raises(self):
    with self.assertRaisesRegex(ValueError, "low_var_kl"):
      kl.kl_penalty(*_inputs(), "k4")


class KlInRewardAndControllerTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_kl_in_reward_matches_verl(self):
    old, ref = _inputs(seed=2, shape=(3, 4))
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    scores = np.zeros_like(old)
    scores[0, 2], scores[1, 0] = 1.0, -1.0
    rewards, current = self.variant(functools.partial(
        kl.kl_in_reward, kind="kl"))(scores, old, ref, mask, 0.05)
    kld = (old - ref) * mask
    np.testing.assert_allclose(rewards, scores - 0.05 * kld, rtol=1e-6,
                               atol=1e-7)
    per_seq = kld.sum(-1) / (mask.sum(-1) + 1e-8)
    np.testing.assert_allclose(current, per_seq.mean(), rtol=1e-5)
    grad = jax.grad(lambda o: jnp.sum(kl.kl_in_reward(
        scores, o, ref, mask, 0.05)[0]))(jnp.asarray(old))
    np.testing.assert_array_equal(grad, 0.0)  # a reward, not a loss

  @chex.variants(with_jit=True, without_jit=True)
  def test_adaptive_controller_hand_computed(self):
    update = self.variant(functools.partial(
        kl.adaptive_kl_update, target_kl=0.1, horizon=10000))
    state = kl.adaptive_kl_init(0.2)
    # KL = 3·target: error clipped to +0.2, n/horizon = 0.0256.
    up = update(state, 0.3, 256)
    self.assertAlmostEqual(float(up.beta), 0.2 * (1 + 0.2 * 0.0256), places=7)
    # KL = 0.95·target: error -0.05.
    down = update(state, 0.095, 1000)
    self.assertAlmostEqual(float(down.beta), 0.2 * (1 - 0.05 * 0.1),
                           places=7)
    self.assertAlmostEqual(float(update(state, 0.1, 1000).beta), 0.2,
                           places=7)

  def test_controller_vmaps_over_target_and_validates(self):
    targets = jnp.array([0.05, 0.1, 0.2])
    betas = jax.vmap(lambda t: kl.adaptive_kl_update(
        kl.adaptive_kl_init(1.0), 0.1, 100, target_kl=t, horizon=100).beta)(
            targets)
    np.testing.assert_allclose(betas, [1.2, 1.0, 0.8], rtol=1e-6)
    with self.assertRaisesRegex(ValueError, "horizon"):
      kl.adaptive_kl_update(kl.adaptive_kl_init(1.0), 0.1, 1, target_kl=0.1,
                            horizon=0)


if __name__ == "__main__":
  absltest.main()
