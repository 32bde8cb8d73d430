"""Tests for the STEER and AEnt controllers (entropy/reweighting.py)."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrl_ent.entropy import controllers
from jaxrl_ent.entropy import dynamics
from jaxrl_ent.entropy import reweighting
from jaxrl_ent.entropy import schedules
from jaxrl_ent.entropy import types


def _context(seed=0, b=4, t=8, v=6, masked=5, adv_scale=2.0):
  """Per-token context with stats consistent with real logits (NumPy)."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(0.0, 2.0, (b, t, v))
  logp_v = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  pi_v = np.exp(logp_v)
  ent = -(pi_v * logp_v).sum(-1)
  y = rng.integers(0, v, (b, t))
  logp = np.take_along_axis(logp_v, y[..., None], -1)[..., 0]
  centred = logp_v + ent[..., None]
  mask = np.ones((b, t), np.float32)
  mask.flat[rng.choice(b * t, masked, replace=False)] = 0.0
  f32 = lambda x: np.asarray(x, np.float32)
  return dict(
      logp=f32(logp),
      old_logp=f32(logp + rng.normal(0.0, 0.2, (b, t))),
      advantages=f32(rng.normal(0.0, adv_scale, (b, t))),
      mask=mask,
      entropy=f32(ent),
      m2=f32((pi_v**2 * centred).sum(-1)),
      m3=f32((pi_v**2 * centred**2).sum(-1)),
      weights=mask / mask.sum(),
  )


def _grads(seed=1, shape=(4, 8)):
  rng = np.random.default_rng(seed)
  g = rng.normal(0.0, 1.0, (2,) + shape).astype(np.float32)
  return types.TokenGrads(logp=jnp.asarray(g[0]), entropy=jnp.asarray(g[1]))


def _np_reference_score(ctx):
  """|A/π_old · π(1−π)(log π + H)|, the STEER reference formula."""
  pi, pi_old = np.exp(ctx["logp"]), np.exp(ctx["old_logp"])
  return np.abs(ctx["advantages"] / pi_old * pi * (1 - pi)
                * (ctx["logp"] + ctx["entropy"]))


def _np_exact_score(ctx):
  """|w[π_y(log π_y + H) − m2]|, w = A·ratio (entropy_methods.md §6)."""
  w = ctx["advantages"] * np.exp(ctx["logp"] - ctx["old_logp"])
  pi = np.exp(ctx["logp"])
  return np.abs(w * (pi * (ctx["logp"] + ctx["entropy"]) - ctx["m2"]))


def _np_steer_weights(omega, valid, w_min, w_max, mode):
  top = omega[valid].max()
  if mode == "exponential":
    k = -np.log(w_min) / max(top, 0.02)
    lam = np.clip(np.exp(-k * omega), w_min, 1.0)
  else:
    lam = w_max - (w_max - w_min) * omega / top
  return np.where(valid, lam, 1.0)


class SteerTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      ("exponential", "exponential", 0.8, 1.0),
      ("exponential_low", "exponential", 0.3, 1.0),
      ("linear", "linear", 0.8, 1.0),
      ("linear_below_one", "linear", 0.5, 0.9),
  )
  def test_reference_weights_match_numpy(self, mode, w_min, w_max):
    ctx, grads = _context(), _grads()
    valid = ctx["mask"] > 0
    omega = _np_reference_score(ctx)
    self.assertGreater(omega[valid].max(), 0.02)
    lam = _np_steer_weights(omega, valid, w_min, w_max, mode)
    tx = reweighting.steer(w_min, w_max, mode=mode)
    out, state = self.variant(functools.partial(tx.update, **ctx))(
        grads, tx.init(None))
    np.testing.assert_allclose(out.logp, lam * np.asarray(grads.logp),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(out.entropy, grads.entropy)
    np.testing.assert_array_equal(np.asarray(out.logp)[~valid],
                                  np.asarray(grads.logp)[~valid])
    got = np.asarray(out.logp)[valid] / np.asarray(grads.logp)[valid]
    self.assertTrue(np.all(got >= w_min * (1 - 1e-6)))
    self.assertTrue(np.all(got <= (1.0 if mode == "exponential" else w_max)
                           * (1 + 1e-6)))
    # The largest-|Ω| valid token gets exactly w_min.
    top = np.argmax(np.where(valid, omega, -1.0))
    np.testing.assert_allclose(lam.flat[top], w_min, rtol=1e-6)
    np.testing.assert_allclose(got.min(), w_min, rtol=1e-5)
    self.assertEqual(int(state.count), 1)
    np.testing.assert_allclose(state.mean_weight, lam[valid].mean(), rtol=1e-5)
    np.testing.assert_allclose(state.min_weight, w_min, rtol=1e-5)
    np.testing.assert_allclose(state.max_score, omega[valid].max(), rtol=1e-5)

  def test_small_scores_are_measured_against_the_floor(self):
    ctx, grads = _context(adv_scale=1e-3), _grads()
    valid = ctx["mask"] > 0
    omega = _np_reference_score(ctx)
    self.assertLess(omega[valid].max(), 0.02)
    tx = reweighting.steer(0.8)
    out, state = tx.update(grads, tx.init(None), **ctx)
    want_min = 0.8 ** (omega[valid].max() / 0.02)
    np.testing.assert_allclose(state.min_weight, want_min, rtol=1e-5)
    self.assertGreater(float(state.min_weight), 0.8)
    np.testing.assert_allclose(
        out.logp, _np_steer_weights(omega, valid, 0.8, 1.0, "exponential")
        * np.asarray(grads.logp), rtol=1e-5, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_exact_score_follows_token_entropy_change(self):
    ctx, grads = _context(seed=3), _grads()
    valid = ctx["mask"] > 0
    omega = _np_exact_score(ctx)
    tx = reweighting.steer(0.5, score="exact")
    out, _ = self.variant(functools.partial(tx.update, **ctx))(
        grads, tx.init(None))
    lam = np.asarray(out.logp) / np.asarray(grads.logp)
    np.testing.assert_allclose(
        lam, _np_steer_weights(omega, valid, 0.5, 1.0, "exponential"),
        rtol=1e-5)
    # Ordering: larger |ΔH_t| of the unaggregated surrogate → smaller weight.
    stats = types.TokenStats(*(ctx[k] for k in ("logp", "entropy", "m2", "m3")))
    w = ctx["advantages"] * np.exp(ctx["logp"] - ctx["old_logp"])
    dh = np.abs(np.asarray(dynamics.token_entropy_change(
        stats, types.TokenGrads(logp=-w, entropy=np.zeros_like(w)))))
    np.testing.assert_allclose(dh, omega, rtol=1e-4, atol=1e-7)
    order = np.argsort(-dh[valid], kind="stable")
    self.assertTrue(np.all(np.diff(lam[valid][order]) >= -1e-6))
    # The reference score ranks tokens differently (§6: no π_y, no m2).
    ref = _np_reference_score(ctx)[valid]
    self.assertFalse(np.array_equal(np.argsort(ref), np.argsort(dh[valid])))

  def test_exact_score_needs_moments(self):
    ctx = _context()
    del ctx["m2"], ctx["m3"]
    tx = reweighting.steer(score="exact")
    with self.assertRaisesRegex(ValueError, "m2"):
      tx.update(_grads(), tx.init(None), **ctx)

  def test_masked_junk_changes_nothing(self):
    ctx, grads = _context(seed=5), _grads()
    masked = ctx["mask"] == 0
    tx = reweighting.steer(0.6, score="exact")
    update = jax.jit(functools.partial(tx.update, state=tx.init(None)))
    out, state = update(grads, **ctx)
    junk = dict(ctx)
    for name in ("logp", "old_logp", "advantages", "entropy", "m2", "m3"):
      junk[name] = np.where(masked, 37.0, ctx[name]).astype(np.float32)
    junk_out, junk_state = update(grads, **junk)
    chex.assert_trees_all_close(junk_out, out, rtol=1e-6)
    chex.assert_trees_all_close(junk_state, state, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.logp)[masked],
                                  np.asarray(grads.logp)[masked])

  def test_vmap_over_w_min_and_schedule(self):
    ctx, grads = _context(), _grads()
    valid = ctx["mask"] > 0
    omega = _np_reference_score(ctx)

    def apply(w_min):
      tx = reweighting.steer(w_min)
      return tx.update(grads, tx.init(None), **ctx)[0].logp

    w_mins = [0.5, 0.8, 1.0]
    out = jax.jit(jax.vmap(apply))(jnp.array(w_mins))
    for i, w_min in enumerate(w_mins):
      want = _np_steer_weights(omega, valid, w_min, 1.0, "exponential")
      np.testing.assert_allclose(out[i], want * np.asarray(grads.logp),
                                 rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out[2], grads.logp, rtol=1e-6)
    tx = reweighting.steer(schedules.linear(1.0, 0.5, 2))
    state = tx.init(None)
    for _ in range(3):
      _, state = tx.update(grads, state, **ctx)
    np.testing.assert_allclose(state.min_weight, 0.5, rtol=1e-5)


class AEntTest(parameterized.TestCase):

  def _ctx_with_entropy(self, value):
    ctx = _context()
    ctx["entropy"] = np.where(ctx["mask"] > 0, value, 9.0).astype(np.float32)
    return ctx

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      ("above_band_falls", 0.53, 1e-3 - 0.1 * 0.3),
      ("below_band_rises", 0.01, 1e-3 + 0.1 * 0.04),
      ("inside_band_holds", 0.1, 1e-3),
  )
  def test_dead_band_and_bonus(self, h, want_coef):
    grads, ctx = _grads(), self._ctx_with_entropy(h)
    tx = reweighting.aent(coef_init=1e-3, lr=0.1, coef_min=0.0,
                          coef_max=1.0)
    out, state = self.variant(functools.partial(tx.update, **ctx))(
        grads, tx.init(None))
    np.testing.assert_allclose(out.entropy,
                               grads.entropy - 1e-3 * ctx["weights"],
                               rtol=1e-6)
    np.testing.assert_array_equal(out.logp, grads.logp)
    np.testing.assert_allclose(state.applied_coef, 1e-3, rtol=1e-6)
    np.testing.assert_allclose(state.measured_entropy, h, rtol=1e-6)
    np.testing.assert_allclose(state.coef, max(want_coef, 0.0), rtol=1e-5,
                               atol=1e-9)
    # The next call applies the updated coefficient.
    out, _ = self.variant(functools.partial(tx.update, **ctx))(grads, state)
    np.testing.assert_allclose(
        out.entropy, grads.entropy - state.coef * ctx["weights"], rtol=1e-5)

  def test_clipped_to_bounds_and_warmup(self):
    grads = _grads()
    tx = reweighting.aent(lr=1e-2, warmup_steps=2)  # README bounds
    state = tx.init(None)
    coefs = []
    for _ in range(4):
      _, state = tx.update(grads, state, **self._ctx_with_entropy(1.0))
      coefs.append(float(state.coef))
    # Frozen at c_0 = 2e-4 for two calls, then 2e-4 − 1e-2·0.77 clips to 1e-5.
    np.testing.assert_allclose(coefs, [2e-4, 2e-4, 1e-5, 1e-5], rtol=1e-5)
    for _ in range(3):
      _, state = tx.update(grads, state, **self._ctx_with_entropy(0.0))
    np.testing.assert_allclose(state.coef, 1e-5 + 3 * 1e-2 * 0.05, rtol=1e-5)
    for _ in range(10):
      _, state = tx.update(grads, state, **self._ctx_with_entropy(-5.0))
    np.testing.assert_allclose(state.coef, 3e-3, rtol=1e-6)
    # coef_init outside the bounds is clipped at init.
    np.testing.assert_allclose(reweighting.aent(coef_init=1.0).init(None).coef,
                               3e-3)

  def test_measured_entropy_override_and_default_weights(self):
    grads, ctx = _grads(), self._ctx_with_entropy(0.1)
    tx = reweighting.aent(coef_init=1e-3, lr=0.01)
    # The scalar override wins over the masked mean of `entropy` (0.1).
    out, state = tx.update(grads, tx.init(None), mask=ctx["mask"],
                           entropy=ctx["entropy"], measured_entropy=0.28)
    np.testing.assert_allclose(state.measured_entropy, 0.28, rtol=1e-6)
    np.testing.assert_allclose(state.coef, 1e-3 - 0.01 * 0.05, rtol=1e-5)
    # Without `weights`, token-mean of the mask is used.
    np.testing.assert_allclose(out.entropy,
                               grads.entropy - 1e-3 * ctx["weights"],
                               rtol=1e-6)

  def test_vmap_over_coefficients(self):
    grads, ctx = _grads(), self._ctx_with_entropy(0.3)

    def apply(c0, h_high):
      tx = reweighting.aent(coef_init=c0, lr=1e-3, h_high=h_high)
      out, state = tx.update(grads, tx.init(None), **ctx)
      return out.entropy, state.coef

    c0s, highs = jnp.array([1e-4, 1e-3, 2e-3]), jnp.array([0.23, 0.5, 0.23])
    ent, coef = jax.jit(jax.vmap(apply))(c0s, highs)
    for i in range(3):
      np.testing.assert_allclose(ent[i], grads.entropy - c0s[i]
                                 * ctx["weights"], rtol=1e-6)
    step = [1e-3 * (0.3 - 0.23), 0.0, 1e-3 * (0.3 - 0.23)]
    np.testing.assert_allclose(coef, np.maximum(np.asarray(c0s) - step, 1e-5),
                               rtol=1e-5)


class CompositionTest(parameterized.TestCase):

  def test_chain_and_attributed_chain(self):
    ctx, grads = _context(seed=7), _grads()
    parts = [reweighting.steer(0.7), controllers.kl_cov(ratio=0.2),
             reweighting.aent(coef_init=1e-3)]
    chain = optax.chain(*parts)
    out, state = jax.jit(functools.partial(chain.update, **ctx))(
        grads, chain.init(None))
    want = grads
    for part in parts:
      want, _ = part.update(want, part.init(None), **ctx)
    chex.assert_trees_all_close(out, want, rtol=1e-6)
    self.assertEqual([int(s.count) for s in state], [1, 1, 1])
    named = controllers.attributed_chain(
        ("steer", reweighting.steer(0.7)), ("aent", reweighting.aent()),
        lr=0.1)
    named_out, named_state = jax.jit(functools.partial(named.update, **ctx))(
        grads, named.init(None))
    by_source = controllers.entropy_change_by_source(named_state)
    self.assertEqual(list(by_source), ["input", "steer", "aent", "total"])
    np.testing.assert_allclose(
        sum(by_source[k] for k in ("input", "steer", "aent")),
        by_source["total"], rtol=1e-5, atol=1e-9)
    self.assertGreater(float(by_source["aent"]), 0.0)  # bonus raises H
    np.testing.assert_allclose(named_out.logp,
                               parts[0].update(grads, parts[0].init(None),
                                               **ctx)[0].logp, rtol=1e-6)


class ValidationTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("w_min_zero", lambda: reweighting.steer(w_min=0.0), "w_min"),
      ("w_min_big", lambda: reweighting.steer(w_min=1.5), "w_min"),
      ("w_order", lambda: reweighting.steer(0.9, 0.8), "w_min"),
      ("w_max", lambda: reweighting.steer(w_max=float("nan")), "w_max"),
      ("mode", lambda: reweighting.steer(mode="step"), "mode"),
      ("score", lambda: reweighting.steer(score="approx"), "score"),
      ("coef_init", lambda: reweighting.aent(coef_init=-1.0), "coef_init"),
      ("lr", lambda: reweighting.aent(lr=-1e-3), "lr"),
      ("h_low", lambda: reweighting.aent(h_low=-0.1), "h_low"),
      ("band", lambda: reweighting.aent(h_low=0.3, h_high=0.2), "h_low"),
      ("bounds", lambda: reweighting.aent(coef_min=1e-2), "coef_min"),
      ("coef_max", lambda: reweighting.aent(coef_max=float("inf")),
       "coef_max"),
      ("warmup", lambda: reweighting.aent(warmup_steps=-1), "warmup_steps"),
      ("warmup_float", lambda: reweighting.aent(warmup_steps=1.5),
       "warmup_steps"),
  )
  def test_bad_hyperparameters_raise_naming_the_argument(self, make, name):
    with self.assertRaisesRegex(ValueError, name):
      make()


if __name__ == "__main__":
  absltest.main()
