"""Every TPU job in configs/tpu_grpo.py parses, validates and shards cleanly.

Cheap (nothing is compiled): the compile of each job is `launch/aot_check.py`
(README table); this guards the table of jobs against edits that would only
fail on a pod or in a slow compile. Runs in the AOT pytest process.
"""

import aot_testlib  # First: CPU platform, repository path, libtpu.

import math

import jax
from absl.testing import absltest
from absl.testing import parameterized

from configs import tpu_grpo
from jaxrl_ent import sharding
from jaxrl_ent.aot import chips
from jaxrl_ent.aot import programs
from jaxrl_ent.train import validate

HAVE_LIBTPU = aot_testlib.HAVE_LIBTPU
needs_libtpu = aot_testlib.needs_libtpu

_JOBS = [(name,) for name in sorted(tpu_grpo.JOBS)]


def _hand_param_count(m) -> int:
  """Decoder parameters from the config.json dims, counted by hand."""
  v, d, f, l = m["vocab_size"], m["hidden_size"], m["intermediate_size"], (
      m["num_layers"])
  n, k, h = m["num_heads"], m["num_kv_heads"], m["head_dim"]
  per_layer = d * n * h + 2 * d * k * h + n * h * d + 3 * d * f + 2 * d
  if m["model_type"] == "qwen2":
    per_layer += n * h + 2 * k * h   # q/k/v biases
  else:
    per_layer += 2 * h               # Qwen3 q/k RMSNorms
  embed = v * d * (1 if m["tie_word_embeddings"] else 2)
  return embed + l * per_layer + d


# Published sizes (model cards): parameters in billions, to 3 digits.
_PUBLISHED = {"qwen2_5_0_5b": 0.494, "qwen2_5_1_5b": 1.54,
              "qwen2_5_7b": 7.62, "qwen3_8b": 8.19}


class JobsTest(parameterized.TestCase):

  def test_required_jobs_exist(self):
    for name in ("qwen2_5_0_5b_v5e8", "qwen2_5_1_5b_v4_8",
                 "qwen2_5_7b_v5p_16", "qwen3_8b_v5p_64",
                 "qwen2_5_7b_v5p_16_8k", "qwen3_8b_v5p_64_16k"):
      self.assertIn(name, tpu_grpo.JOBS)

  def test_reasoning_length_jobs(self):
    for name, seq in (("qwen2_5_7b_v5p_16_8k", 1024 + 8192),
                      ("qwen3_8b_v5p_64_16k", 1024 + 16384)):
      c = tpu_grpo.get_config(f"job={name}")
      self.assertEqual(c.data.max_prompt_length + c.rollout.max_new_tokens,
                       seq)
      # Splash tiles the sequence by 512 (models.attention.splash_block).
      self.assertEqual(seq % 512, 0)
      self.assertLessEqual(seq, c.model.max_position_embeddings)

  @parameterized.parameters(*_JOBS)
  def test_parses_validates_and_mesh_covers_topology(self, name):
    c = tpu_grpo.get_config(f"job={name}")
    self.assertEqual(c.job, name)
    topo = chips.parse_topology(c.topology, field="config.topology")
    self.assertEqual(math.prod(dict(c.mesh).values()), topo.num_chips)
    # The launch command's required paths (remote, so nothing is read).
    c.model_path = "gs://bucket/ckpt"
    c.data.train_paths = "gs://bucket/train.jsonl"
    c.data.eval_paths = "gs://bucket/test.jsonl"
    validate.validate_config(c, num_devices=topo.num_chips,
                             num_processes=topo.num_hosts)
    # Batch splits (rows over data × fsdp) and the context length.
    sizes = programs.sizes_of(c, c.mesh.data * c.mesh.fsdp)
    self.assertLessEqual(sizes.prompt_len + sizes.new_tokens,
                         c.model.max_position_embeddings)

  @parameterized.parameters(*_JOBS)
  def test_model_dims(self, name):
    job = tpu_grpo.JOBS[name]
    m = tpu_grpo.MODELS[job["model"]]
    cfg = programs.model_config(tpu_grpo.get_config(f"job={name}"))
    self.assertEqual(cfg.num_params(), _hand_param_count(m))
    self.assertAlmostEqual(cfg.num_params() / 1e9, _PUBLISHED[job["model"]],
                           delta=0.006)
    # Tensor parallelism splits what it is meant to split; an uneven split
    # would silently replicate the tensor (sharding.logical_to_spec).
    t = job["mesh"]["tensor"]
    for dim in ("num_heads", "num_kv_heads", "intermediate_size",
                "vocab_size"):
      self.assertEqual(m[dim] % t, 0, (name, dim))
    self.assertEqual(m["hidden_size"] % job["mesh"]["fsdp"], 0)

  @parameterized.parameters(*_JOBS)
  def test_state_is_sharded_over_every_chip(self, name):
    if not HAVE_LIBTPU:
      self.skipTest("needs libtpu: pip install -e '.[tpu]'")
    setup = programs.build_setup(tpu_grpo.get_config(f"job={name}"))
    chips_n = setup.topology.num_chips
    # LoRA jobs: the weights are the frozen base (the adapters, ~1 % of
    # the bytes, keep their small rank axis whole).
    weights = (setup.state.params if setup.state.frozen is None
               else setup.state.frozen)
    shardings = jax.tree.map(lambda x: x.sharding, weights)
    # Only the norms (well under 0.1 %) are replicated (on a single chip
    # everything is).
    if chips_n > 1:
      self.assertLess(sharding.replicated_fraction(weights, shardings), 1e-3)
    d, v = setup.model_cfg.hidden_size, setup.model_cfg.vocab_size
    for leaf in ("embed", "lm_head"):
      if not hasattr(weights, leaf):
        continue
      arr = getattr(weights, leaf).get_value()
      self.assertEqual(math.prod(arr.sharding.shard_shape(arr.shape)),
                       v * d // chips_n, leaf)


  def test_ppo_job_holds_a_float32_critic_sharded_like_the_policy(self):
    if not HAVE_LIBTPU:
      self.skipTest("needs libtpu: pip install -e '.[tpu]'")
    setup = programs.build_setup(tpu_grpo.get_config(
        "job=qwen2_5_0_5b_v5e8_ppo"))
    critic = setup.state.critic
    self.assertEqual(setup.critic.kind, "model")
    trunk = critic.params["trunk"]
    self.assertEqual(
        jax.tree.leaves(sharding.tree_specs(jax.tree.map(
            lambda x: x.sharding, trunk))),
        jax.tree.leaves(sharding.tree_specs(jax.tree.map(
            lambda x: x.sharding, setup.state.params))))
    # f32 params + f32 AdamW moments: 12 bytes per parameter (+ the head).
    n = setup.model_cfg.num_params()
    self.assertAlmostEqual(programs.state_bytes(setup)["critic"] / (12 * n),
                           1.0, places=3)


if __name__ == "__main__":
  absltest.main()
