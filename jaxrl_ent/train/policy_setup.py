"""Builds the policy and tokenizer a run starts from, and its warm start.

Restore order for the *initial weights* (the run's own checkpoints come
first, see `train.checkpoint`): `config.model_path` (an HF folder) → a tiny
model built from `config.model` with an in-process tokenizer (synthetic
tasks), optionally warm-started by supervised fine-tuning on the task's
demonstrations (`config.sft`), cached in `<workdir>/sft_policy` so a rerun
or a comparison study reuses it.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from jaxrl_ent import models
from jaxrl_ent import sharding
from jaxrl_ent import storage
from jaxrl_ent.models import lora as lora_lib
from jaxrl_ent.models import tiny_hf
from jaxrl_ent.rewards import tasks
from jaxrl_ent.train import config_blocks
from jaxrl_ent.train import distributed
from jaxrl_ent.train import optim
from jaxrl_ent.train import sft as sft_lib
from jaxrl_ent.rl import state as state_lib

_LOG = logging.getLogger(__name__)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def task_examples(data_cfg, split: str, n: int) -> list[dict]:
  return tasks.generate(data_cfg.task, n, split=split, seed=data_cfg.task_seed,
                        **dict(data_cfg.task_kwargs))


def build_tokenizer_for_task(data_cfg):
  """A byte-level BPE trained on the task's train prompts and answers."""
  corpus = [f"{e['prompt']} {e['answer']}"
            for e in task_examples(data_cfg, "train", 2000)]
  return tiny_hf.tiny_tokenizer(corpus, vocab_size=data_cfg.get(
      "tokenizer_vocab_size", 320))


def tiny_model_config(config, tokenizer) -> models.ModelConfig:
  """The Qwen2-style `ModelConfig` of the tiny model of `config.model`."""
  dtype = _DTYPES[config.model.get("dtype", "float32")]
  m = config.model
  return models.ModelConfig(
      model_type="qwen2", vocab_size=len(tokenizer),
      hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
      num_layers=m.num_layers, num_heads=m.num_heads,
      num_kv_heads=m.num_kv_heads, head_dim=m.hidden_size // m.num_heads,
      qkv_bias=True, max_position_embeddings=m.max_position_embeddings,
      tie_word_embeddings=m.get("tie_word_embeddings", True), dtype=dtype,
      param_dtype=dtype, **config_blocks.model_options(config))


def _require_task(config):
  if not config.data.task:
    raise ValueError("config.model_path is empty and config.data.task is "
                     "not set: give a checkpoint, or a synthetic task to "
                     "build a tiny model for.")


def warm_start_seed(config) -> int:
  """Seed of the initial weights and the warm start: `sft.seed`, or the
  run's `seed` when it is -1 or absent. A fixed `sft.seed` lets runs of
  different seeds share one warm-started policy (the study does, so that its
  seeds vary what reinforcement learning does, not where it starts)."""
  s = int(config.sft.get("seed", -1)) if "sft" in config else -1
  return s if s >= 0 else int(config.seed)


def initial_policy(config, mesh):
  """(policy, tokenizer) before any warm start.

  The HF checkpoint at `config.model_path`, else the tiny model of
  `config.model` (random init, seed `warm_start_seed(config)`) with the
  task's tokenizer.
  """
  dtype = _DTYPES[config.model.get("dtype", "float32")]
  rules = sharding.merge_rules(dict(config.sharding.rules))
  if config.model_path:
    tokenizer = models.load_tokenizer(config.model_path)
    policy = models.from_pretrained(
        config.model_path, mesh, dtype=dtype, rules=rules,
        options=config_blocks.model_options(config))
    return policy, tokenizer
  _require_task(config)
  tokenizer = build_tokenizer_for_task(config.data)
  cfg = tiny_model_config(config, tokenizer)
  return models.init_sharded(cfg, mesh, seed=warm_start_seed(config),
                             rules=rules), tokenizer


def build_policy(config, mesh, workdir):
  """(policy, tokenizer) for the run; see the module docstring. With
  `config.lora.enabled`, the base policy gets LoRA adapters (`add_lora`)."""
  policy, tokenizer = _base_policy(config, mesh, workdir)
  return add_lora(policy, config, mesh), tokenizer


def lora_spec(config) -> "lora_lib.LoraSpec | None":
  """The run's `models.lora.LoraSpec`, or None without `config.lora.enabled`."""
  c = config.get("lora")
  if c is None or not c.enabled:
    return None
  if float(c.get("dropout", 0.0)) != 0.0:
    raise ValueError("lora.dropout must be 0.0 (see configs/common.py "
                     "lora_config).")
  return lora_lib.make_spec(
      rank=c.rank, alpha=c.alpha, quant=c.quant,
      targets=tuple(t.strip() for t in c.targets.split(",") if t.strip()))


def add_lora(policy, config, mesh):
  """`policy` with the run's LoRA adapters, sharded by the rules (or as is)."""
  spec = lora_spec(config)
  if spec is None:
    return policy
  rules = sharding.merge_rules(dict(config.sharding.rules))
  return lora_lib.lora_sharded(policy, spec, mesh,
                               seed=int(config.lora.get("seed", 0)),
                               rules=rules)


def _base_policy(config, mesh, workdir):
  if config.model_path:
    return initial_policy(config, mesh)
  _require_task(config)
  dtype = _DTYPES[config.model.get("dtype", "float32")]
  rules = sharding.merge_rules(dict(config.sharding.rules))
  sft_dir = storage.path(workdir) / "sft_policy"
  cached = config.sft.steps > 0 and (sft_dir / "config.json").exists()
  if jax.process_count() > 1:
    # One decision for all processes: process 0 may already be writing the
    # folder when a slower process looks (the gather is a barrier).
    cached = all(distributed.allgather_object(cached))
  if cached:
    _LOG.info("reusing the warm-started policy in %s", sft_dir)
    return (models.from_pretrained(
        sft_dir, mesh, dtype=dtype, rules=rules,
        options=config_blocks.model_options(config)),
            models.load_tokenizer(sft_dir))
  policy, tokenizer = initial_policy(config, mesh)
  if config.sft.steps > 0:
    policy = supervised_warm_start(policy, tokenizer, config, mesh)
    models.save_pretrained(policy, sft_dir, tokenizer=tokenizer)
  return policy, tokenizer


def demonstration_batches(examples, tokenizer, *, batch_size: int,
                          seq_len: int, seed: int):
  """Endless shuffled batches of `prompt answer<eos>` with a target mask."""
  eos = tokenizer.eos_token_id
  rows = []
  for e in examples:
    p = tokenizer(e["prompt"])["input_ids"]
    a = tokenizer(" " + e["answer"])["input_ids"] + [eos]
    if len(p) + len(a) <= seq_len:
      rows.append((p, a))
  if not rows:
    raise ValueError(f"no demonstration fits sft.seq_len={seq_len}.")
  rng = np.random.default_rng(seed)
  pad = tokenizer.pad_token_id or 0
  while True:
    idx = rng.integers(0, len(rows), batch_size)
    tokens = np.full((batch_size, seq_len), pad, np.int32)
    loss = np.zeros((batch_size, seq_len), np.int32)
    attn = np.zeros((batch_size, seq_len), np.int32)
    for i, j in enumerate(idx):
      p, a = rows[j]
      tokens[i, :len(p) + len(a)] = p + a
      attn[i, :len(p) + len(a)] = 1
      loss[i, len(p):len(p) + len(a)] = 1
    positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32),
                                tokens.shape)
    yield sft_lib.SFTBatch(tokens=tokens, positions=positions,
                           attention_mask=attn, loss_mask=loss)


def supervised_warm_start(policy, tokenizer, config, mesh):
  """`config.sft.steps` of next-token training on task demonstrations."""
  s = config.sft
  examples = tasks.demonstrations(
      config.data.task, task_examples(config.data, "train", s.num_examples),
      accuracy=float(s.get("demo_accuracy", 1.0)),
      seed=warm_start_seed(config))
  graphdef, params, rest = state_lib.split_model(policy)
  opt = optim.make_optimizer(lr=s.lr, total_steps=s.steps,
                             warmup_steps=min(20, s.steps // 10),
                             schedule="cosine", grad_clip=1.0)
  with sharding.use_mesh(mesh):
    state = state_lib.create(params, opt, optax.identity())
    step = sft_lib.make_sft_step(graphdef, rest, opt)
    batches = demonstration_batches(examples, tokenizer,
                                    batch_size=s.batch_size,
                                    seq_len=s.seq_len,
                                    seed=warm_start_seed(config))
    bar = tqdm.trange(s.steps, desc="sft warm start", leave=False,
                      disable=jax.process_index() != 0)
    for i in bar:
      state, metrics = step(state, next(batches))
      if i % 20 == 0 or i == s.steps - 1:
        bar.set_postfix(nll=f"{float(metrics['sft/nll']):.3f}")
  return nnx.merge(graphdef, state.params, rest)
