"""Builds a config's abstract state and batches and compiles its programs.

For a TPU config (`config.topology`, inline `config.model` dims) this makes,
without allocating anything, the train state (params, AdamW state, entropy
controller state) and the batches at the config's real sizes, sharded by
`jaxrl_ent.sharding` over a mesh of compile-only TPU devices, and compiles
the programs one RL step runs (DESIGN.md §1):

  prefill      prefill each prompt's KV cache once    (rollout.sampler.prefill)
  decode       sample one token, one cached forward   (rollout.sampler.decode_step)
  logp         old/reference log-probs, whole batch   (rl.train_step.make_stats_fn)
  train        one mini-batch update, micro-batched   (rl.train_step.make_train_step)
  critic_values  a PPO critic's values, whole batch   (rl.critic.values)
  critic_train   the critic's mini-batch update       (rl.critic.make_step)

The two critic programs are traced with "train" when the config trains a
critic (`advantage.estimator="gae"`); both take the whole train state, as
the one jitted update holds policy and critic together.

They are the same functions `train.rl_loop` calls, so what compiles here is
what a pod runs. Each program is reported with XLA's per-device memory
analysis against the chip's HBM, its cost analysis, a loop-exact FLOP count,
a roofline time, and the collectives in the compiled HLO.
"""

import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxrl_ent import sharding
from jaxrl_ent.aot import chips as chips_lib
from jaxrl_ent.aot import cost
from jaxrl_ent.aot import hlo
from jaxrl_ent.models import config as config_lib
from jaxrl_ent.models import decoder
from jaxrl_ent.models import hf_io
from jaxrl_ent.rl import critic as critic_lib
from jaxrl_ent.models import lora as lora_lib
from jaxrl_ent.rl import hparams as hparams_lib
from jaxrl_ent.rl import state as state_lib
from jaxrl_ent.rl import train_step as ts
from jaxrl_ent.rl import update as update_lib
from jaxrl_ent.rollout import sampler
from jaxrl_ent.train import checkpoint
from jaxrl_ent.train import config_blocks
from jaxrl_ent.train import factories
from jaxrl_ent.train import policy_setup

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_MODEL_FIELDS = ("model_type", "vocab_size", "hidden_size",
                 "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim")


def model_config(config) -> config_lib.ModelConfig:
  """`config.model` (inline dims of a TPU config) → ModelConfig.

  Raises:
    ValueError: naming the missing `config.model.<field>`.
  """
  m = config.model
  missing = [f for f in _MODEL_FIELDS if f not in m]
  if missing:
    raise ValueError(f"config.model is missing {missing}: a TPU config gives "
                     "the model dims inline (see configs/tpu_grpo.py).")
  dtype = _DTYPES[m.get("dtype", "bfloat16")]
  return config_lib.ModelConfig(
      model_type=m.model_type, vocab_size=m.vocab_size,
      hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
      num_layers=m.num_layers, num_heads=m.num_heads,
      num_kv_heads=m.num_kv_heads, head_dim=m.head_dim,
      rms_norm_eps=m.get("rms_norm_eps", 1e-6),
      rope_theta=m.get("rope_theta", 1e6),
      max_position_embeddings=m.get("max_position_embeddings", 32768),
      tie_word_embeddings=m.get("tie_word_embeddings", False),
      qkv_bias=m.get("qkv_bias", m.model_type == "qwen2"),
      qk_norm=m.get("qk_norm", m.model_type == "qwen3"),
      dtype=dtype, param_dtype=_DTYPES[m.get("param_dtype",
                                             m.get("dtype", "bfloat16"))],
      **config_blocks.model_options(config))


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Batch sizes of one RL step (rows = sequences)."""
  prompts: int        # B, prompts per step
  n_samples: int      # group size
  rows: int           # R = B · n_samples, rolled out and scored together
  prompt_len: int     # P, the prompt bucket
  new_tokens: int     # C
  minibatch_rows: int  # rows per train-step call
  micro_rows: int     # rows per micro-batch inside it
  updates: int        # train-step calls per RL step (epochs × mini-batches)


def sizes_of(config, batch_shards: int) -> Sizes:
  """The step's batch sizes; ValueError naming the field that does not split."""
  t = config.train
  b, n = t.prompts_per_step, config.rollout.n_samples
  rows = b * n
  if rows % t.num_mini_batches:
    raise ValueError(f"train.num_mini_batches={t.num_mini_batches} does not "
                     f"divide prompts_per_step × n_samples = {rows} rows.")
  mb = rows // t.num_mini_batches
  m = config.loss.num_micro_batches
  if mb % m:
    raise ValueError(f"loss.num_micro_batches={m} does not divide the "
                     f"{mb}-row mini-batch.")
  for name, value in (("prompts_per_step × n_samples", rows),
                      ("the micro-batch", mb // m)):
    if value % batch_shards:
      raise ValueError(
          f"config.mesh: {name} ({value} rows) does not split over "
          f"data × fsdp = {batch_shards} devices; rows would be replicated. "
          "Change train.prompts_per_step, train.num_mini_batches or "
          "loss.num_micro_batches.")
  return Sizes(prompts=b, n_samples=n, rows=rows,
               prompt_len=config.data.max_prompt_length,
               new_tokens=config.rollout.max_new_tokens, minibatch_rows=mb,
               micro_rows=mb // m,
               updates=t.ppo_epochs * t.num_mini_batches)


@dataclasses.dataclass
class Setup:
  """Everything the programs close over, all abstract."""
  config: object
  topology: chips_lib.Topology
  mesh: jax.sharding.Mesh
  rules: tuple
  model_cfg: config_lib.ModelConfig
  graphdef: object
  rest: object
  state: object            # TrainState of ShapeDtypeStructs with shardings
  optimizer: object
  controller: object
  loss_cfg: ts.LossConfig
  sizes: Sizes
  critic: critic_lib.CriticSpec | None = None


def build_setup(config, devices=None) -> Setup:
  """Validates the config and builds its abstract, sharded train state.

  Args:
    config: a TPU config (`topology`, `mesh`, inline `model` dims).
    devices: compile-only devices (default: from `config.topology`).

  Raises:
    ValueError: unknown topology, a mesh whose product is not the chip
      count, a batch that does not split; each names the config field, and
      all of it happens before anything is compiled.
  """
  topology = chips_lib.parse_topology(config.get("topology", ""),
                                      field="config.topology")
  mesh_shape = dict(config.mesh)
  model_cfg = model_config(config)
  if devices is None:
    devices = chips_lib.topology_devices(topology)
  try:
    mesh = sharding.make_mesh(mesh_shape, devices)
  except ValueError as e:
    raise ValueError(f"config.mesh={mesh_shape} does not fit config.topology="
                     f"{topology.name!r} ({topology.num_chips} chips): {e}"
                     ) from e
  rules = sharding.merge_rules(dict(config.sharding.rules))
  sizes = sizes_of(config, mesh.shape["data"] * mesh.shape["fsdp"])
  if sizes.prompt_len + sizes.new_tokens > model_cfg.max_position_embeddings:
    raise ValueError(
        f"data.max_prompt_length ({sizes.prompt_len}) + rollout."
        f"max_new_tokens ({sizes.new_tokens}) exceeds the model's context of "
        f"{model_cfg.max_position_embeddings} tokens.")

  loss_cfg = factories.make_loss_config(config)
  # The trainer's state and transforms (`rl.update.init_state`), with the
  # run's hyperparameters as concrete values, placed by the one sharding
  # helper the trainer uses.
  spec = factories.update_spec(config)
  hparams = hparams_lib.as_hparams(factories.initial_hparams(config))
  optimizer = hparams_lib.optimizer(spec.optimizer, hparams, 0)
  controller = hparams_lib.controller(spec.controller, hparams, 0)
  graphdef, abs_model = hf_io.abstract_model(model_cfg)
  model = nnx.merge(graphdef, abs_model)
  lora_spec = policy_setup.lora_spec(config)
  if lora_spec is not None:  # Adapters on the (possibly quantised) base.
    model = nnx.eval_shape(lambda m: lora_lib.add_lora(m, lora_spec), model)
  graphdef, params, rest = state_lib.split_model(model)
  abs_state = jax.eval_shape(
      lambda p: update_lib.init_state(spec, p, hparams), params)
  if state_lib.has_frozen_base(rest):
    # The trainer carries the frozen base in the state (rl/frozen_base.py).
    abs_state = abs_state.replace(frozen=rest)
  shardings = sharding.train_state_shardings(abs_state, mesh, rules)
  state = checkpoint.abstract_like(abs_state, shardings)
  # The programs take the base as an argument (a LoRA model's is its state).
  rest = state.frozen if state.frozen is not None else rest
  return Setup(config=config, topology=topology, mesh=mesh, rules=rules,
               model_cfg=model_cfg, graphdef=graphdef, rest=rest, state=state,
               optimizer=optimizer, controller=controller, loss_cfg=loss_cfg,
               sizes=sizes, critic=spec.critic)


def _batch_sharding(setup: Setup, shape) -> NamedSharding:
  axes = ("act_batch",) + (None,) * (len(shape) - 1)
  return NamedSharding(setup.mesh, sharding.logical_to_spec(
      axes, setup.rules, shape, setup.mesh))


def _abstract(setup: Setup, shape, dtype) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, dtype,
                              sharding=_batch_sharding(setup, shape))


def rl_batch(setup: Setup, rows: int) -> ts.RLBatch:
  """Abstract `RLBatch` of `rows` sequences of P + C tokens."""
  s = setup.sizes
  seq, c = s.prompt_len + s.new_tokens, s.new_tokens
  i32, f32 = jnp.int32, jnp.float32
  return ts.RLBatch(
      tokens=_abstract(setup, (rows, seq), i32),
      positions=_abstract(setup, (rows, seq), i32),
      attention_mask=_abstract(setup, (rows, seq), i32),
      completion_mask=_abstract(setup, (rows, c), i32),
      old_logp=_abstract(setup, (rows, c), f32),
      advantages=_abstract(setup, (rows, c), f32),
      ref_logp=_abstract(setup, (rows, c), f32))


def _replicated(setup: Setup, x) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(
      setup.mesh, PartitionSpec()))


def sampling_params(config) -> sampler.SamplingParams:
  r = config.rollout
  return sampler.SamplingParams(
      max_new_tokens=r.max_new_tokens, temperature=float(r.temperature),
      top_p=float(r.top_p), top_k=r.top_k, n_samples=r.n_samples,
      stop_token_ids=(0,), return_entropy=True, pad_id=0,
      decode_attention=str(r.get("decode_attention", "auto")))


# ----------------------------------------------------------------- programs

@dataclasses.dataclass
class Program:
  """A traced, not yet compiled, program: `traced.lower().compile()`."""
  name: str
  traced: object
  calls_per_step: float   # how many times one RL step runs it
  weight_passes: float    # passes over the weights per call (fwd, bwd, remat)


def trace_programs(setup: Setup, which=("prefill", "decode", "logp",
                                        "train")) -> list[Program]:
  """Traces the step's programs on abstract, sharded inputs."""
  s, cfg = setup.sizes, setup.config
  params = setup.state.params
  sp = sampling_params(cfg)
  key = _replicated(setup, jax.eval_shape(lambda: jax.random.key(0)))
  out = []
  with sharding.use_mesh(setup.mesh, setup.rules):
    prefill_traced = None
    if "prefill" in which or "decode" in which:
      def prefill(params, rest, tokens_bp, mask_bp):
        policy = nnx.merge(setup.graphdef, params, rest)
        _, mask_rp, _, _, carry = sampler.prefill(
            sampler.rollout_weights(policy), tokens_bp, mask_bp, sp)
        return mask_rp.sum(axis=1), carry
      prompts = _abstract(setup, (s.prompts, s.prompt_len), jnp.int32)
      prefill_traced = jax.jit(prefill).trace(params, setup.rest, prompts,
                                              prompts)
      if "prefill" in which:
        out.append(Program("prefill", prefill_traced, 1, 1))
    if "decode" in which:
      # The decode step's inputs are laid out as the prefill leaves them.
      prompt_len, carry = jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                         sharding=_carry_sharding(setup, a)),
          prefill_traced.out_info)

      # The rollout holds the stacked parameters and the weights its decode
      # loop reads (`decoder.DecodeWeights`: per layer, fused where the mesh
      # allows, whole along `embed`; made once per rollout): both are
      # arguments here (kept, though the parameters are unused), so the
      # memory analysis counts both.
      weights = _abstract_decode_weights(setup)

      def decode(params, rest, weights, prompt_len, carry, key):
        del params, rest
        return sampler.decode_step(weights, key, prompt_len, carry, params=sp)
      traced = jax.jit(decode, donate_argnums=(4,), keep_unused=True).trace(
          params, setup.rest, weights, prompt_len, carry, key)
      out.append(Program("decode", traced, s.new_tokens, 1))
    if "logp" in which:
      stats_fn = jax.jit(lambda p, rest, batch: ts.params_stats(
          setup.graphdef, rest, setup.loss_cfg, p, batch))
      kl = setup.loss_cfg.kl_coef > 0 or cfg.loss.get("kl_in_reward_coef",
                                                      0) > 0
      # Old log-probs, plus reference log-probs when a KL term needs them,
      # plus the optional after-update measurement (train.measure_every).
      calls = 1 + kl + (1.0 / cfg.train.measure_every
                        if cfg.train.get("measure_every", 0) else 0.0)
      out.append(Program("logp", stats_fn.trace(params, setup.rest, rl_batch(
          setup, s.rows)), calls, 1))
    if "train" in which:
      def step_fn(state, batch, key):
        # The base from the state (LoRA), else the (empty) rest.
        rest = setup.rest if state.frozen is None else state.frozen
        return ts.make_train_step(setup.graphdef, rest, setup.optimizer,
                                  setup.controller, setup.loss_cfg)(
                                      state, batch, key)
      step = jax.jit(step_fn, donate_argnums=(0,))
      # Per micro-batch: forward, backward (2 reads: activations' and
      # weights' gradients share one), remat re-forward.
      recompute = setup.model_cfg.effective_remat_policy != "none"
      passes = cfg.loss.num_micro_batches * (2 + recompute)
      out.append(Program("train", step.trace(
          setup.state, rl_batch(setup, s.minibatch_rows), key), s.updates,
          passes))
      if setup.critic is not None:
        out += _critic_programs(setup)
  return out


def _critic_batch(setup: Setup, rows: int) -> critic_lib.CriticBatch:
  b = rl_batch(setup, rows)
  return critic_lib.CriticBatch(
      tokens=b.tokens, positions=b.positions, attention_mask=b.attention_mask,
      completion_mask=b.completion_mask, values=b.old_logp,
      returns=b.advantages)


def _critic_programs(setup: Setup) -> list[Program]:
  """The critic's value pass and mini-batch update (`rl.update` runs both
  inside its one jit; here each holds the whole state, so the memory
  analysis counts policy and critic together)."""
  s, spec = setup.sizes, setup.critic
  own_trunk = spec.kind == "model"
  step = critic_lib.make_step(setup.graphdef, setup.rest, spec,
                              setup.config.loss.num_micro_batches)

  def values(state, batch):
    return critic_lib.values(setup.graphdef, setup.rest, spec,
                             state.critic.params, state.params, batch.tokens,
                             batch.positions, batch.attention_mask,
                             s.prompt_len)

  def train(state, batch):
    crit, metrics = step(state.critic, state.params, batch, state.hparams)
    return state.replace(critic=crit), metrics

  recompute = setup.model_cfg.effective_remat_policy != "none"
  # A `head` critic reads the policy's trunk forward only (no backward).
  passes = setup.config.loss.num_micro_batches * (
      (2 + recompute) if own_trunk else 1)
  return [
      Program("critic_values", jax.jit(values).trace(
          setup.state, _critic_batch(setup, s.rows)), 1, 1),
      Program("critic_train", jax.jit(train, donate_argnums=(0,)).trace(
          setup.state, _critic_batch(setup, s.minibatch_rows)), s.updates,
              passes)]


def _abstract_decode_weights(setup: Setup) -> decoder.DecodeWeights:
  """`DecodeWeights` as sharded abstract arrays, fused and laid out as
  `sampler.generate_arrays` makes them on this mesh."""
  cfg = setup.model_cfg
  with sharding.use_mesh(setup.mesh, setup.rules):
    fused = sampler.fuses_projections()
  axes = decoder.decode_weight_axes(cfg, fused)

  def one(shape, logical, dtype):
    spec = sharding.logical_to_spec(logical, setup.rules, shape, setup.mesh)
    return jax.ShapeDtypeStruct(shape, dtype,
                                sharding=NamedSharding(setup.mesh, spec))
  layer = {n: one(shape, layer_axes, cfg.dtype) for n, (shape, layer_axes)
           in decoder.decode_layer_specs(cfg, fused).items()}
  d, v = cfg.hidden_size, cfg.vocab_size
  return decoder.DecodeWeights(
      cfg=cfg, layers=tuple(dict(layer) for _ in range(cfg.num_layers)),
      embed=one((v, d), axes.embed, cfg.param_dtype),
      final_norm=one((d,), axes.final_norm, cfg.param_dtype),
      head=one((d, v), axes.head, cfg.dtype))


def _carry_sharding(setup: Setup, a) -> NamedSharding:
  """Rows over (data, fsdp); KV-cache heads over tensor, as prefill does."""
  if a.ndim == 4:  # a layer's KV cache, [R, K, H, S] or [R, K, S, H]
    axes = decoder.CACHE_AXES
  elif a.ndim == 0:
    axes = ()
  else:
    axes = ("act_batch",) + (None,) * (a.ndim - 1)
  return NamedSharding(setup.mesh, sharding.logical_to_spec(
      axes, setup.rules, a.shape, setup.mesh))


# ------------------------------------------------------------------ reports

@dataclasses.dataclass
class Report:
  """What the AOT check measured for one program (bytes are per device)."""
  name: str
  calls_per_step: float
  fits: bool
  hbm_capacity: int
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  code_bytes: int = 0
  total_bytes: int = 0
  xla_flops: float = 0.0
  xla_bytes: float = 0.0
  flops_global: float = 0.0
  roofline: cost.Roofline | None = None
  collectives: dict = dataclasses.field(default_factory=dict)
  # custom-call target -> count in the compiled HLO, plus "splash": the
  # Mosaic custom calls that are splash attention kernels.
  custom_calls: dict = dataclasses.field(default_factory=dict)
  compile_s: float = 0.0
  error: str = ""
  hlo_text: str = dataclasses.field(default="", repr=False)
  compiled: object = dataclasses.field(default=None, repr=False)


# The byte counts in XLA:TPU's out-of-memory messages, e.g. "the total memory
# required for HLO temporaries (38.13G) exceeds available HBM (15.75G)" or
# "Used 20.1G of 15.75G hbm".
_OOM = (re.compile(r"\(([\d.]+)([KMGT]?)\)\s+exceeds available HBM", re.I),
        re.compile(r"Used ([\d.]+)([KMGT]?)(?:i?B)? of [\d.]+[KMGT]?(?:i?B)? hbm",
                   re.I))
_UNIT = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def compile_program(setup: Setup, program: Program, *,
                    keep_hlo: bool = False) -> Report:
  """Compiles one program for the topology and measures it.

  A program that XLA refuses for lack of HBM is reported as not fitting
  (with the bytes XLA says it needed when the message gives them) rather
  than raised.
  """
  chip = setup.topology.chip
  report = Report(name=program.name, calls_per_step=program.calls_per_step,
                  fits=False, hbm_capacity=chip.hbm_bytes)
  report.flops_global = float(cost.jaxpr_flops(program.traced.jaxpr))
  start = time.perf_counter()
  try:
    compiled = program.traced.lower().compile()
  except Exception as e:  # pylint: disable=broad-except
    msg = str(e)
    if "RESOURCE_EXHAUSTED" not in msg and "memory" not in msg.lower():
      raise
    report.compile_s = time.perf_counter() - start
    report.error = msg.strip().splitlines()[0][:300]
    for pattern in _OOM:
      m = pattern.search(msg)
      if m:
        report.total_bytes = int(float(m.group(1)) *
                                 _UNIT[m.group(2).upper()])
        break
    return report
  report.compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  report.argument_bytes = mem.argument_size_in_bytes
  report.output_bytes = mem.output_size_in_bytes
  report.alias_bytes = mem.alias_size_in_bytes
  report.temp_bytes = mem.temp_size_in_bytes
  report.code_bytes = mem.generated_code_size_in_bytes
  # Donated inputs alias outputs: those bytes are held once.
  report.total_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                        - mem.alias_size_in_bytes + mem.temp_size_in_bytes +
                        mem.generated_code_size_in_bytes)
  report.fits = report.total_bytes <= chip.hbm_bytes
  analysis = compiled.cost_analysis() or {}
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  report.xla_flops = float(analysis.get("flops", 0.0))
  report.xla_bytes = float(analysis.get("bytes accessed", 0.0))
  # What a pass reads: the weights (a LoRA model's trainable params are its
  # adapters; its passes read the base too).
  b = state_bytes(setup)
  weights = (b["params"] + b["frozen"]) / setup.mesh.shape["tensor"]
  report.roofline = cost.roofline(
      flops_global=report.flops_global, num_devices=setup.mesh.size,
      xla_bytes=report.xla_bytes,
      io_bytes=mem.argument_size_in_bytes + mem.output_size_in_bytes -
      mem.alias_size_in_bytes,
      weight_bytes=program.weight_passes * weights,
      peak_flops=chip.peak_flops, hbm_bandwidth=chip.hbm_bandwidth)
  text = compiled.as_text()
  report.collectives = hlo.count_collectives(text)
  report.custom_calls = hlo.count_custom_calls(text)
  if keep_hlo:
    report.hlo_text = text
    report.compiled = compiled
  return report


@dataclasses.dataclass
class StepEstimate:
  """Roofline time of one RL step and its token throughput."""
  seconds: float
  tokens: int
  tokens_per_s: float
  per_program: dict


def step_estimate(setup: Setup, reports: list[Report]) -> StepEstimate | None:
  """Σ calls × roofline time over the step's programs (None if any failed)."""
  if any(r.roofline is None for r in reports):
    return None
  per = {r.name: r.calls_per_step * r.roofline.seconds for r in reports}
  s = setup.sizes
  tokens = s.rows * (s.prompt_len + s.new_tokens)
  total = sum(per.values())
  return StepEstimate(seconds=total, tokens=tokens,
                      tokens_per_s=tokens / total, per_program=per)


def state_bytes(setup: Setup) -> dict[str, int]:
  """Global bytes of params and optimizer state, from shapes alone."""
  def nbytes(tree):
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree))
  return {"params": nbytes(setup.state.params),
          "opt_state": nbytes(setup.state.opt_state),
          "ctrl_state": nbytes(setup.state.ctrl_state),
          # LoRA: the frozen (possibly quantised) base; 0 otherwise.
          "frozen": nbytes(setup.state.frozen),
          # PPO: the critic's params + optimizer state; 0 otherwise.
          "critic": nbytes(setup.state.critic)}


def check(config, which=("prefill", "decode", "logp", "train"),
          devices=None, keep_hlo: bool = False):
  """Builds, traces and compiles every program of `config`.

  Returns:
    (setup, reports, step_estimate or None).
  """
  setup = build_setup(config, devices)
  reports = [compile_program(setup, p, keep_hlo=keep_hlo)
             for p in trace_programs(setup, which)]
  return setup, reports, step_estimate(setup, reports)

