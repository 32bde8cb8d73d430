"""AOT compilation for TPU topologies (libtpu, no TPU; own process: tests/run.sh).

Expected values are derived here from the model dims by hand, not from the
code under test.
"""

import aot_testlib  # First: CPU platform, repository path, libtpu.

import math

import jax
import jax.numpy as jnp
from absl.testing import absltest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import tpu_grpo
from jaxrl_ent.aot import chips
from jaxrl_ent.aot import cost
from jaxrl_ent.aot import hlo
from jaxrl_ent.aot import programs

HAVE_LIBTPU = aot_testlib.HAVE_LIBTPU
needs_libtpu = aot_testlib.needs_libtpu


def _mesh(topology: str, shape):
  devices = chips.topology_devices(chips.parse_topology(topology))
  return jax.make_mesh(shape, tuple("abc"[:len(shape)]), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


class TopologyTest(absltest.TestCase):

  def test_parse(self):
    t = chips.parse_topology("v5e:2x4")
    self.assertEqual((t.num_chips, t.num_hosts, t.chip.hbm_bytes),
                     (8, 1, 16 * 2**30))
    t = chips.parse_topology("v5p:4x4x4")
    self.assertEqual((t.num_chips, t.num_hosts, t.chip.hbm_bytes),
                     (64, 16, 95 * 2**30))

  def test_bad_names_name_the_field(self):
    for bad in ("v9:2x2", "v5e-8", "v5p:2x2", "v5e:0x4"):
      with self.assertRaisesRegex(ValueError, "config.topology"):
        chips.parse_topology(bad, field="config.topology")

  def test_bad_config_fails_before_compiling(self):
    c = tpu_grpo.get_config("job=qwen2_5_0_5b_v5e8")
    with c.unlocked():
      c.topology = "v5x:2x4"
    with self.assertRaisesRegex(ValueError, "config.topology"):
      programs.build_setup(c, devices=[])
    c = tpu_grpo.get_config("job=qwen2_5_0_5b_v5e8")
    c.mesh.fsdp = 4  # 4 × 1 × 1 ≠ 8 chips
    devices = ([] if not HAVE_LIBTPU else chips.topology_devices(
        chips.parse_topology(c.topology)))
    with self.assertRaisesRegex(ValueError, "config.mesh"):
      programs.build_setup(c, devices=devices)


class FlopCountTest(absltest.TestCase):

  def test_scan_bodies_count_length_times(self):
    def f(x, w):
      return jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, w)[0]
    x = jax.ShapeDtypeStruct((64, 32), jnp.float32)
    w = jax.ShapeDtypeStruct((5, 32, 16 * 2), jnp.float32)
    jaxpr = jax.make_jaxpr(f)(x, w)
    self.assertEqual(cost.jaxpr_flops(jaxpr), 5 * 2 * 64 * 32 * 32)

  @needs_libtpu
  def test_matches_xla_on_a_loop_free_program(self):
    mesh = _mesh("v5e:2x4", (8,))
    a = jax.ShapeDtypeStruct((1024, 512), jnp.bfloat16,
                             sharding=NamedSharding(mesh, P("a")))
    b = jax.ShapeDtypeStruct((512, 256), jnp.bfloat16,
                             sharding=NamedSharding(mesh, P()))
    traced = jax.jit(lambda a, b: a @ b).trace(a, b)
    xla = traced.lower().compile().cost_analysis()["flops"]
    self.assertEqual(cost.jaxpr_flops(traced.jaxpr) / 8, xla)
    self.assertEqual(xla, 2 * 1024 * 512 * 256 / 8)


class CollectivesTest(absltest.TestCase):

  @needs_libtpu
  def test_fsdp_gathers_and_tensor_reduces(self):
    mesh = _mesh("v5e:2x4", (4, 2))  # a = fsdp-like, b = tensor-like
    x = jax.ShapeDtypeStruct((64, 512), jnp.bfloat16,
                             sharding=NamedSharding(mesh, P("a", "b")))
    # Weights sharded on their input dim over `a` (FSDP): gathered before
    # use; the contraction over the `b`-sharded dim needs an all-reduce.
    w = jax.ShapeDtypeStruct((512, 1024), jnp.bfloat16,
                             sharding=NamedSharding(mesh, P(("a", "b"))))
    out = NamedSharding(mesh, P("a"))
    text = jax.jit(lambda x, w: x @ w, out_shardings=out).lower(
        x, w).compile().as_text()
    counts = hlo.count_collectives(text)
    self.assertGreater(counts["all-gather"] + counts["all-reduce"] +
                       counts["reduce-scatter"], 0)

  def test_counts_parse_async_and_sync_forms(self):
    text = "\n".join([
        "  %ag = (bf16[8,128]{1,0}, bf16[64,128]{1,0}) all-gather-start("
        "bf16[8,128]{1,0} %p), dimensions={0}",
        "  %agd = bf16[64,128]{1,0} all-gather-done(%ag)",
        "  ROOT %ar = f32[16]{0} all-reduce(f32[16]{0} %x), to_apply=%add",
        "  %rs = f32[2]{0} reduce-scatter(f32[16]{0} %y), dimensions={0}",
    ])
    counts = hlo.count_collectives(text)
    self.assertEqual((counts["all-gather"], counts["all-reduce"],
                      counts["reduce-scatter"], counts["all-to-all"]),
                     (1, 1, 1, 0))
    self.assertEqual(hlo.largest_collective_bytes(text, "all-gather"),
                     64 * 128 * 2)
    self.assertEqual(hlo.full_size_gathers(text, (64, 128), jnp.bfloat16), 1)


def _qwen05_param_count():
  # Qwen2.5-0.5B by hand: V 151936, D 896, F 4864, L 24, N 14, K 2, H 64,
  # tied embeddings, q/k/v biases, two RMSNorms per layer + the final one.
  v, d, f, l, n, k, h = 151936, 896, 4864, 24, 14, 2, 64
  per_layer = (d * n * h + 2 * d * k * h + n * h * d   # q, k, v, o
               + n * h + 2 * k * h                     # q/k/v biases
               + 3 * d * f + 2 * d)                    # SwiGLU, 2 norms
  return v * d + l * per_layer + d


@needs_libtpu
class Qwen05OnV5e8Test(absltest.TestCase):
  """The smallest TPU config, compiled for its v5e-8 slice."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.setup, cls.reports, _ = programs.check(
        tpu_grpo.get_config("job=qwen2_5_0_5b_v5e8"),
        which=("prefill", "decode"))
    cls.by_name = {r.name: r for r in cls.reports}

  def test_param_count_matches_hand_count(self):
    self.assertEqual(self.setup.model_cfg.num_params(), _qwen05_param_count())

  def test_fits_and_decode_arguments_are_params_plus_cache(self):
    for r in self.reports:
      self.assertTrue(r.fits, r)
      self.assertLess(r.total_bytes, 16 * 2**30)
    s = self.setup.sizes
    params = _qwen05_param_count() * 2                    # bf16
    # KV cache: k and v, L × [R, K, P + C, H] bf16, rows over 8 chips.
    cache = 2 * 24 * s.rows * (s.prompt_len + s.new_tokens) * 2 * 64 * 2
    # Carry besides the cache: logits [R, V] f32, tokens/logp/entropy
    # [R, C] (4 B each), done [R], plus prompt lengths [R] int32.
    small = s.rows * 151936 * 4 + 3 * s.rows * s.new_tokens * 4 + s.rows * 5
    # The decode loop reads weights made once per rollout, whole on every
    # chip here (fsdp 8, tensor 1): the layers, the embedding, the final
    # norm and the (tied, transposed) head.
    v, d = 151936, 896
    weights = (_qwen05_param_count() - v * d - d) * 2 + 2 * v * d * 2 + d * 2
    expected = (params + cache + small) / 8 + weights
    decode = self.by_name["decode"]
    # Replicated norms/counters and padding of tiny arrays: < 1 % apart.
    self.assertAlmostEqual(decode.argument_bytes / expected, 1.0, delta=0.01)
    # The donated cache is updated in place.
    self.assertGreaterEqual(decode.alias_bytes, cache / 8)

  def test_decode_estimate_is_memory_bound(self):
    r = self.by_name["decode"].roofline
    self.assertEqual(r.bound, "memory")
    self.assertGreater(r.seconds, 0)


@needs_libtpu
class OversizedTest(absltest.TestCase):

  def test_reported_as_not_fitting(self):
    c = tpu_grpo.get_config("job=qwen2_5_0_5b_v5e8")
    # 32k rows of 1024 tokens: a 412 GB KV cache, 51 GB per 16 GiB chip.
    c.train.prompts_per_step = 4096
    setup = programs.build_setup(c)
    (decode,) = programs.trace_programs(setup, ("decode",))
    report = programs.compile_program(setup, decode)
    self.assertFalse(report.fits)
    self.assertGreater(report.total_bytes, 16 * 2**30, report.error)


@needs_libtpu
class MultiHostTrainStepTest(absltest.TestCase):
  """The train step on v5p:4x4x4 (64 chips, 16 hosts), FSDP × tensor."""

  def test_train_step_shards_state_and_communicates(self):
    c = tpu_grpo.get_config("job=qwen2_5_0_5b_v5e8,entropy=kl_cov")
    c.topology = "v5p:4x4x4"
    c.mesh = {"data": 1, "fsdp": 16, "tensor": 4}
    # Small dims keep the compile short; the structure (scan over layers,
    # micro-batches, chunked token stats, controller) is the real one.
    for k, v in dict(num_layers=2, vocab_size=8192, hidden_size=256,
                     intermediate_size=512, num_heads=4, num_kv_heads=4,
                     head_dim=64, tie_word_embeddings=False).items():
      c.model[k] = v
    c.train.prompts_per_step = 32
    c.train.num_mini_batches = 1
    c.loss.num_micro_batches = 2
    c.data.max_prompt_length = 64
    c.rollout.max_new_tokens = 64
    setup = programs.build_setup(c)
    self.assertEqual(setup.topology.num_hosts, 16)
    (train,) = programs.trace_programs(setup, ("train",))
    report = programs.compile_program(setup, train, keep_hlo=True)
    self.assertTrue(report.fits)
    # Params + AdamW moments (bf16) by hand, every leaf split over 64 chips
    # except the small replicated norms.
    d, f, v, l, h, n = 256, 512, 8192, 2, 64, 4
    per_layer = 4 * d * n * h + 3 * n * h + 3 * d * f + 2 * d
    n_params = 2 * v * d + l * per_layer + d
    state = 3 * n_params * 2
    # At these tiny dims each per-device shard is padded to whole TPU tiles,
    # so allow a margin; one replicated copy of the embedding alone (4 MiB)
    # would make it 9x.
    self.assertGreaterEqual(report.argument_bytes, state / 64)
    self.assertLess(report.argument_bytes, 1.5 * state / 64)
    # FSDP gathers parameters; gradients and tensor-parallel activations are
    # reduced (XLA picks all-reduce or reduce-scatter).
    counts = report.collectives
    self.assertGreater(counts["all-gather"], 0)
    self.assertGreater(counts["all-reduce"] + counts["reduce-scatter"], 0)
    # The embedding and LM head are never gathered to full size.
    for shape in ((v, d), (d, v)):
      self.assertEqual(hlo.full_size_gathers(report.hlo_text, shape,
                                             jnp.bfloat16), 0)
    for name in ("embed", "lm_head"):
      sh = getattr(setup.state.params, name).get_value().sharding
      self.assertFalse(sh.is_fully_replicated, name)
      self.assertEqual(math.prod(sh.shard_shape((v, d) if name == "embed"
                                                else (d, v))),
                       v * d // 64)


if __name__ == "__main__":
  absltest.main()
