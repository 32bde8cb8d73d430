"""The token-space train step equals autodiff of the plain loss."""

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
from jaxrl_ent.rl import aggregation
from jaxrl_ent.rl import policy_losses
from jaxrl_ent.rl import train_step as ts
from jaxrl_ent.rl import state as state_lib

CFG = models.ModelConfig("qwen2", 61, 16, 32, 2, 4, 2, 4, qkv_bias=True,
                         max_position_embeddings=64)


def _batch(model, temperature=1.0):
  out = rollout.generate(model, [[1, 2, 3], [4, 5], [6, 7, 8, 9]],
                         jax.random.key(0), max_new_tokens=6, n_samples=2,
                         stop_token_ids=[3], temperature=temperature,
                         prompt_buckets=(8,))
  rng = np.random.default_rng(0)
  adv = rng.normal(size=(6, 1)).astype(np.float32) * out.completion_mask
  # Perturb old_logp so ratios differ from 1 and some tokens clip.
  old = out.logp + 0.3 * rng.normal(size=out.logp.shape).astype(np.float32)
  return ts.RLBatch(tokens=out.tokens, positions=out.positions,
                    attention_mask=out.attention_mask,
                    completion_mask=out.completion_mask,
                    old_logp=old * out.completion_mask,
                    advantages=jnp.asarray(adv, jnp.float32),
                    ref_logp=out.logp)


def _naive_logp_entropy(params, graphdef, rest, batch, temperature):
  model = nnx.merge(graphdef, params, rest)
  logits, _ = model(batch.tokens, batch.positions, batch.attention_mask)
  p = batch.prompt_len
  logp_all = jax.nn.log_softmax(logits[:, p - 1:-1] / temperature, axis=-1)
  logp = jnp.take_along_axis(logp_all, batch.tokens[:, p:, None], -1)[..., 0]
  ent = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  return logp, ent


class TrainStepTest(parameterized.TestCase):

  @parameterized.parameters(
      ("token-mean", 1, 0.0, 1.0), ("seq-mean-token-mean", 2, 0.0, 0.7),
      ("seq-mean-token-sum-norm", 3, 0.05, 1.0), ("token-mean", 1, 0.0, 1.0,
                                                   0.01))
  def test_gradient_equals_autodiff(self, agg_mode, micro, bonus, temperature,
                                    kl_coef=0.0):
    model = models.init_model(CFG, seed=1)
    graphdef, params, rest = state_lib.split_model(model)
    batch = _batch(model, temperature)
    loss_cfg = ts.LossConfig(
        policy_loss="ppo_clip", agg_mode=agg_mode, temperature=temperature,
        num_micro_batches=micro, kl_coef=kl_coef, token_chunk=8,
        vocab_chunk=16,
        policy_loss_kwargs=(("eps_low", 0.2), ("eps_high", 0.28),
                            ("clip_ratio_c", 3.0)))
    controller = (controllers.entropy_bonus(bonus) if bonus
                  else optax.identity())
    # SGD with lr 1: the parameter change is minus the gradient.
    step = ts.make_train_step(graphdef, rest, optax.sgd(1.0), controller,
                              loss_cfg, donate=False)
    state = state_lib.create(params, optax.sgd(1.0), controller)
    new_state, metrics = step(state, batch, jax.random.key(0))

    # Independent reference: full logits, plain jax.grad of the loss,
    # micro-batches averaged.
    def ref_loss(p, mb):
      logp, ent = _naive_logp_entropy(p, graphdef, rest, mb, temperature)
      pg_bt, _ = policy_losses.ppo_clip_loss(
          logp, mb.old_logp, mb.advantages, mb.completion_mask, eps_low=0.2,
          eps_high=0.28, clip_ratio_c=3.0)
      loss = aggregation.agg_loss(pg_bt, mb.completion_mask, agg_mode)
      if kl_coef:
        d = jnp.clip(mb.ref_logp - logp, -20, 20)
        kl_bt = jnp.clip(jnp.exp(d) - d - 1, -10, 10)
        loss += kl_coef * aggregation.agg_loss(kl_bt, mb.completion_mask,
                                               agg_mode)
      return loss - bonus * aggregation.agg_loss(ent, mb.completion_mask,
                                                 agg_mode)

    rows = batch.tokens.shape[0] // micro
    grads = None
    for i in range(micro):
      mb = jax.tree.map(lambda x: x[i * rows:(i + 1) * rows], batch)
      g = jax.grad(ref_loss)(params, mb)
      grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
    grads = jax.tree.map(lambda g: g / micro, grads)
    expected = jax.tree.map(lambda p, g: p - g, params, grads)
    for (path, a), (_, b) in zip(nnx.to_flat_state(new_state.params),
                                 nnx.to_flat_state(expected)):
      np.testing.assert_allclose(a.get_value(), b.get_value(), atol=2e-6,
                                 rtol=1e-4, err_msg=str(path))
    self.assertEqual(int(new_state.step), 1)
    self.assertTrue(np.isfinite(float(metrics["actor/grad_norm"])))
    self.assertGreater(float(metrics["actor/pg_clipfrac"]), 0.0)

  def test_nonfinite_update_is_skipped(self):
    model = models.init_model(CFG, seed=1)
    graphdef, params, rest = state_lib.split_model(model)
    batch = _batch(model)
    batch = batch.replace(advantages=batch.advantages.at[0, 0].set(jnp.nan))
    opt = optax.adam(1e-2)
    step = ts.make_train_step(graphdef, rest, opt, optax.identity(),
                              ts.LossConfig(token_chunk=8), donate=False)
    state = state_lib.create(params, opt, optax.identity())
    new_state, metrics = step(state, batch, jax.random.key(0))
    self.assertEqual(int(new_state.skipped), 1)
    self.assertEqual(int(new_state.step), 0)
    self.assertEqual(float(metrics["train/update_finite"]), 0.0)
    for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
      if a.shape == b.shape and a.dtype == b.dtype and a.ndim:
        np.testing.assert_array_equal(a, b)

  def test_attributed_chain_metrics(self):
    model = models.init_model(CFG, seed=1)
    graphdef, params, rest = state_lib.split_model(model)
    batch = _batch(model)
    controller = controllers.attributed_chain(
        ("entropy_bonus", controllers.entropy_bonus(0.1)))
    opt = optax.sgd(1e-3)
    step = ts.make_train_step(graphdef, rest, opt, controller,
                              ts.LossConfig(token_chunk=8), donate=False)
    state = state_lib.create(params, opt, controller)
    _, metrics = step(state, batch, jax.random.key(0))
    # The bonus can only push entropy up: its predicted dH is >= 0.
    self.assertGreater(float(metrics["entropy/dH_pred_tabular/entropy_bonus"]), 0.0)
    np.testing.assert_allclose(
        float(metrics["entropy/dH_pred_tabular/total"]),
        float(metrics["entropy/dH_pred_tabular/input"]) +
        float(metrics["entropy/dH_pred_tabular/entropy_bonus"]), rtol=1e-5)


if __name__ == "__main__":
  absltest.main()
