"""Loss forms vs plain-NumPy re-implementations of the reference semantics.

The NumPy functions below follow entropy_methods.md §2.4 / §5 line by line
(token-mean aggregation) and carry their own hand-derived gradients; the
random Clip-Cov subset is either forced (a single eligible token) or compared
as a set.
"""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_ent.entropy import controllers
from jaxrl_ent.entropy import covariance
from jaxrl_ent.entropy import losses
from jaxrl_ent.entropy import token_stats
from jaxrl_ent.entropy import types


def _batch(seed=0, b=4, t=8, masked=5):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.0, 3.0, (b, t)).astype(np.float32)
  old = (logp + rng.normal(0.0, 0.3, (b, t))).astype(np.float32)
  adv = rng.normal(0.0, 2.0, (b, t)).astype(np.float32)
  ent = rng.uniform(0.0, 2.0, (b, t)).astype(np.float32)
  mask = np.ones((b, t), np.float32)
  mask.flat[rng.choice(b * t, masked, replace=False)] = 0.0
  return logp, old, adv, ent, mask


def _np_cov(logp, adv, v):
  return (adv - adv[v].mean()) * (logp - logp[v].mean())


def np_clip_cov(logp, old, adv, mask, eps_lo, eps_hi, ratio, lb, ub, pick):
  """§2.4 compute_policy_loss_clip_cov; `pick(idx, n)` draws the subset."""
  v = mask.astype(bool)
  r = np.exp(logp - old)
  l1, l2 = -adv * r, -adv * np.clip(r, 1 - eps_lo, 1 + eps_hi)
  clipped = (l2 > l1) & v
  c = _np_cov(logp, adv, v)
  c[~v] = -np.inf
  c[clipped] = -np.inf
  n_sel = max(int(np.floor(ratio * v.sum())), 1)
  elig = np.flatnonzero(v & (c > lb) & (c < ub))
  corr = np.ones_like(adv)
  corr.flat[pick(elig, min(n_sel, len(elig)))] = 0.0
  loss = (np.maximum(l1, l2) * corr * mask).sum() / mask.sum()
  # d max(L1, L2)/d logp: −A r unless the clipped branch is strictly larger.
  grad = np.where(l2 > l1, 0.0, -adv * r) * corr * mask / mask.sum()
  return loss, grad, corr == 0


def np_kl_cov(logp, old, adv, mask, ratio, beta):
  """§2.4 compute_policy_loss_kl_cov (no PPO clip)."""
  v = mask.astype(bool)
  r = np.exp(logp - old)
  loss_t = -adv * r
  grad_t = -adv * r
  c = _np_cov(logp, adv, v)[v]
  n = max(1, int(np.floor(v.sum() * ratio)))
  top = np.argsort(-c)[:n]
  sel = np.zeros(v.sum(), bool)
  sel[top] = True
  sel_bt = np.zeros_like(v)
  sel_bt[v] = sel
  loss_t = loss_t + np.where(sel_bt, beta * np.abs(logp - old), 0.0)
  grad_t = grad_t + np.where(sel_bt, beta * np.sign(logp - old), 0.0)
  return ((loss_t * mask).sum() / mask.sum(), grad_t * mask / mask.sum())


def np_high_entropy(logp, old, adv, ent, mask, rho, eps_lo, eps_hi):
  """§5 high_entropy_mask applied to the clipped surrogate, token-mean."""
  v = mask.astype(bool)
  keep = v & (ent >= np.quantile(ent[v], 1 - rho))
  r = np.exp(logp - old)
  l1, l2 = -adv * r, -adv * np.clip(r, 1 - eps_lo, 1 + eps_hi)
  loss = (np.maximum(l1, l2) * keep).sum() / mask.sum()
  grad = np.where(l2 > l1, 0.0, -adv * r) * keep / mask.sum()
  return loss, grad


class LossFormsTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_clip_cov_forced_single_token_matches_numpy(self):
    logp, old, adv, _, mask = _batch(seed=1)
    # A band that holds exactly one eligible token makes the draw forced.
    v = mask.astype(bool)
    r = np.exp(logp - old)
    ok = v & ~(-adv * np.clip(r, 0.8, 1.2) > -adv * r)
    scores = np.where(ok, _np_cov(logp, adv, v), -np.inf)
    top2 = np.sort(scores.reshape(-1))[-2:]
    lb, ub = float(np.mean(top2)), float(top2[1] + 1.0)
    want, want_grad, want_sel = np_clip_cov(
        logp, old, adv, mask, 0.2, 0.2, 0.1, lb, ub, lambda idx, n: idx[:n])
    self.assertEqual(want_sel.sum(), 1)
    fn = self.variant(jax.value_and_grad(functools.partial(
        losses.clip_cov_loss, ratio=0.1, lb=lb, ub=ub), argnums=1))
    got, grad = fn(jax.random.PRNGKey(0), logp, old, adv, mask)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)

  @parameterized.parameters(0, 1, 2)
  def test_clip_cov_random_subset_as_a_set(self, seed):
    logp, old, adv, _, mask = _batch(seed=2)
    key = jax.random.PRNGKey(seed)
    kwargs = dict(ratio=0.15, lb=0.2, ub=5.0, clip_eps_low=0.2,
                  clip_eps_high=0.28)
    ours = np.asarray(covariance.clip_cov_selection(
        key, logp, old, adv, mask, **kwargs))

    def pick(idx, n):
      # The reference draws n of idx at random: check ours is such a draw.
      self.assertEqual(ours.sum(), n)
      self.assertTrue(set(np.flatnonzero(ours)) <= set(idx))
      return np.flatnonzero(ours)

    want, want_grad, _ = np_clip_cov(logp, old, adv, mask, 0.2, 0.28, 0.15,
                                     0.2, 5.0, pick)
    got, grad = jax.value_and_grad(losses.clip_cov_loss, argnums=1)(
        key, logp, old, adv, mask, **kwargs)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((2e-4, 1.0), (0.2, 0.1))
  def test_kl_cov_matches_numpy(self, ratio, beta):
    logp, old, adv, _, mask = _batch(seed=3)
    want, want_grad = np_kl_cov(logp, old, adv, mask, ratio, beta)
    fn = self.variant(jax.value_and_grad(functools.partial(
        losses.kl_cov_loss, ratio=ratio, coef=beta)))
    got, grad = fn(logp, old, adv, mask)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)

  def test_kl_cov_on_policy_is_plain_pg(self):
    logp, _, adv, _, mask = _batch(seed=3)
    grad = jax.grad(functools.partial(losses.kl_cov_loss, ratio=0.5))(
        logp, logp, adv, mask)
    np.testing.assert_allclose(grad, -adv * mask / mask.sum(), rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_entropy_bonus_matches_numpy(self):
    _, _, _, ent, mask = _batch(seed=4)
    fn = self.variant(jax.value_and_grad(functools.partial(
        losses.entropy_bonus_loss, coef=0.01)))
    got, grad = fn(ent, mask)
    np.testing.assert_allclose(got, -0.01 * (ent * mask).sum() / mask.sum(),
                               rtol=1e-6)
    np.testing.assert_allclose(grad, -0.01 * mask / mask.sum(), rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_high_entropy_matches_numpy(self):
    logp, old, adv, ent, mask = _batch(seed=5)
    want, want_grad = np_high_entropy(logp, old, adv, ent, mask, 0.2, 0.2,
                                      0.28)
    fn = self.variant(jax.value_and_grad(losses.high_entropy_loss,
                                         argnums=(0, 3)))
    got, (grad, grad_ent) = fn(logp, old, adv, ent, mask)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(grad_ent, 0.0)  # H is a selector only

  def test_gradient_is_the_transformed_cotangent(self):
    logp, old, adv, ent, mask = _batch(seed=6)
    # Non-token-mean aggregation: seq-mean-token-mean weights.
    weights = mask / mask.sum(1, keepdims=True) / mask.shape[0]
    grad = jax.grad(functools.partial(losses.kl_cov_loss, ratio=0.2,
                                      weights=weights))(logp, old, adv, mask)
    base = types.TokenGrads(logp=jnp.asarray(-adv * np.exp(logp - old) *
                                             weights),
                            entropy=jnp.zeros_like(logp))
    tx = controllers.kl_cov(ratio=0.2)
    want, _ = tx.update(base, tx.init(None), logp=logp, old_logp=old,
                        advantages=adv, mask=mask, weights=weights)
    np.testing.assert_allclose(grad, want.logp, rtol=1e-5, atol=1e-8)
    del ent

  def test_loss_with_cotangent(self):
    x = jnp.array([1.0, 2.0])
    grads = types.TokenGrads(logp=jnp.array([3.0, -1.0]),
                             entropy=jnp.array([0.5, 0.25]))
    fn = lambda lp, h: losses.loss_with_cotangent(7.0, grads, logp=lp,
                                                  entropy=h)
    value, (g_lp, g_h) = jax.value_and_grad(fn, argnums=(0, 1))(x, 2 * x)
    self.assertEqual(float(value), 7.0)
    np.testing.assert_array_equal(g_lp, grads.logp)
    np.testing.assert_array_equal(g_h, grads.entropy)


if __name__ == "__main__":
  absltest.main()


class OneBackwardPassTest(absltest.TestCase):

  def test_pullback_of_controlled_cotangent_equals_loss_form_grad(self):
    """DESIGN.md §1 steps 1-4 give the gradient of the verl-style loss."""
    b, t, d, v = 2, 6, 4, 11
    k_h, k_w, k_y = jax.random.split(jax.random.PRNGKey(0), 3)
    params = dict(proj=jax.random.normal(k_h, (d, d)),
                  head=jax.random.normal(k_w, (d, v)))
    feats = jax.random.normal(k_y, (b, t, d))
    tokens = jax.random.randint(k_y, (b, t), 0, v)
    _, old, adv, _, mask = _batch(seed=8, b=b, t=t, masked=2)

    def stats_fn(p):
      return token_stats.token_stats(jnp.tanh(feats @ p["proj"]), p["head"],
                                     tokens, token_chunk=4, vocab_chunk=4)

    old = np.asarray(stats_fn(params).logp) + 0.1 * old  # a later mini-batch
    weights = mask / mask.sum()

    @jax.jit
    def both(p):
      stats, pullback = jax.vjp(stats_fn, p)
      g_logp = jax.grad(lambda lp: jnp.sum(
          weights * -adv * jnp.exp(lp - old)))(stats.logp)
      grads = types.TokenGrads(logp=g_logp, entropy=jnp.zeros_like(g_logp))
      tx = controllers.kl_cov(ratio=0.25)
      grads, _ = tx.update(grads, tx.init(None), logp=stats.logp,
                           old_logp=old, advantages=adv, mask=mask,
                           weights=weights)
      zeros = jnp.zeros_like(g_logp)
      (got,) = pullback(types.TokenStats(logp=grads.logp,
                                         entropy=grads.entropy, m2=zeros,
                                         m3=zeros))
      want = jax.grad(lambda q: losses.kl_cov_loss(
          stats_fn(q).logp, old, adv, mask, ratio=0.25))(p)
      return got, want

    got, want = both(params)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)
