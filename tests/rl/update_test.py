"""The pure RL update: equal to the step-by-step composition of its parts,
vmappable over seeds and coefficients, one trace per bucket, adaptive
controllers on the reference cadence."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx

from jaxrl_ent import models
from jaxrl_ent import rollout
from jaxrl_ent.entropy import controllers
from jaxrl_ent.rl import advantages
from jaxrl_ent.rl import hparams as hparams_lib
from jaxrl_ent.rl import state as state_lib
from jaxrl_ent.rl import train_step as ts
from jaxrl_ent.rl import update as update_lib

CFG = models.ModelConfig("qwen2", 61, 16, 32, 2, 4, 2, 4, qkv_bias=True,
                         max_position_embeddings=64)
GROUP = 2
BASE_HP = {"optim.lr": 1e-2, "optim.b1": 0.9, "optim.b2": 0.999,
           "optim.eps": 1e-8, "optim.weight_decay": 0.01,
           "optim.grad_clip": 1.0, "loss.clip_eps_low": 0.2,
           "loss.clip_eps_high": 0.28}


def _spec(method="none", epochs=2, mini=2, micro=2, **ctrl):
  return update_lib.UpdateSpec(
      loss=ts.LossConfig(policy_loss="ppo_clip", token_chunk=8,
                         vocab_chunk=16, num_micro_batches=micro),
      optimizer=hparams_lib.OptimizerSpec(total_steps=10),
      controller=hparams_lib.ControllerSpec(method=method, **ctrl),
      group_size=GROUP, ppo_epochs=epochs, num_mini_batches=mini,
      policy_hparams=(("eps_high", "loss.clip_eps_high"),
                      ("eps_low", "loss.clip_eps_low")))


def _batch(model, key=0, rewards_seed=0, max_new_tokens=6):
  prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11]]
  out = rollout.generate(model, prompts, jax.random.key(key),
                         max_new_tokens=max_new_tokens, n_samples=GROUP,
                         stop_token_ids=[3], prompt_buckets=(8,))
  rng = np.random.default_rng(rewards_seed)
  rewards = rng.integers(0, 2, size=len(prompts) * GROUP).astype(np.float32)
  return update_lib.RolloutBatch.from_rollout(out, rewards)


def _setup(seed=1):
  model = models.init_model(CFG, seed=seed)
  graphdef, params, rest = state_lib.split_model(model)
  return model, graphdef, params, rest


def _close(a, b, atol=1e-5, rtol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol,
                               rtol=rtol)


class UpdateTest(parameterized.TestCase):

  def test_equals_the_composition_of_its_parts(self):
    """Reference: the host-side recipe of the previous trainer — forward for
    old log-probs, GRPO advantages, a Python loop over epochs × mini-batches
    of the fixed-transform mini-batch kernel."""
    model, graphdef, params, rest = _setup()
    batch = _batch(model)
    spec = _spec("entropy_bonus")
    hp = dict(BASE_HP, **{"entropy.coef": 0.05})
    update = jax.jit(update_lib.make_update(graphdef, rest, spec))
    state = update_lib.init_state(spec, params, hp)
    key = jax.random.key(7)
    new_state, metrics = update(state, batch, key)

    loss_cfg = spec.loss.__class__(**{**spec.loss.__dict__,
                                      "policy_loss_kwargs": (
                                          ("eps_high", 0.28),
                                          ("eps_low", 0.2))})
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(1e-2, weight_decay=0.01))
    ctrl = controllers.attributed_chain(
        ("entropy_bonus", controllers.entropy_bonus(0.05)))
    step = ts.make_train_step(graphdef, rest, opt, ctrl, loss_cfg,
                              donate=False)
    ref = state_lib.create(params, opt, ctrl)
    mask = batch.completion_mask
    probe = ts.RLBatch(batch.tokens, batch.positions, batch.attention_mask,
                       mask, batch.behaviour_logp,
                       jnp.zeros_like(batch.behaviour_logp),
                       batch.behaviour_logp)
    old = ts.make_stats_fn(graphdef, rest, loss_cfg)(params, probe).logp
    adv = advantages.grpo_advantages(batch.rewards, mask, group_size=GROUP)
    full = probe.replace(old_logp=old * mask, advantages=adv)
    _, key_train, key_shuffle = jax.random.split(key, 3)
    rows = mask.shape[0]
    for epoch in range(2):
      perm = jax.random.permutation(jax.random.fold_in(key_shuffle, epoch),
                                    rows)
      for j in range(2):
        mb = jax.tree.map(lambda x: x[perm[j * rows // 2:(j + 1) * rows // 2]],
                          full)
        # Within an RL step every mini-batch sees the step-start controller
        # state (one controller update per RL step).
        ctrl_state = ref.ctrl_state
        ref, _ = step(ref, mb, jax.random.fold_in(key_train, epoch * 2 + j))
        ref = ref.replace(ctrl_state=ctrl_state)
    _close(new_state.params, ref.params, atol=2e-6, rtol=1e-4)
    self.assertEqual(int(new_state.step), 1)
    self.assertEqual(int(new_state.skipped), 0)
    np.testing.assert_allclose(metrics["actor/lr"], 1e-2, rtol=1e-6)
    self.assertGreater(float(metrics["entropy/dH_pred_tabular/entropy_bonus"]), 0)

  def test_packed_forwards_give_the_unpacked_update(self):
    """Sequence packing of every forward (old/reference/after log-probs,
    each micro-batch's train pass, the exact ΔH passes) changes nothing but
    float rounding. Rows of 2 S = 28 tokens at a quarter of the rows: the
    micro-batches (2 rows of 8-10 real tokens) fit in one and run packed;
    the whole batch (70 real tokens) does not fit in two, so the log-prob
    passes run unpacked."""
    model, graphdef, params, rest = _setup()
    batch = _batch(model)
    hp = dict(BASE_HP, **{"entropy.coef": 0.05, "loss.kl_coef": 0.1})
    key = jax.random.key(7)
    out = {}
    for name, fraction in (("unpacked", 0.0), ("packed", 0.25)):
      spec = _spec("entropy_bonus")
      spec = spec.__class__(**{**spec.__dict__, "loss": spec.loss.__class__(
          **{**spec.loss.__dict__, "kl_coef": 0.1,
             "pack_fraction": fraction, "pack_row_len": 28})})
      update = jax.jit(functools.partial(
          update_lib.make_update(graphdef, rest, spec), measure=True))
      state = update_lib.init_state(spec, params, hp)
      out[name] = update(state, batch, key, params)
    (s_ref, m_ref), (s_pack, m_pack) = out["unpacked"], out["packed"]
    # To 1e-3 of one step (lr 1e-2): Adam's normalisation turns the float
    # rounding of a near-zero gradient coordinate into a visible share of a
    # step (3.8e-6 seen on one weight, in one CI run of four updates); the
    # packed forwards' values and gradients are compared tightly in
    # tests/models/packing_test.py. A wiring error moves weights by O(lr).
    _close(s_pack.params, s_ref.params, atol=1e-5, rtol=1e-4)
    _close(s_pack.opt_state, s_ref.opt_state, atol=1e-5, rtol=1e-4)
    for k in ("actor/loss", "actor/entropy", "entropy/measured_dH",
              "entropy/dH_pred_exact/total", "actor/entropy_before_update"):
      np.testing.assert_allclose(m_pack[k], m_ref[k], atol=1e-5, rtol=1e-4,
                                 err_msg=k)
    self.assertNotIn("perf/pack_fits", m_ref)
    self.assertEqual(batch.tokens.shape, (8, 14))
    self.assertEqual(int(batch.attention_mask.sum()), 70)
    self.assertEqual(float(m_pack["perf/logprob_pack_fits"]), 0.0)
    self.assertEqual(float(m_pack["perf/pack_fits"]), 1.0)
    # Two rows of 14 in one of 28: the same slots, the same padding.
    for k in ("perf/padding_fraction", "perf/padding_fraction_packed"):
      self.assertAlmostEqual(float(m_pack[k]), 1 - 70 / 112, 6)

  @parameterized.parameters(("seeds",), ("coefficients",))
  def test_vmap_equals_separate_updates(self, axis):
    model, graphdef, params, rest = _setup()
    spec = _spec("entropy_bonus", epochs=1)
    update = update_lib.make_update(graphdef, rest, spec)
    if axis == "seeds":
      models_ = [models.init_model(CFG, seed=s) for s in (1, 2, 3)]
      params_ = [state_lib.split_model(m)[1] for m in models_]
      batches = [_batch(m, key=s, rewards_seed=s)
                 for s, m in enumerate(models_)]
      # lr 1e-3: Adam divides by √v, so with a larger step the float
      # round-off of batched vs plain matmuls on near-zero gradients grows
      # past the 1e-5 this test asks for.
      hps = [dict(BASE_HP, **{"entropy.coef": 1e-2, "optim.lr": 1e-3})] * 3
    else:
      params_ = [params] * 3
      batches = [_batch(model)] * 3
      hps = [dict(BASE_HP, **{"entropy.coef": a, "optim.lr": 1e-3})
             for a in (0.0, 1e-3, 1e-2)]
    keys = [jax.random.key(s) for s in range(3)]
    states = [update_lib.init_state(spec, p, h) for p, h in zip(params_, hps)]
    stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)
    singles = []
    for s, b, k in zip(states, batches, keys):
      for _ in range(2):
        s, m = jax.jit(update)(s, b, k)
      singles.append((s, m))
    vstate = stack(states)
    vupdate = jax.jit(jax.vmap(update, in_axes=(0, 0, 0, None)))
    for _ in range(2):
      vstate, vm = vupdate(vstate, stack(batches), jnp.stack(keys), None)
    for i, (s, m) in enumerate(singles):
      _close(jax.tree.map(lambda x: x[i], vstate), s)
      # frac_off_policy counts tokens with logp != old_logp exactly; the
      # round-off of batched vs plain matmuls flips a few of those ties.
      _close({k: v[i] for k, v in vm.items()
              if k != "actor/frac_off_policy"},
             {k: v for k, v in m.items() if k != "actor/frac_off_policy"})
    if axis == "coefficients":
      # The coefficients really differ: α = 0 adds nothing to dH.
      self.assertEqual(float(vm["entropy/dH_pred_tabular/entropy_bonus"][0]), 0.0)
      self.assertGreater(float(vm["entropy/dH_pred_tabular/entropy_bonus"][2]),
                         float(vm["entropy/dH_pred_tabular/entropy_bonus"][1]))

  def test_traces_once_across_steps_in_a_bucket(self):
    model, graphdef, params, rest = _setup()
    spec = _spec(epochs=1)
    update = chex.assert_max_traces(
        update_lib.make_update(graphdef, rest, spec), n=1)
    jitted = jax.jit(update)
    state = update_lib.init_state(spec, params, BASE_HP)
    lengths = set()
    for k in range(3):
      # Different keys: different completion lengths, one bucket.
      batch = _batch(model, key=k, rewards_seed=k)
      # Completions of random lengths (as if they stopped early).
      cut = np.random.default_rng(k).integers(1, 7, size=(8, 1))
      batch = batch.replace(completion_mask=batch.completion_mask * (
          np.arange(6)[None] < cut))
      lengths.add(tuple(np.asarray(batch.completion_mask.sum(1))))
      state, _ = jitted(state, batch, jax.random.key(k))
    self.assertGreater(len(lengths), 1)
    self.assertEqual(int(state.step), 3)

  def test_adaptive_entropy_moves_once_per_rl_step_on_the_full_batch(self):
    """Skywork-OR1 bang-bang, hand-computed: e_k = −mean(old log-prob) over
    the whole batch (all mini- and micro-batches), c_{k+1} = clip(c_k ± Δ),
    bonus a_k = c_k·1[e_k < target]."""
    model, graphdef, params, rest = _setup()
    spec = _spec("adaptive_entropy", epochs=1, mini=2, micro=2,
                 rule="bang_bang", measure="old_logp")
    delta, cmax, target = 1e-3, 2.5e-3, 100.0
    hp = dict(BASE_HP, **{"entropy.target": target, "entropy.delta": delta,
                          "entropy.lr": 0.0, "entropy.coef_min": 0.0,
                          "entropy.coef_max": cmax})
    update = jax.jit(update_lib.make_update(graphdef, rest, spec))
    state = update_lib.init_state(spec, params, hp)
    batch = _batch(model)
    mask = np.asarray(batch.completion_mask, bool)
    p = batch.tokens.shape[1] - mask.shape[1]
    c = 0.0
    for k in range(4):
      # Independent e_k: full logits of the current policy, NumPy mean.
      m = nnx.merge(graphdef, state.params, rest)
      logits, _ = m(batch.tokens, batch.positions, batch.attention_mask)
      logp_all = jax.nn.log_softmax(logits[:, p - 1:-1], axis=-1)
      logp = np.take_along_axis(np.asarray(logp_all),
                                np.asarray(batch.tokens[:, p:, None]),
                                -1)[..., 0]
      e_k = -logp[mask].mean()
      state, metrics = update(state, batch, jax.random.key(k))
      ctrl = state.ctrl_state["adaptive_entropy"]
      np.testing.assert_allclose(float(ctrl.measured_entropy), e_k,
                                 rtol=1e-5)
      np.testing.assert_allclose(float(ctrl.applied_coef),
                                 c if e_k < target else 0.0, atol=1e-9)
      c = min(max(c + (delta if e_k < target else -delta), 0.0), cmax)
      np.testing.assert_allclose(float(ctrl.coef), c, atol=1e-9)
      self.assertEqual(int(ctrl.count), k + 1)
    # Four RL steps of four micro-batch calls each: clipped at 2.5e-3 after
    # three steps of +Δ (per-call updates would have hit it after one).
    self.assertAlmostEqual(c, cmax)

  def test_bfloat16_state_keeps_its_dtypes(self):
    """float32 hyperparameter arrays must not promote bf16 moments (the
    mini-batch scan carry and the donated state need fixed dtypes)."""
    cfg = models.ModelConfig("qwen2", 61, 16, 32, 2, 4, 2, 4, qkv_bias=True,
                             max_position_embeddings=64,
                             param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    model = models.init_model(cfg, seed=1)
    graphdef, params, rest = state_lib.split_model(model)
    spec = _spec("entropy_bonus", epochs=1)
    update = jax.jit(update_lib.make_update(graphdef, rest, spec))
    state = update_lib.init_state(spec, params,
                                  dict(BASE_HP, **{"entropy.coef": 1e-2}))
    dtypes = [x.dtype for x in jax.tree.leaves(state)]
    self.assertIn(jnp.bfloat16, dtypes)
    batch = _batch(models.init_model(CFG, seed=1))
    for k in range(2):
      state, metrics = update(state, batch, jax.random.key(k))
    self.assertEqual([x.dtype for x in jax.tree.leaves(state)], dtypes)
    self.assertTrue(np.isfinite(float(metrics["actor/grad_norm"])))

  @parameterized.parameters(("constant", 0), ("linear", 3), ("cosine", 2))
  def test_lr_schedule_in_rl_steps_matches_optax(self, kind, warmup):
    spec = hparams_lib.OptimizerSpec(schedule=kind, warmup_steps=warmup,
                                     total_steps=12, end_fraction=0.1)
    decay = {"constant": optax.constant_schedule(0.5),
             "linear": optax.linear_schedule(0.5, 0.05, 12 - warmup),
             "cosine": optax.cosine_decay_schedule(0.5, 12 - warmup, 0.1)}
    ref = decay[kind]
    if warmup:
      ref = optax.join_schedules(
          [optax.linear_schedule(0.0, 0.5, warmup), ref], [warmup])
    for t in range(14):
      np.testing.assert_allclose(float(hparams_lib.lr_at(spec, 0.5, t)),
                                 float(ref(t)), rtol=1e-6, atol=1e-9)

  def test_kl_needs_the_reference(self):
    _, graphdef, params, rest = _setup()
    spec = _spec()
    spec = update_lib.UpdateSpec(**{**spec.__dict__, "loss": ts.LossConfig(
        kl_coef=0.1, token_chunk=8)})
    update = update_lib.make_update(graphdef, rest, spec)
    state = update_lib.init_state(spec, params,
                                  dict(BASE_HP, **{"loss.kl_coef": 0.1}))
    with self.assertRaisesRegex(ValueError, "ref_params"):
      jax.eval_shape(functools.partial(update, ref_params=None), state,
                     _batch(models.init_model(CFG, seed=1)),
                     jax.random.key(0))


if __name__ == "__main__":
  absltest.main()
