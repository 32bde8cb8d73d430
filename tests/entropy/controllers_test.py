"""Tests for the optax entropy controllers over token-space cotangents."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrl_ent.entropy import controllers
from jaxrl_ent.entropy import covariance
from jaxrl_ent.entropy import schedules
from jaxrl_ent.entropy import types


def _context(seed=0, b=4, t=8, masked=5):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.0, 3.0, (b, t)).astype(np.float32)
  mask = np.ones((b, t), np.float32)
  mask.flat[rng.choice(b * t, masked, replace=False)] = 0.0
  m3 = rng.uniform(0.0, 0.5, (b, t)).astype(np.float32)
  return dict(
      logp=logp,
      old_logp=(logp + rng.normal(0.0, 0.3, (b, t))).astype(np.float32),
      advantages=rng.normal(0.0, 2.0, (b, t)).astype(np.float32),
      mask=mask,
      entropy=rng.uniform(0.0, 2.0, (b, t)).astype(np.float32),
      m2=rng.normal(0.0, 0.1, (b, t)).astype(np.float32),
      m3=m3,
      weights=mask / mask.sum(),
      key=jax.random.PRNGKey(seed),
  )


def _grads(seed=1, shape=(4, 8)):
  rng = np.random.default_rng(seed)
  g = rng.normal(0.0, 1.0, (2,) + shape).astype(np.float32)
  return types.TokenGrads(logp=jnp.asarray(g[0]), entropy=jnp.asarray(g[1]))


def _run(transform, grads, ctx, steps=1):
  state = transform.init(None)
  for _ in range(steps):
    out, state = transform.update(grads, state, **ctx)
  return out, state


class EntropyBonusTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_adds_minus_coef_times_weights(self):
    ctx, grads = _context(), _grads()
    tx = controllers.entropy_bonus(0.01)
    out, state = self.variant(functools.partial(tx.update, **ctx))(
        grads, tx.init(None))
    np.testing.assert_allclose(out.entropy,
                               grads.entropy - 0.01 * ctx["weights"], rtol=1e-6)
    np.testing.assert_array_equal(out.logp, grads.logp)
    self.assertEqual(int(state.count), 1)
    np.testing.assert_allclose(state.coef, 0.01)
    # Without weights the token-mean of the mask is assumed.
    default, _ = tx.update(grads, tx.init(None), mask=ctx["mask"])
    np.testing.assert_allclose(default.entropy, out.entropy, rtol=1e-6)
    # Masked tokens (weight 0) are untouched.
    masked = ctx["mask"] == 0
    np.testing.assert_array_equal(np.asarray(out.entropy)[masked],
                                  np.asarray(grads.entropy)[masked])

  def test_schedule_is_evaluated_at_count(self):
    sched = schedules.inverse_power(0.1, tau=2.0, power=1.0)
    _, state = _run(controllers.entropy_bonus(sched), _grads(), _context(), 3)
    self.assertEqual(int(state.count), 3)
    np.testing.assert_allclose(state.coef, 0.1 / (1 + 2 / 2.0), rtol=1e-6)

  def test_vmap_over_coefficient(self):
    ctx, grads = _context(), _grads()
    coefs = jnp.array([0.0, 0.1, 0.3])

    def apply(c):
      tx = controllers.entropy_bonus(c)
      return tx.update(grads, tx.init(None), **ctx)[0].entropy

    out = jax.jit(jax.vmap(apply))(coefs)
    for i, c in enumerate([0.0, 0.1, 0.3]):
      np.testing.assert_allclose(out[i], grads.entropy - c * ctx["weights"],
                                 rtol=1e-6)


class ClipCovTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_zeroes_exactly_the_selection(self):
    ctx, grads = _context(seed=2), _grads()
    tx = controllers.clip_cov(ratio=0.1, lb=0.2)
    out, state = self.variant(functools.partial(tx.update, **ctx))(
        grads, tx.init(None))
    sel = np.asarray(covariance.clip_cov_selection(
        ctx["key"], ctx["logp"], ctx["old_logp"], ctx["advantages"],
        ctx["mask"], ratio=0.1, lb=0.2))
    self.assertGreater(sel.sum(), 1)
    np.testing.assert_array_equal(np.asarray(out.logp)[sel], 0.0)
    np.testing.assert_array_equal(np.asarray(out.logp)[~sel],
                                  np.asarray(grads.logp)[~sel])
    np.testing.assert_array_equal(out.entropy, grads.entropy)
    np.testing.assert_allclose(state.frac_selected,
                               sel.sum() / ctx["mask"].sum())

  def test_tiny_ratio_still_selects_one_token(self):
    ctx, grads = _context(seed=2), _grads()
    out, state = _run(controllers.clip_cov(ratio=1e-6, lb=0.2), grads, ctx)
    self.assertEqual(int(np.sum(np.asarray(out.logp) != grads.logp)), 1)
    np.testing.assert_allclose(state.frac_selected, 1 / ctx["mask"].sum())

  def test_vmap_over_ratio(self):
    ctx, grads = _context(seed=2), _grads()

    def zeroed(r):
      tx = controllers.clip_cov(ratio=r, lb=0.2)
      return jnp.sum(tx.update(grads, tx.init(None), **ctx)[0].logp == 0.0)

    counts = jax.vmap(zeroed)(jnp.array([1e-6, 0.1, 0.15]))
    np.testing.assert_array_equal(counts, [1, 2, 4])  # min(n_sel, #eligible)


class KLCovTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_adds_signed_penalty_on_top_k(self):
    ctx, grads = _context(seed=3), _grads()
    tx = controllers.kl_cov(ratio=0.2, coef=0.5)
    out, state = self.variant(functools.partial(tx.update, **ctx))(
        grads, tx.init(None))
    sel = np.asarray(covariance.kl_cov_selection(
        ctx["logp"], ctx["advantages"], ctx["mask"], ratio=0.2))
    self.assertEqual(sel.sum(), int(0.2 * ctx["mask"].sum()))
    push = 0.5 * np.sign(ctx["logp"] - ctx["old_logp"]) * ctx["weights"]
    np.testing.assert_allclose(out.logp, grads.logp + np.where(sel, push, 0.0),
                               rtol=1e-6)
    np.testing.assert_array_equal(out.entropy, grads.entropy)
    np.testing.assert_allclose(state.frac_selected,
                               sel.sum() / ctx["mask"].sum())
    # Every selected token moved off the rollout: all penalties are active.
    np.testing.assert_allclose(state.frac_active, state.frac_selected)

  def test_on_policy_has_no_effect(self):
    ctx, grads = _context(seed=3), _grads()
    ctx["old_logp"] = ctx["logp"]
    out, state = _run(controllers.kl_cov(ratio=0.5, coef=10.0), grads, ctx)
    np.testing.assert_array_equal(out.logp, grads.logp)
    self.assertGreater(float(state.frac_selected), 0.4)
    self.assertEqual(float(state.frac_active), 0.0)

  def test_frac_active_counts_selected_tokens_that_moved(self):
    ctx, grads = _context(seed=4), _grads()
    sel = np.asarray(covariance.kl_cov_selection(
        ctx["logp"], ctx["advantages"], ctx["mask"], ratio=0.5))
    # Half of the selected tokens back on-policy.
    on = np.zeros_like(sel)
    on.flat[np.flatnonzero(sel)[::2]] = True
    ctx["old_logp"] = np.where(on, ctx["logp"], ctx["old_logp"])
    _, state = _run(controllers.kl_cov(ratio=0.5), grads, ctx)
    np.testing.assert_allclose(state.frac_active,
                               (sel & ~on).sum() / ctx["mask"].sum())

  def test_tiny_ratio_selects_one_and_vmap_over_coef(self):
    ctx, grads = _context(seed=3), _grads()

    def apply(c):
      tx = controllers.kl_cov(ratio=1e-6, coef=c)
      return tx.update(grads, tx.init(None), **ctx)[0].logp

    out = jax.vmap(apply)(jnp.array([1.0, 2.0]))
    diff = np.asarray(out) - np.asarray(grads.logp)
    self.assertEqual(int(np.sum(diff[0] != 0)), 1)
    np.testing.assert_allclose(diff[1], 2.0 * diff[0], rtol=1e-6)


class HighEntropyTokensTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_keeps_only_forking_tokens(self):
    ctx, grads = _context(seed=4), _grads()
    tx = controllers.high_entropy_tokens(0.2)
    out, state = self.variant(functools.partial(tx.update, **ctx))(
        grads, tx.init(None))
    valid = ctx["mask"] > 0
    tau = np.quantile(ctx["entropy"][valid], 0.8)
    keep = valid & (ctx["entropy"] >= tau)
    np.testing.assert_allclose(state.threshold, tau, rtol=1e-6)
    np.testing.assert_array_equal(out.logp, np.where(keep, grads.logp, 0.0))
    np.testing.assert_array_equal(out.entropy, grads.entropy)
    np.testing.assert_allclose(state.frac_kept, keep.sum() / valid.sum())

  def test_vmap_over_quantile(self):
    ctx, grads = _context(seed=4, masked=0), _grads()

    def kept(q):
      tx = controllers.high_entropy_tokens(q)
      return tx.update(grads, tx.init(None), **ctx)[1].frac_kept

    np.testing.assert_allclose(jax.vmap(kept)(jnp.array([0.25, 0.5, 1.0])),
                               [0.25, 0.5, 1.0], atol=1 / 32)


class AdaptiveEntropyTest(parameterized.TestCase):

  def _ctx_with_entropy(self, value):
    ctx = _context()
    ctx["old_logp"] = np.full_like(ctx["logp"], -value)  # e = −mean(old_logp)
    return ctx

  @chex.variants(with_jit=True, without_jit=True)
  def test_bang_bang_rises_below_target_and_respects_bounds(self):
    grads = _grads()
    ctx = self._ctx_with_entropy(0.1)  # below the 0.2 target
    tx = controllers.adaptive_entropy(0.2, delta=2e-3, coef_max=5e-3)
    update = self.variant(functools.partial(tx.update, **ctx))
    state, applied = tx.init(None), []
    for _ in range(4):
      out, state = update(grads, state)
      applied.append(float(state.applied_coef))
      np.testing.assert_allclose(
          out.entropy, grads.entropy - state.applied_coef * ctx["weights"],
          rtol=1e-6)
    # c_0 = 0 is applied first; c rises by Δ per step and clips at 5e-3.
    np.testing.assert_allclose(applied, [0.0, 2e-3, 4e-3, 5e-3], rtol=1e-6)
    np.testing.assert_allclose(state.coef, 5e-3)
    np.testing.assert_allclose(state.measured_entropy, 0.1, rtol=1e-6)
    # Above target: no bonus, coefficient falls and clips at coef_min.
    above = self._ctx_with_entropy(0.5)
    for _ in range(4):
      out, state = tx.update(grads, state, **above)
      self.assertEqual(float(state.applied_coef), 0.0)
      np.testing.assert_array_equal(out.entropy, grads.entropy)
    np.testing.assert_allclose(state.coef, 0.0, atol=1e-9)

  def test_lagrangian_moves_log_alpha_by_the_entropy_gap(self):
    grads = _grads()
    ctx = _context()
    mean_h = ctx["entropy"][ctx["mask"] > 0].mean()
    tx = controllers.adaptive_entropy(
        1.5, rule="lagrangian", lr=0.5, coef_init=1e-3, coef_max=1.0,
        measure="entropy")
    _, state = _run(tx, grads, ctx)
    # log α ← log α − λ(H − H̄): rises when H < H̄.
    np.testing.assert_allclose(state.coef, 1e-3 * np.exp(-0.5 * (mean_h - 1.5)),
                               rtol=1e-5)
    np.testing.assert_allclose(state.applied_coef, 1e-3, rtol=1e-6)
    self.assertGreater(float(state.coef), 1e-3)  # mean H ≈ 1 < 1.5
    _, state = _run(tx, grads, dict(ctx, measured_entropy=3.0), steps=40)
    np.testing.assert_allclose(state.coef, 0.0, atol=1e-9)

  def test_vmap_over_target(self):
    grads = _grads()
    ctx = self._ctx_with_entropy(0.3)

    def coef_after_one(target):
      tx = controllers.adaptive_entropy(target, coef_init=1e-3)
      return tx.update(grads, tx.init(None), **ctx)[1].coef

    np.testing.assert_allclose(jax.vmap(coef_after_one)(jnp.array([0.2, 0.4])),
                               [1e-3 - 1e-4, 1e-3 + 1e-4], rtol=1e-5)


class TrackerAndChainTest(parameterized.TestCase):

  def test_tracker_is_identity_and_records_prediction(self):
    ctx, grads = _context(seed=5), _grads()
    out, state = _run(controllers.track_entropy_dynamics(lr=0.5), grads, ctx)
    chex.assert_trees_all_equal(out, grads)
    valid = ctx["mask"] > 0
    pi_y = np.exp(ctx["logp"])
    dh = 0.5 * (np.asarray(grads.logp) * (pi_y * (ctx["logp"] + ctx["entropy"])
                                         - ctx["m2"])
                - np.asarray(grads.entropy) * ctx["m3"])
    np.testing.assert_allclose(state.predicted_change, dh[valid].mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(
        state.covariance,
        np.cov(ctx["logp"][valid], ctx["advantages"][valid], bias=True)[0, 1],
        rtol=1e-5)
    self.assertEqual(int(state.num_tokens), valid.sum())

  def test_chain_equals_sequential_application_under_jit(self):
    ctx, grads = _context(seed=6), _grads()
    parts = [controllers.clip_cov(ratio=0.1, lb=0.2),
             controllers.kl_cov(ratio=0.1),
             controllers.high_entropy_tokens(0.5),
             controllers.entropy_bonus(0.01)]
    chain = optax.chain(*parts)
    out, state = jax.jit(functools.partial(chain.update, **ctx))(
        grads, chain.init(None))
    want = grads
    for part in parts:
      want, _ = part.update(want, part.init(None), **ctx)
    chex.assert_trees_all_close(out, want, rtol=1e-6)
    self.assertEqual([int(s.count) for s in state], [1, 1, 1, 1])

  def test_masked_tokens_change_nothing(self):
    ctx, grads = _context(seed=8), _grads()
    chain = optax.chain(
        controllers.clip_cov(ratio=0.1, lb=0.2), controllers.kl_cov(0.1),
        controllers.high_entropy_tokens(0.3),
        controllers.adaptive_entropy(1.0, coef_init=1e-3),
        controllers.track_entropy_dynamics())
    update = jax.jit(functools.partial(chain.update, state=chain.init(None)))
    out, state = update(grads, **ctx)
    masked = ctx["mask"] == 0
    junk = dict(ctx)
    for name in ("logp", "old_logp", "advantages", "entropy", "m2", "m3"):
      junk[name] = np.where(masked, 37.0, ctx[name])
    junk_out, junk_state = update(grads, **junk)
    for got, want in zip(jax.tree.leaves(junk_out), jax.tree.leaves(out)):
      np.testing.assert_allclose(np.asarray(got)[~masked],
                                 np.asarray(want)[~masked], rtol=1e-6)
    chex.assert_trees_all_close(junk_state, state, rtol=1e-6)

  def test_attribution_by_source_sums_and_is_exact(self):
    ctx, grads = _context(seed=7), _grads()
    chain = controllers.attributed_chain(
        ("kl_cov", controllers.kl_cov(ratio=0.2)),
        ("bonus", controllers.entropy_bonus(0.05)), lr=0.1)
    out, state = jax.jit(functools.partial(chain.update, **ctx))(
        grads, chain.init(None))
    by_source = controllers.entropy_change_by_source(state)
    self.assertEqual(list(by_source), ["input", "kl_cov", "bonus", "total"])
    np.testing.assert_allclose(
        sum(by_source[k] for k in ("input", "kl_cov", "bonus")),
        by_source["total"], rtol=1e-5)
    # The bonus adds g_H = −α w, i.e. ΔH_t = +η α w_t m3_t (§1.5).
    valid = ctx["mask"] > 0
    want = (0.1 * 0.05 * ctx["weights"] * ctx["m3"])[valid].mean()
    np.testing.assert_allclose(by_source["bonus"], want, rtol=1e-4)
    _, alone = _run(controllers.track_entropy_dynamics(0.1), out, ctx)
    np.testing.assert_allclose(by_source["total"], alone.predicted_change,
                               rtol=1e-6)


class ValidationTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("bonus_coef", lambda: controllers.entropy_bonus(-1.0), "coef"),
      ("clip_ratio", lambda: controllers.clip_cov(ratio=0.0), "ratio"),
      ("clip_band", lambda: controllers.clip_cov(lb=5.0, ub=1.0), "lb"),
      ("clip_eps", lambda: controllers.clip_cov(clip_eps_low=-0.1),
       "clip_eps_low"),
      ("kl_ratio", lambda: controllers.kl_cov(ratio=1.5), "ratio"),
      ("kl_coef", lambda: controllers.kl_cov(coef=float("nan")), "coef"),
      ("quantile", lambda: controllers.high_entropy_tokens(0.0), "quantile"),
      ("rule", lambda: controllers.adaptive_entropy(0.2, rule="pid"), "rule"),
      ("target", lambda: controllers.adaptive_entropy(-0.2), "target"),
      ("bounds", lambda: controllers.adaptive_entropy(
          0.2, coef_min=1.0, coef_max=0.1), "coef_min"),
      ("alpha0", lambda: controllers.adaptive_entropy(
          0.2, rule="lagrangian", coef_init=0.0), "coef_init"),
      ("measure", lambda: controllers.adaptive_entropy(0.2, measure="x"),
       "measure"),
      ("tracker_lr", lambda: controllers.track_entropy_dynamics(0.0), "lr"),
  )
  def test_bad_hyperparameters_raise_naming_the_argument(self, make, name):
    with self.assertRaisesRegex(ValueError, name):
      make()


if __name__ == "__main__":
  absltest.main()
