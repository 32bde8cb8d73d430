"""Exact first-order ΔH of a realised step (entropy/exact_dynamics.py), against
independent references: the tabular formula on a logit table, a float64
finite difference on a tiny LM, the O(η²) error order, and the per-source
split of the real update summing to its total."""

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jaxrl_ent import models
from jaxrl_ent.entropy import covariance
from jaxrl_ent.entropy import dynamics
from jaxrl_ent.entropy import exact_dynamics
from jaxrl_ent.entropy import token_stats
from jaxrl_ent.entropy import types
from jaxrl_ent.rl import hparams as hparams_lib
from jaxrl_ent.rl import state as state_lib
from jaxrl_ent.rl import train_step as ts
from jaxrl_ent.rl import update as update_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "rl"))
import update_test  # noqa: E402  (tiny model, rollout batch, base hparams)

N, V = 12, 7


def _table_stats(table_nv, tokens_n):
  # hidden = I: the logits of token t are row t of the table (free params).
  return token_stats.token_stats(jnp.eye(N), table_nv, tokens_n,
                                 token_chunk=4, vocab_chunk=3)


class TabularTest(absltest.TestCase):

  def test_sgd_on_a_logit_table_equals_the_tabular_formula(self):
    """Reference: `dynamics.token_entropy_change` (tabular, per token)."""
    rng = np.random.default_rng(0)
    table = jnp.asarray(rng.normal(size=(N, V)) * 2, jnp.float32)
    tokens = jnp.asarray(rng.integers(0, V, N), jnp.int32)
    adv = jnp.asarray(rng.normal(size=N), jnp.float32)
    mask = jnp.asarray(rng.random(N) > 0.2, jnp.int32)
    w = mask / jnp.sum(mask)
    alpha, lr = 0.3, 0.05
    # L = Σ_t w_t (−A_t logp_t − α H_t): cotangent g_l = −w A, g_H = −α w.
    stats, pullback = jax.vjp(lambda t: _table_stats(t, tokens), table)
    g_l, g_h = -w * adv, -alpha * w
    zeros = jnp.zeros(N)
    (grad,) = pullback(types.TokenStats(g_l, g_h, zeros, zeros))
    acc = exact_dynamics.init_attribution(table, None, 1)
    acc = exact_dynamics.sgd_step_by_source(
        acc, grad[None], table, lr=lr, weight_decay=0.0, c=1.0)
    mean, per_token = exact_dynamics.entropy_jvp(
        lambda t: _table_stats(t, tokens), table, acc["d_src"], mask)
    tabular = dynamics.token_entropy_change(
        stats, types.TokenGrads(logp=g_l, entropy=g_h), lr)
    # Each token's logits are its own parameters, so SGD's Δz_t is exactly
    # the tabular −η ∂L/∂z_t and the two predictions coincide per token.
    np.testing.assert_allclose(per_token[0], jnp.where(mask > 0, tabular, 0),
                               atol=1e-6)
    np.testing.assert_allclose(
        mean[0], covariance.masked_mean(tabular, mask), atol=1e-6)
    dot = exact_dynamics.entropy_grad_dot(
        lambda t: _table_stats(t, tokens), table, acc["d_src"], mask)
    np.testing.assert_allclose(dot, mean, rtol=1e-5, atol=1e-9)
    # The forward of the same backward pass is the mean entropy at θ.
    h, dot2 = exact_dynamics.entropy_and_grad_dot(
        lambda t: _table_stats(t, tokens), table, acc["d_src"], mask)
    np.testing.assert_allclose(h, covariance.masked_mean(stats.entropy, mask),
                               rtol=1e-6)
    np.testing.assert_array_equal(dot2, dot)


def _lm_params(key, d=8, v=11, t=6):
  k = jax.random.split(key, 4)
  return {"emb": jax.random.normal(k[0], (v, d)),
          "pos": jax.random.normal(k[1], (t, d)) * 0.5,
          "w": jax.random.normal(k[2], (d, d)) / np.sqrt(d),
          "head": jax.random.normal(k[3], (d, v)) / np.sqrt(d)}


def _lm_hidden(p, x_bt):
  # A tiny LM: mean of the prefix embeddings (causal), one tanh layer.
  e = p["emb"][x_bt] + p["pos"][None, : x_bt.shape[1]]
  prefix = jnp.cumsum(e, axis=1) / jnp.arange(1, x_bt.shape[1] + 1)[:, None]
  return jnp.tanh(prefix @ p["w"])


class TinyLMTest(absltest.TestCase):

  def test_jvp_equals_float64_finite_difference(self):
    """Reference: central difference of the dense float64 entropy."""
    p = _lm_params(jax.random.key(0))
    x = jax.random.randint(jax.random.key(1), (3, 6), 0, 11)
    y = jnp.roll(x, -1, axis=1)
    mask = jnp.ones((3, 6), jnp.int32).at[0, 4:].set(0)
    tangent = jax.tree.map(lambda a: jax.random.normal(
        jax.random.key(2), a.shape) * 0.1, p)
    stats_fn = lambda q: token_stats.token_stats(
        _lm_hidden(q, x), q["head"], y, token_chunk=5, vocab_chunk=4)
    mean, per_token = exact_dynamics.entropy_jvp(
        stats_fn, p, jax.tree.map(lambda a: a[None], tangent), mask)
    with jax.enable_x64(True):
      p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
      t64 = jax.tree.map(lambda a: np.asarray(a, np.float64), tangent)
      def h(eps):
        q = jax.tree.map(lambda a, b: a + eps * b, p64, t64)
        return dynamics.entropy(_lm_hidden(q, x) @ q["head"])
      eps = 1e-5
      fd = (h(eps) - h(-eps)) / (2 * eps)
      self.assertEqual(fd.dtype, jnp.float64)
      fd = np.where(np.asarray(mask) > 0, fd, 0.0)
    np.testing.assert_allclose(per_token[0], fd, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(mean[0], fd.sum() / mask.sum(), rtol=1e-4)
    self.assertGreater(np.abs(fd).max(), 1e-2)  # Not a vacuous check.

  def test_forward_and_reverse_agree_on_the_decoder(self):
    """The update's reverse-mode aggregate equals the forward-mode JVP on
    the real decoder (forward-differentiable with xla_naive attention)."""
    cfg = models.ModelConfig("qwen2", 61, 16, 32, 2, 4, 2, 4, qkv_bias=True,
                             max_position_embeddings=64,
                             attention_impl="xla_naive")
    model = models.init_model(cfg, seed=1)
    graphdef, params, rest = state_lib.split_model(model)
    batch = update_test._batch(model)
    rl = ts.RLBatch(tokens=batch.tokens, positions=batch.positions,
                    attention_mask=batch.attention_mask,
                    completion_mask=batch.completion_mask,
                    old_logp=batch.behaviour_logp,
                    advantages=jnp.zeros_like(batch.behaviour_logp),
                    ref_logp=batch.behaviour_logp)
    loss = ts.LossConfig(token_chunk=8, vocab_chunk=16)
    stats_fn = lambda p: ts.params_stats(graphdef, rest, loss, p, rl)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    tangents = jax.tree.unflatten(treedef, [
        jax.random.normal(k, (2,) + a.shape) * 1e-2
        for k, a in zip(keys, leaves)])
    fwd, _ = exact_dynamics.entropy_jvp(stats_fn, params, tangents,
                                        rl.completion_mask)
    rev = exact_dynamics.entropy_grad_dot(stats_fn, params, tangents,
                                          rl.completion_mask)
    np.testing.assert_allclose(rev, fwd, rtol=1e-4, atol=1e-7)


def _run(method="none", kind="adamw", lr=1e-2, clip=1.0, kl=None, seed=1,
         steps=1, epochs=2, mini=2, micro=2, **hp_extra):
  model, graphdef, params, rest = update_test._setup(seed)
  batch = update_test._batch(model)
  spec = update_test._spec(method, epochs=epochs, mini=mini, micro=micro)
  spec = dataclasses.replace(
      spec, optimizer=hparams_lib.OptimizerSpec(total_steps=10, kind=kind),
      loss=dataclasses.replace(spec.loss,
                               kl_coef=0.0 if kl is None else 1.0))
  hp = dict(update_test.BASE_HP, **{"optim.lr": lr, "optim.grad_clip": clip},
            **hp_extra)
  if kl is not None:
    hp["loss.kl_coef"] = kl
  update = jax.jit(update_lib.make_update(graphdef, rest, spec),
                   static_argnames="measure")
  state = update_lib.init_state(spec, params, hp)
  ref = params if kl is not None else None
  out = []
  for i in range(steps):
    state, metrics = update(state, batch, jax.random.key(7 + i), ref,
                            measure=True)
    out.append(jax.device_get(metrics))
  return out


class UpdateAttributionTest(absltest.TestCase):

  def test_first_order_error_is_order_lr_squared(self):
    """Halving the step halves the prediction and quarters the residual
    (measured − exact); one SGD update, so Δθ is exactly linear in η."""
    runs = [_run(kind="sgd", lr=lr, clip=1e6, epochs=1, mini=1, micro=1)[0]
            for lr in (0.2, 0.1)]
    pred = [float(m["entropy/dH_pred_exact/total"]) for m in runs]
    res = [abs(float(m["entropy/dH_residual"])) for m in runs]
    np.testing.assert_allclose(pred[0] / pred[1], 2.0, rtol=1e-3)
    self.assertGreater(res[1], 1e-5)  # Far above float32 noise (~5e-7).
    self.assertBetween(res[0] / res[1], 3.0, 5.0)

  def test_trapezoid_error_is_order_lr_cubed(self):
    """½⟨∇H(θ) + ∇H(θ + Δθ), Δθ⟩ is exact to second order: halving the
    step cuts its residual about 8× (O(η³)), and it is far closer to the
    measurement than the first-order prediction."""
    runs = [_run(kind="sgd", lr=lr, clip=1e6, epochs=1, mini=1, micro=1)[0]
            for lr in (0.4, 0.2)]
    res = [abs(float(m["entropy/dH_residual_trapezoid"])) for m in runs]
    first = [abs(float(m["entropy/dH_residual"])) for m in runs]
    self.assertGreater(res[1], 2e-6)  # Above float32 noise (~5e-7).
    self.assertBetween(res[0] / res[1], 6.0, 10.0)
    self.assertLess(res[0], 0.5 * first[0])
    self.assertLess(res[1], 0.25 * first[1])  # And better as η shrinks.
    # Recomputed from its parts: the trapezoid is the mean of the two
    # endpoint slopes, and the first one is the first-order prediction.
    m = runs[0]
    self.assertAlmostEqual(
        float(m["entropy/dH_residual_trapezoid"]),
        float(m["entropy/measured_dH"])
        - float(m["entropy/dH_pred_trapezoid/total"]), places=7)

  def test_adamw_with_clipping_sources_sum_and_zero_source_is_zero(self):
    runs = _run("entropy_bonus", lr=1e-2, clip=0.05, kl=0.0, steps=2,
                **{"entropy.coef": 0.0, "optim.weight_decay": 0.1})
    for m in runs:
      self.assertGreater(float(m["actor/grad_norm"]), 0.05)  # Clip active.
      parts = ("pg", "kl", "entropy_bonus", "momentum", "weight_decay")
      total = float(m["entropy/dH_pred_exact/total"])
      summed = sum(float(m[f"entropy/dH_pred_exact/{s}"]) for s in parts)
      self.assertLess(abs(summed - total), 1e-5 * abs(total))
      trap = float(m["entropy/dH_pred_trapezoid/total"])
      trap_summed = sum(float(m[f"entropy/dH_pred_trapezoid/{s}"])
                        for s in parts)
      self.assertLess(abs(trap_summed - trap), 1e-5 * abs(trap))
      # Switched off: coefficient 0 contributes exactly 0.
      self.assertEqual(float(m["entropy/dH_pred_exact/entropy_bonus"]), 0.0)
      self.assertEqual(
          float(m["entropy/dH_pred_trapezoid/entropy_bonus"]), 0.0)
      self.assertEqual(float(m["entropy/dH_pred_exact/kl"]), 0.0)
      self.assertNotEqual(float(m["entropy/dH_pred_exact/weight_decay"]), 0)
    # Step 2 carries momentum from step 1.
    self.assertNotEqual(float(runs[1]["entropy/dH_pred_exact/momentum"]), 0)
    on = _run("entropy_bonus", lr=1e-2, clip=0.05,
              **{"entropy.coef": 0.05})[0]
    self.assertGreater(float(on["entropy/dH_pred_exact/entropy_bonus"]), 0)

  def test_sgd_split_is_exact(self):
    m = _run("entropy_bonus", kind="sgd", lr=0.5, clip=0.5,
             **{"entropy.coef": 0.05, "optim.weight_decay": 0.01})[0]
    total = float(m["entropy/dH_pred_exact/total"])
    summed = sum(float(m[f"entropy/dH_pred_exact/{s}"])
                 for s in ("pg", "entropy_bonus", "weight_decay"))
    self.assertNotIn("entropy/dH_pred_exact/momentum", m)
    self.assertLess(abs(summed - total), 1e-5 * abs(total))


if __name__ == "__main__":
  absltest.main()
