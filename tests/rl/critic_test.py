"""PPO's critic: GAE, the clipped value loss, explained variance, the update.

Expected values are derived independently: GAE by a float64 NumPy loop over
each row's valid tokens, the value loss by a PyTorch port of verl's
`compute_value_loss` / `agg_loss`, the explained variance by NumPy.
"""

import dataclasses
import sys
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl.testing import absltest
from absl.testing import parameterized

from configs import grpo_tiny
from jaxrl_ent.models import packing
from jaxrl_ent.rl import advantages
from jaxrl_ent.rl import critic as critic_lib
from jaxrl_ent.rl import hparams as hparams_lib
from jaxrl_ent.rl import registry
from jaxrl_ent.rl import update as update_lib
from jaxrl_ent.train import factories

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import update_test as ut  # pylint: disable=g-import-not-at-top,wrong-import-position

# Ragged masks: full, short, a hole (multi-turn observation), one token,
# empty.
MASK = np.array([[1, 1, 1, 1, 1, 1],
                 [1, 1, 1, 0, 0, 0],
                 [1, 1, 0, 0, 1, 1],
                 [1, 0, 0, 0, 0, 0],
                 [0, 0, 0, 0, 0, 0]], np.int32)


def _np_gae(rewards, values, mask, gamma, lam):
  """float64 reference: walk each row's valid tokens backwards; masked
  tokens neither add a TD error nor break the chain (verl)."""
  adv = np.zeros(rewards.shape, np.float64)
  for b in range(rewards.shape[0]):
    next_v = next_a = 0.0
    for t in [t for t in range(rewards.shape[1]) if mask[b, t]][::-1]:
      delta = rewards[b, t] + gamma * next_v - values[b, t]
      next_a = delta + gamma * lam * next_a
      next_v = values[b, t]
      adv[b, t] = next_a
  returns = (adv + values) * mask
  return adv, returns


def _np_whiten(x, mask):
  valid = x[mask > 0]
  return (x - valid.mean()) / np.sqrt(valid.var(ddof=1) + 1e-8) * mask


# ---- PyTorch port of verl (core_algos.agg_loss, compute_value_loss).
def _torch_masked_mean(values, mask):
  return (values * mask).sum() / (mask.sum() + 1e-8)


def _torch_agg_loss(loss_mat, loss_mask, loss_agg_mode, scale=None):
  if loss_agg_mode == "token-mean":
    return _torch_masked_mean(loss_mat, loss_mask)
  if loss_agg_mode == "seq-mean-token-sum":
    seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
    seq_mask = (torch.sum(loss_mask, dim=-1) > 0).float()
    return _torch_masked_mean(seq_losses, seq_mask)
  if loss_agg_mode == "seq-mean-token-mean":
    seq_mask = torch.sum(loss_mask, dim=-1)
    seq_losses = torch.sum(loss_mat * loss_mask, dim=-1) / (seq_mask + 1e-8)
    return _torch_masked_mean(seq_losses, (seq_mask > 0).float())
  if loss_agg_mode == "seq-mean-token-sum-norm":
    return torch.sum(loss_mat * loss_mask) / (scale or loss_mask.shape[-1])
  raise ValueError(loss_agg_mode)


def _torch_value_loss(vpreds, returns, values, response_mask,
                      cliprange_value, loss_agg_mode):
  vpredclipped = torch.clamp(vpreds, values - cliprange_value,
                             values + cliprange_value)
  vf_losses1 = (vpreds - returns) ** 2
  vf_losses2 = (vpredclipped - returns) ** 2
  clipped_vf_losses = torch.max(vf_losses1, vf_losses2)
  vf_loss = 0.5 * _torch_agg_loss(clipped_vf_losses, response_mask,
                                  loss_agg_mode)
  vf_clipfrac = _torch_masked_mean(torch.gt(vf_losses2, vf_losses1).float(),
                                   response_mask)
  return vf_loss, vf_clipfrac


class GaeTest(parameterized.TestCase):

  @parameterized.product(gamma=(0.0, 0.9, 1.0), lam=(0.0, 0.95, 1.0))
  def test_matches_numpy_loop(self, gamma, lam):
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=MASK.shape)
    values = rng.normal(size=MASK.shape)
    adv, ret = _np_gae(rewards, values, MASK, gamma, lam)
    got_adv, got_ret = jax.jit(
        advantages.gae_advantages, static_argnames="whiten")(
            rewards.astype(np.float32), values.astype(np.float32), MASK,
            gamma=gamma, lam=lam, whiten=False)
    np.testing.assert_allclose(got_adv, adv * MASK, atol=1e-5)
    np.testing.assert_allclose(got_ret, ret, atol=1e-5)
    white, _ = advantages.gae_advantages(
        rewards.astype(np.float32), values.astype(np.float32), MASK,
        gamma=gamma, lam=lam)
    np.testing.assert_allclose(white, _np_whiten(adv, MASK), atol=1e-4)

  def test_edge_values_in_closed_form(self):
    rng = np.random.default_rng(1)
    r = rng.normal(size=MASK.shape).astype(np.float32)
    v = rng.normal(size=MASK.shape).astype(np.float32)
    # λ = 0: the one-step TD error to the next *valid* token.
    adv, _ = advantages.gae_advantages(r, v, MASK, gamma=1.0, lam=0.0,
                                       whiten=False)
    self.assertAlmostEqual(float(adv[2, 1]), r[2, 1] + v[2, 4] - v[2, 1],
                           places=5)
    self.assertAlmostEqual(float(adv[2, 5]), r[2, 5] - v[2, 5], places=5)
    # γ = λ = 1: reward-to-go over valid tokens minus the value.
    adv, ret = advantages.gae_advantages(r, v, MASK, gamma=1.0, lam=1.0,
                                         whiten=False)
    togo = np.cumsum((r * MASK)[:, ::-1], axis=1)[:, ::-1]
    np.testing.assert_allclose(adv, (togo - v) * MASK, atol=1e-5)
    np.testing.assert_allclose(ret, togo * MASK, atol=1e-5)
    # γ = 0: only the token's own reward.
    adv, _ = advantages.gae_advantages(r, v, MASK, gamma=0.0, lam=1.0,
                                       whiten=False)
    np.testing.assert_allclose(adv, (r - v) * MASK, atol=1e-6)

  def test_registry_entry_is_gae_of_the_last_token_reward(self):
    rng = np.random.default_rng(2)
    rewards_b = rng.normal(size=MASK.shape[0]).astype(np.float32)
    v = rng.normal(size=MASK.shape).astype(np.float32)
    fn = registry.get_advantage_estimator("gae")
    got = fn(rewards_b, MASK, group_size=1, values_bt=v, gamma=0.9, lam=0.8)
    token_r = np.zeros(MASK.shape)
    for b in range(MASK.shape[0]):
      idx = np.flatnonzero(MASK[b])
      if idx.size:
        token_r[b, idx[-1]] = rewards_b[b]
    adv, _ = _np_gae(token_r, v.astype(np.float64), MASK, 0.9, 0.8)
    np.testing.assert_allclose(got, _np_whiten(adv, MASK), atol=1e-4)


class ValueLossTest(parameterized.TestCase):

  @parameterized.product(
      agg_mode=("token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                "seq-mean-token-sum-norm"),
      cliprange=(0.2, 0.5))
  def test_matches_verl_torch(self, agg_mode, cliprange):
    rng = np.random.default_rng(3)
    shape = MASK.shape
    values = rng.normal(size=shape).astype(np.float32)
    vpreds = (values + rng.normal(scale=0.6, size=shape)).astype(np.float32)
    returns = rng.normal(size=shape).astype(np.float32)
    vp_t = torch.tensor(vpreds, requires_grad=True)
    want_loss, want_frac = _torch_value_loss(
        vp_t, torch.tensor(returns), torch.tensor(values),
        torch.tensor(MASK, dtype=torch.float32), cliprange, agg_mode)
    want_loss.backward()
    fn = jax.jit(lambda vp: critic_lib.value_loss(
        vp, returns, values, MASK, cliprange, agg_mode=agg_mode))
    loss, frac = fn(vpreds)
    grad = jax.grad(lambda vp: fn(vp)[0])(vpreds)
    self.assertGreater(float(want_frac), 0.0)  # The clip is exercised.
    np.testing.assert_allclose(loss, want_loss.item(), rtol=1e-5)
    np.testing.assert_allclose(frac, want_frac.item(), rtol=1e-5)
    np.testing.assert_allclose(grad, vp_t.grad.numpy(), rtol=1e-5,
                               atol=1e-7)

  def test_no_clip_when_predictions_equal_old_values(self):
    v = np.linspace(-1, 1, 30).reshape(5, 6).astype(np.float32)
    loss, frac = critic_lib.value_loss(v, v + 1.0, v, MASK, 0.1)
    self.assertEqual(float(frac), 0.0)
    self.assertAlmostEqual(float(loss), 0.5, places=6)

  def test_explained_variance_matches_numpy(self):
    rng = np.random.default_rng(4)
    ret = rng.normal(size=MASK.shape).astype(np.float32)
    val = (ret + rng.normal(scale=0.5, size=MASK.shape)).astype(np.float32)
    # Masked entries must not matter.
    ret_junk = np.where(MASK > 0, ret, 1e3).astype(np.float32)
    got = critic_lib.explained_variance(ret_junk, val, MASK)
    r, v = ret[MASK > 0].astype(np.float64), val[MASK > 0].astype(np.float64)
    want = 1.0 - np.var(r - v, ddof=1) / (np.var(r, ddof=1) + 1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _hp(**extra):
  out = dict(ut.BASE_HP, **{
      "critic.lr": 3e-2, "critic.cliprange_value": 0.5,
      "critic.weight_decay": 0.0, "critic.grad_clip": 1.0,
      "advantage.gamma": 1.0, "advantage.lam": 0.95})
  out.update(extra)
  return out


_SHARED = {}


def _model_and_batch():
  """One tiny policy and one rollout for every test here (the rollout's
  compile dominates)."""
  if not _SHARED:
    model, graphdef, params, rest = ut._setup()
    _SHARED.update(model=model, graphdef=graphdef, params=params, rest=rest,
                   batch=ut._batch(model))
  return _SHARED


def _ppo_spec(kind="head", warmup=0, **kw):
  return dataclasses.replace(
      ut._spec(**kw), estimator="gae",
      critic=critic_lib.CriticSpec(kind=kind, warmup_steps=warmup))


def _changed(a, b):
  return any(bool(jnp.any(x != y)) for x, y in zip(jax.tree.leaves(a),
                                                  jax.tree.leaves(b)))


class CriticUpdateTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    shared = _model_and_batch()
    cls.graphdef, cls.params, cls.rest, cls.batch = (
        shared["graphdef"], shared["params"], shared["rest"],
        shared["batch"])

  def test_spec_needs_a_critic_exactly_for_gae(self):
    with self.assertRaisesRegex(ValueError, "needs a critic"):
      update_lib.make_update(self.graphdef, self.rest, dataclasses.replace(
          ut._spec(), estimator="gae"))
    with self.assertRaisesRegex(ValueError, "reads no critic"):
      update_lib.init_state(dataclasses.replace(
          ut._spec(), critic=critic_lib.CriticSpec()), self.params, _hp())

  def test_head_learns_and_is_float32_on_a_fixed_batch(self):
    spec = _ppo_spec()
    state = update_lib.init_state(spec, self.params, _hp())
    chex.assert_trees_all_equal_dtypes(
        state.critic.params, jax.tree.map(lambda x: x.astype(jnp.float32),
                                          state.critic.params))
    step = jax.jit(critic_lib.make_step(self.graphdef, self.rest, spec.critic,
                                        2))
    mask = self.batch.completion_mask
    returns = advantages.last_token_rewards(self.batch.rewards, mask)
    rows = critic_lib.CriticBatch(
        tokens=self.batch.tokens, positions=self.batch.positions,
        attention_mask=self.batch.attention_mask, completion_mask=mask,
        values=jnp.zeros_like(returns), returns=returns)
    hp = hparams_lib.as_hparams(_hp(**{"critic.cliprange_value": 100.0}))
    cstate, losses = state.critic, []
    for _ in range(15):
      cstate, m = step(cstate, state.params, rows, hp)
      losses.append(float(m["critic/vf_loss"]))
    self.assertLess(losses[-1], 0.7 * losses[0])
    self.assertNotIn("trunk", cstate.params)  # `head`: the trunk is shared.

  @parameterized.parameters(("head",), ("model",))
  def test_packed_critic_forwards_give_the_unpacked_update(self, kind):
    """With sequence packing on, the critic's trunk runs on the packed rows
    of the policy's passes (V_old over the whole batch, V per micro-batch,
    with the trunk's gradient for `kind="model"`), and the update equals the
    unpacked one to float rounding. A half of the rows of 2 S = 28 tokens:
    the batch (8 rows, 70 real tokens) and each micro-batch (2 rows) fit."""
    spec = _ppo_spec(kind=kind)
    hp = _hp(**{"critic.lr": 1e-4})
    key = jax.random.key(3)
    out, packs = {}, {}
    real = packing.forward_completion_hidden
    for name, fraction in (("unpacked", 0.0), ("packed", 0.5)):
      s = dataclasses.replace(spec, loss=dataclasses.replace(
          spec.loss, pack_fraction=fraction, pack_row_len=28))
      calls = []

      def spy(model, tokens, *args, calls=calls):
        caller = sys._getframe(1).f_code.co_name  # pylint: disable=protected-access
        calls.append((caller, tokens.shape, args[-1]))
        return real(model, tokens, *args)

      # Records every forward's pack shape while `update` is traced.
      with mock.patch.object(packing, "forward_completion_hidden", spy):
        out[name] = jax.jit(update_lib.make_update(self.graphdef, self.rest,
                                                   s))(
            update_lib.init_state(s, self.params, hp), self.batch, key)
      packs[name] = calls
    (s_ref, m_ref), (s_pack, m_pack) = out["unpacked"], out["packed"]
    # Every forward, the critic's included, packs: the whole batch into 4
    # rows, each micro-batch's 2 rows into 1.
    self.assertEqual({p for _, _, p in packs["unpacked"]}, {None})
    self.assertEqual({(shape, p) for _, shape, p in packs["packed"]},
                     {((2, 14), (1, 28)), ((8, 14), (4, 28))})
    # The critic's own forwards: V_old and the micro-batch's V.
    self.assertEqual({(shape, p) for caller, shape, p in packs["packed"]
                      if caller == "values"},
                     {((2, 14), (1, 28)), ((8, 14), (4, 28))})
    self.assertEqual(float(m_pack["perf/logprob_pack_fits"]), 1.0)
    self.assertEqual(float(m_pack["perf/pack_fits"]), 1.0)
    init = update_lib.init_state(spec, self.params, hp).critic.params
    self.assertTrue(_changed(s_ref.critic.params, init))
    # V and the value loss's gradient (the trunk's too for `model`) of the
    # learned critic, packed vs unpacked, over the whole batch.
    b, cparams = self.batch, s_ref.critic.params
    p = b.tokens.shape[1] - b.completion_mask.shape[1]

    def loss(cp, pack):
      v = critic_lib.values(self.graphdef, self.rest, spec.critic, cp,
                            self.params, b.tokens, b.positions,
                            b.attention_mask, p, pack)
      return jnp.sum(jnp.square(v - 1.0) * b.completion_mask), v

    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    (g_ref, v_ref), (g_pack, v_pack) = grad(cparams, None), grad(cparams,
                                                                 (4, 28))
    m = np.asarray(b.completion_mask, bool)
    np.testing.assert_allclose(np.asarray(v_pack)[m], np.asarray(v_ref)[m],
                               atol=1e-6, rtol=1e-5)
    chex.assert_trees_all_close(g_pack, g_ref, atol=1e-6, rtol=1e-5)
    self.assertEqual("trunk" in g_ref, kind == "model")
    # Adam's normalisation turns the float rounding of a near-zero gradient
    # coordinate into up to ~1% of a step (at critic lr 3e-2: 2e-4 on three
    # embedding entries), hence the small lr here; the values and gradients
    # themselves are compared tightly above.
    chex.assert_trees_all_close(s_pack.critic, s_ref.critic, atol=2e-6,
                                rtol=1e-4)
    chex.assert_trees_all_close(s_pack.params, s_ref.params, atol=2e-6,
                                rtol=1e-4)
    for k in ("critic/vf_loss", "critic/vpred_mean", "critic/values/mean",
              "critic/vf_explained_var", "critic/grad_norm", "actor/loss"):
      np.testing.assert_allclose(m_pack[k], m_ref[k], atol=1e-5, rtol=1e-4,
                                 err_msg=k)

  def test_warmup_freezes_the_policy_and_vmap_carries_the_critic(self):
    spec = _ppo_spec(kind="model", warmup=1, epochs=1, mini=2, micro=1)
    upd = update_lib.make_update(self.graphdef, self.rest, spec)
    hps = [_hp(), _hp(**{"critic.lr": 1e-3})]
    states = [update_lib.init_state(spec, self.params, h) for h in hps]
    key = jax.random.key(0)
    one = jax.jit(upd)
    s1, m1 = one(states[0], self.batch, key)
    self.assertFalse(_changed(states[0].params, s1.params))
    self.assertFalse(_changed(states[0].opt_state, s1.opt_state))
    self.assertTrue(_changed(states[0].critic.params, s1.critic.params))
    self.assertEqual(float(m1["actor/policy_frozen"]), 1.0)
    s2, m2 = one(s1, self.batch, key)
    self.assertTrue(_changed(s1.params, s2.params))
    self.assertEqual(float(m2["actor/policy_frozen"]), 0.0)
    for name in ("critic/vf_loss", "critic/vf_clipfrac", "critic/vpred_mean",
                 "critic/values/mean", "critic/values/max",
                 "critic/values/min", "critic/returns/mean",
                 "critic/advantages/mean", "critic/advantages/min",
                 "critic/vf_explained_var", "critic/grad_norm"):
      self.assertTrue(np.isfinite(float(m2[name])), name)
    # Replicas: the critic rides in the stacked state (its own lr each).
    stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)
    sv, mv = jax.jit(jax.vmap(upd, in_axes=(0, None, None)))(
        stack(states), self.batch, key)
    for i, s in enumerate(states):
      si, mi = one(s, self.batch, key)
      chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i],
                                               sv.critic), si.critic,
                                  atol=1e-4, rtol=1e-3)
      np.testing.assert_allclose(mv["critic/vf_loss"][i],
                                 mi["critic/vf_loss"], rtol=1e-5)


class ControllersWithCriticTest(parameterized.TestCase):
  """A smoke test per entropy controller under `:algo=ppo`: the config's
  own spec and hparams (one mini-batch) give a finite update that moves
  policy and critic."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    shared = _model_and_batch()
    cls.graphdef, cls.params, cls.rest, cls.batch = (
        shared["graphdef"], shared["params"], shared["rest"],
        shared["batch"])

  @parameterized.parameters(*hparams_lib.ENTROPY_METHODS)
  def test_controller(self, method):
    config = grpo_tiny.get_config(f"algo=ppo,entropy={method}")
    config.critic.warmup_steps = 0
    spec = factories.update_spec(config)
    spec = dataclasses.replace(
        spec, group_size=ut.GROUP, ppo_epochs=1, num_mini_batches=1,
        loss=dataclasses.replace(spec.loss, num_micro_batches=1,
                                 token_chunk=8, vocab_chunk=16))
    self.assertIsNotNone(spec.critic)
    hp = factories.initial_hparams(config)
    state = update_lib.init_state(spec, self.params, hp)
    new, m = jax.jit(update_lib.make_update(self.graphdef, self.rest, spec))(
        state, self.batch, jax.random.key(1))
    self.assertTrue(all(np.isfinite(np.asarray(v)).all()
                        for v in m.values()), m)
    self.assertEqual(float(m["train/update_finite"]), 1.0)
    self.assertTrue(_changed(state.params, new.params))
    self.assertTrue(_changed(state.critic.params, new.critic.params))


if __name__ == "__main__":
  absltest.main()
