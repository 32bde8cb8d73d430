"""LoRA / QLoRA on the stacked decoder: the base at init, only adapters
train, merged == base + adapter, exact rollout/train agreement, PEFT export
read by `peft` in PyTorch, and the QLoRA base's logit error (reported)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from flax import nnx

from jaxrl_ent import models
from jaxrl_ent import rollout
from jaxrl_ent.models import lora
from jaxrl_ent.models import tiny_hf
from jaxrl_ent.rl import frozen_base
from jaxrl_ent.rl import hparams as hparams_lib
from jaxrl_ent.rl import state as state_lib
from jaxrl_ent.rl import train_step as ts
from jaxrl_ent.rl import update as update_lib

# Compile time dominates these tiny programs.
jax.config.update("jax_disable_most_optimizations", True)

CFG = models.ModelConfig("qwen2", 61, 16, 32, 2, 4, 2, 4, qkv_bias=True,
                         max_position_embeddings=64)
HP = {"optim.lr": 3e-2, "optim.b1": 0.9, "optim.b2": 0.999, "optim.eps": 1e-8,
      "optim.weight_decay": 0.0, "optim.grad_clip": 1.0,
      "loss.clip_eps_low": 0.2, "loss.clip_eps_high": 0.28,
      "loss.kl_coef": 0.05}
PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11]]
TOKENS = jnp.asarray([[1, 5, 9, 13, 17, 21, 25, 29],
                      [2, 4, 6, 8, 10, 12, 14, 16]])


def _spec():
  return update_lib.UpdateSpec(
      loss=ts.LossConfig(policy_loss="ppo_clip", token_chunk=8,
                         vocab_chunk=16, kl_coef=0.05),
      optimizer=hparams_lib.OptimizerSpec(total_steps=10),
      controller=hparams_lib.ControllerSpec(method="none"),
      group_size=2, ppo_epochs=1, num_mini_batches=1,
      policy_hparams=(("eps_high", "loss.clip_eps_high"),
                      ("eps_low", "loss.clip_eps_low")))


def _lora_model(seed=1, **kw):
  model = models.init_model(CFG, seed=seed)
  return lora.add_lora(model, lora.make_spec(rank=4, alpha=8.0, **kw),
                       seed=seed)


def _logits(model, tokens=TOKENS):
  return np.asarray(nnx.jit(lambda m, t: m(t)[0])(model, tokens))


def _batch(model, key=0):
  out = rollout.generate(model, PROMPTS, jax.random.key(key),
                         max_new_tokens=6, n_samples=2, stop_token_ids=[3],
                         prompt_buckets=(8,))
  rewards = np.asarray([1, 0, 0, 1, 1, 1, 0, 1], np.float32)
  return update_lib.RolloutBatch.from_rollout(out, rewards)


@functools.lru_cache(maxsize=None)
def _trained():
  """(model before, model after one KL-regularised GRPO step, metrics)."""
  model = _lora_model()
  graphdef, params, rest = state_lib.split_model(model)
  spec = _spec()
  state = update_lib.init_state(spec, params, HP).replace(frozen=rest)
  ref = jax.tree.map(jnp.copy, params)
  update = jax.jit(frozen_base.make_update(graphdef, rest, spec))
  new_state, metrics = update(state, _batch(model), jax.random.key(3), ref)
  after = nnx.merge(graphdef, new_state.params, new_state.frozen)
  return model, after, new_state, metrics


class LoraTest(absltest.TestCase):

  def test_init_is_the_base_model(self):
    base = models.init_model(CFG, seed=1)
    want = _logits(base)
    model = _lora_model()
    np.testing.assert_array_equal(_logits(model), want)
    # The cached (rollout) path merges the same way.
    b0 = rollout.generate(base, PROMPTS, jax.random.key(0), max_new_tokens=5)
    b1 = rollout.generate(model, PROMPTS, jax.random.key(0), max_new_tokens=5)
    np.testing.assert_array_equal(b0.tokens, b1.tokens)
    np.testing.assert_array_equal(b0.logp, b1.logp)

  def test_only_adapters_are_trainable_and_change(self):
    model, after, new_state, metrics = _trained()
    _, params, rest = state_lib.split_model(model)
    names = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
    self.assertLen(names, 14)  # A and B for 7 projections.
    self.assertTrue(all("_lora_" in n for n in names), names)
    # The optimizer holds moments of the adapters only.
    n_adapter = lora.num_adapter_params(model)
    n_opt = sum(x.size for x in jax.tree.leaves(new_state.opt_state)
                if x.ndim > 0)
    self.assertEqual(n_opt, 2 * n_adapter)
    for (p, v0), (_, v1) in zip(nnx.to_flat_state(params),
                                nnx.to_flat_state(new_state.params)):
      # From B = 0 the first step moves B only (∂L/∂A = s·∂L/∂W·Bᵀ = 0).
      moved = not np.array_equal(v0[...], v1[...])
      self.assertEqual(moved, p[-1].endswith("_lora_b"), p)
    for (p, v0), (_, v1) in zip(nnx.to_flat_state(rest),
                                nnx.to_flat_state(new_state.frozen)):
      np.testing.assert_array_equal(v0[...], v1[...], err_msg=str(p))
    self.assertTrue(np.isfinite(float(metrics["actor/loss"])))

  def test_merged_model_equals_base_plus_adapter(self):
    _, after, _, _ = _trained()
    merged = lora.merge(after)
    self.assertIsNone(lora.spec_of(merged))
    got, want = _logits(merged), _logits(after)
    self.assertGreater(np.abs(want - _logits(lora.base_model(after))).max(),
                       1e-4)  # the adapters moved the function
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

  def test_rollout_and_training_agree_with_adapters(self):
    _, after, new_state, _ = _trained()
    batch = _batch(after, key=4)
    graphdef, params, rest = state_lib.split_model(after)
    probe = ts.RLBatch(tokens=batch.tokens, positions=batch.positions,
                       attention_mask=batch.attention_mask,
                       completion_mask=batch.completion_mask,
                       old_logp=batch.behaviour_logp,
                       advantages=jnp.zeros_like(batch.behaviour_logp),
                       ref_logp=batch.behaviour_logp)
    stats = ts.make_stats_fn(graphdef, rest, _spec().loss)(params, probe)
    mask = np.asarray(batch.completion_mask) > 0
    gap = np.abs(np.asarray(stats.logp) - np.asarray(batch.behaviour_logp))
    # The same gap as the merged plain model has (no LoRA-specific error).
    merged = lora.merge(after)
    mbatch = _batch(merged, key=4)
    np.testing.assert_array_equal(mbatch.tokens, batch.tokens)
    mg, mp, mr = state_lib.split_model(merged)
    mstats = ts.make_stats_fn(mg, mr, _spec().loss)(mp, probe)
    mgap = np.abs(np.asarray(mstats.logp) - np.asarray(mbatch.behaviour_logp))
    print(f"rollout/train |Δlogp| max: LoRA {gap[mask].max():.2e}, merged "
          f"plain model {mgap[mask].max():.2e}")
    self.assertLessEqual(gap[mask].max(), mgap[mask].max() + 1e-6)
    self.assertLess(gap[mask].max(), 2e-5)


class LoraDynamicsTest(absltest.TestCase):

  def test_controller_and_exact_dynamics_run_on_adapters(self):
    """Clip-Cov and the exact first-order ΔH on Δθ of the adapters."""
    model = _lora_model()
    graphdef, params, rest = state_lib.split_model(model)
    spec = _spec()
    spec = update_lib.UpdateSpec(
        loss=spec.loss, optimizer=spec.optimizer,
        controller=hparams_lib.ControllerSpec(method="clip_cov"),
        group_size=2, ppo_epochs=1, num_mini_batches=1,
        policy_hparams=spec.policy_hparams)
    hp = dict(HP, **{"optim.lr": 1e-3, "entropy.ratio": 0.2,
                     "entropy.clip_cov_lb": -1.0, "entropy.clip_cov_ub": 5.0})
    state = update_lib.init_state(spec, params, hp).replace(frozen=rest)
    update = jax.jit(functools.partial(
        frozen_base.make_update(graphdef, rest, spec), measure=True))
    _, metrics = update(state, _batch(model), jax.random.key(3),
                        jax.tree.map(jnp.copy, params))
    measured = float(metrics["entropy/measured_dH"])
    residual = float(metrics["entropy/dH_residual"])
    print(f"LoRA step: measured ΔH {measured:.3e}, exact first-order "
          f"residual {residual:.3e}")
    self.assertTrue(np.isfinite(measured) and measured != 0.0)
    self.assertLess(abs(residual), 0.5 * abs(measured))


class PeftExportTest(absltest.TestCase):

  def test_peft_folder_loads_in_pytorch_with_the_same_logits(self):
    import peft  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    base_dir = self.create_tempdir("base").full_path
    tiny_hf.write_checkpoint(base_dir, "qwen2", seed=2)
    model = models.from_pretrained(base_dir)
    model = lora.add_lora(model, lora.make_spec(
        rank=4, alpha=16.0, targets=("q_proj", "v_proj", "o_proj",
                                     "down_proj")), seed=0)
    # Non-zero B factors, as after training.
    for n in lora.spec_of(model).weights:
      b = getattr(model.layers, n + "_lora_b")
      b[...] = 0.05 * jax.random.normal(jax.random.key(len(n)), b.shape)
    out = self.create_tempdir("adapter").full_path
    lora.save_peft(model, out, base_path=base_dir)
    tokens = np.asarray([[3, 17, 42, 8, 91, 5, 60, 11]])
    ours = _logits(model, jnp.asarray(tokens))
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32)
    torch_model = peft.PeftModel.from_pretrained(torch_model, out).eval()
    with torch.no_grad():
      theirs = torch_model(torch.as_tensor(tokens)).logits.numpy()
      base = peft.PeftModel.from_pretrained(
          transformers.AutoModelForCausalLM.from_pretrained(
              base_dir, dtype=torch.float32), out)
      with base.disable_adapter():
        plain = base(torch.as_tensor(tokens)).logits.numpy()
    self.assertGreater(np.abs(theirs - plain).max(), 1e-3)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


class QLoraTest(absltest.TestCase):

  def test_nf4_decode_equals_qwix_without_a_gather(self):
    """Our gather-free NF4 decode gives qwix's values bit for bit: blocks
    of 64 along the input, a last input axis the block does not split (one
    scale per channel), and o_proj's two input axes."""
    import qwix  # pylint: disable=g-import-not-at-top
    cases = [((2, 128, 48), 1, 64), ((3, 40, 16), 1, 64),
             ((2, 4, 32, 24), 2, 16)]
    for i, (shape, n_in, block) in enumerate(cases):
      w = jax.random.normal(jax.random.key(i), shape)
      q, scale = lora.quantize(w, "nf4", block, n_in)
      want = qwix.dequantize(qwix.QArray(q, scale, None, "nf4"))
      got = jax.jit(lora.dequantize, static_argnums=(2, 3))(
          q, scale, "nf4", jnp.float32)
      np.testing.assert_array_equal(np.asarray(got),
                                    np.asarray(want, np.float32))
      # Every one of the 16 codes occurs, so every branch is checked.
      self.assertLen(np.unique(np.asarray(q, np.uint8)), 16)
      hlo = jax.jit(lora.dequantize, static_argnums=(2, 3)).lower(
          q, scale, "nf4", jnp.bfloat16).as_text()
      self.assertNotIn("gather", hlo)

  def test_quantised_base_logit_error_is_measured(self):
    """QLoRA (B = 0) logits against the bf16 base; prints the numbers."""
    cfg = CFG.replace(hidden_size=128, intermediate_size=256, num_heads=4,
                      num_kv_heads=2, head_dim=32, vocab_size=97,
                      dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    base = models.init_model(cfg, seed=3)
    graphdef, state = nnx.split(base)
    tokens = jax.random.randint(jax.random.key(1), (4, 24), 0, 97)
    want = _logits(base, tokens).astype(np.float32)
    errors = {}
    for quant in ("int8", "nf4"):
      model = lora.add_lora(nnx.merge(graphdef, jax.tree.map(jnp.copy,
                                                             state)),
                            lora.make_spec(rank=4, quant=quant), seed=0)
      self.assertEqual(
          getattr(model.layers, "q_w_qvalue")[...].dtype,
          jnp.int8 if quant == "int8" else jnp.uint4)
      got = _logits(model, tokens).astype(np.float32)
      errors[quant] = (np.abs(got - want).max(), np.abs(got - want).mean(),
                       want.std())
      print(f"QLoRA {quant} base vs bf16 base: max |Δlogit| "
            f"{errors[quant][0]:.4f}, mean {errors[quant][1]:.4f} "
            f"(logit std {errors[quant][2]:.3f})")
    self.assertLess(errors["int8"][1], errors["nf4"][1])
    self.assertLess(errors["int8"][1], 0.1 * errors["int8"][2])
    self.assertLess(errors["nf4"][1], 0.5 * errors["nf4"][2])


if __name__ == "__main__":
  absltest.main()
