"""Decoder-only LM (Llama 3, Qwen 2/2.5, Qwen 3) as a Flax NNX module.

Parameters carry logical axis names only (metadata `logical_axes`); the mesh
mapping lives in `jaxrl_ent.sharding`. Per-layer parameters are stacked on a
leading `layers` axis and the forward pass runs `lax.scan` over them, so
compile time does not grow with depth.

Axis legend: B batch, T time, S cache slots, L layers, V vocab, D hidden,
N query heads, K kv heads, H head dim, F MLP width.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_ent import sharding
from jaxrl_ent.models import config as config_lib
from jaxrl_ent.models import layers

# name -> (shape builder, logical axes); the order fixes the scan carry layout.
_LAYER_PARAMS = {
    "attn_norm": (lambda c: (c.hidden_size,), ("norm",)),
    "q_w": (lambda c: (c.hidden_size, c.num_heads, c.head_dim),
            ("embed", "q_heads", "head_dim")),
    "k_w": (lambda c: (c.hidden_size, c.num_kv_heads, c.head_dim),
            ("embed", "kv_heads", "head_dim")),
    "v_w": (lambda c: (c.hidden_size, c.num_kv_heads, c.head_dim),
            ("embed", "kv_heads", "head_dim")),
    "o_w": (lambda c: (c.num_heads, c.head_dim, c.hidden_size),
            ("q_heads", "head_dim", "embed")),
    "q_b": (lambda c: (c.num_heads, c.head_dim), ("q_heads", "head_dim")),
    "k_b": (lambda c: (c.num_kv_heads, c.head_dim), ("kv_heads", "head_dim")),
    "v_b": (lambda c: (c.num_kv_heads, c.head_dim), ("kv_heads", "head_dim")),
    "o_b": (lambda c: (c.hidden_size,), ("norm",)),
    "q_norm": (lambda c: (c.head_dim,), ("norm",)),
    "k_norm": (lambda c: (c.head_dim,), ("norm",)),
    "mlp_norm": (lambda c: (c.hidden_size,), ("norm",)),
    "gate_w": (lambda c: (c.hidden_size, c.intermediate_size),
               ("embed", "mlp")),
    "up_w": (lambda c: (c.hidden_size, c.intermediate_size),
             ("embed", "mlp")),
    "down_w": (lambda c: (c.intermediate_size, c.hidden_size),
               ("mlp", "embed")),
    "gate_b": (lambda c: (c.intermediate_size,), ("mlp",)),
    "up_b": (lambda c: (c.intermediate_size,), ("mlp",)),
    "down_b": (lambda c: (c.hidden_size,), ("norm",)),
}


def layer_param_names(cfg: config_lib.ModelConfig) -> tuple[str, ...]:
  """Names of the per-layer parameters this architecture has."""
  skip = set()
  if not cfg.qkv_bias:
    skip |= {"q_b", "k_b", "v_b"}
  if not cfg.o_bias:
    skip.add("o_b")
  if not cfg.qk_norm:
    skip |= {"q_norm", "k_norm"}
  if not cfg.mlp_bias:
    skip |= {"gate_b", "up_b", "down_b"}
  return tuple(n for n in _LAYER_PARAMS if n not in skip)


class KVCache(NamedTuple):
  """Preallocated key/value cache for incremental decoding.

  Attributes:
    k: [L, B, S, K, H] keys (already rotated).
    v: [L, B, S, K, H] values.
    valid: bool [B, S], slots holding a real (non-padding) token.
    index: int32 scalar, the next slot to write (same for every row).
  """
  k: jax.Array
  v: jax.Array
  valid: jax.Array
  index: jax.Array


def init_cache(cfg: config_lib.ModelConfig, batch: int, max_len: int,
               dtype=None) -> KVCache:
  """An empty cache of `max_len` slots."""
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  dtype = dtype or cfg.dtype
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                 jnp.zeros((batch, max_len), bool), jnp.zeros((), jnp.int32))


class Layers(nnx.Module):
  """The stacked per-layer parameters ([L, ...] each)."""

  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.02)
    for name in layer_param_names(cfg):
      shape_fn, axes = _LAYER_PARAMS[name]
      shape = (cfg.num_layers,) + shape_fn(cfg)
      if name.endswith("norm"):
        value = jnp.ones(shape, cfg.param_dtype)
      elif name.endswith("_b"):
        value = jnp.zeros(shape, cfg.param_dtype)
      else:
        value = init(rngs.params(), shape, cfg.param_dtype)
      setattr(self, name, nnx.Param(value, logical_axes=("layers",) + axes))


class DecoderLM(nnx.Module):
  """A decoder-only causal LM.

  `hidden_states` gives the final normalised hidden states (for the chunked
  token statistics of the entropy path); `__call__` gives logits.
  """

  def __init__(self, cfg: config_lib.ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    init = nnx.initializers.normal(0.02)
    v, d = cfg.vocab_size, cfg.hidden_size
    self.embed = nnx.Param(init(rngs.params(), (v, d), cfg.param_dtype),
                           logical_axes=("vocab", "embed"))
    self.layers = Layers(cfg, rngs)
    self.final_norm = nnx.Param(jnp.ones((d,), cfg.param_dtype),
                                logical_axes=("norm",))
    if not cfg.tie_word_embeddings:
      self.lm_head = nnx.Param(init(rngs.params(), (d, v), cfg.param_dtype),
                               logical_axes=("embed", "vocab"))

  def head_weight(self) -> jax.Array:
    """LM head [D, V] in the compute dtype (the embedding, transposed, if tied)."""
    w = self.embed[...].T if self.cfg.tie_word_embeddings else self.lm_head[...]
    return w.astype(self.cfg.dtype)

  def hidden_states(self, tokens_bt, positions_bt=None, attention_mask_bt=None,
                    cache: KVCache | None = None):
    """Final RMS-normalised hidden states.

    Args:
      tokens_bt: int [B, T] token ids.
      positions_bt: int [B, T] RoPE positions (default: 0..T-1, or continuing
        from `cache.index`). With left padding, pass positions that start at 0
        on the first real token.
      attention_mask_bt: [B, T], 1 for real tokens, 0 for padding (keys that
        are padding are never attended to). Default: all real.
      cache: optional KV cache; the T new tokens are written at
        `cache.index` and attend to every earlier valid slot.

    Returns:
      (hidden [B, T, D] in the compute dtype, updated cache or None).
    """
    cfg = self.cfg
    b, t = tokens_bt.shape
    start = 0 if cache is None else cache.index
    if positions_bt is None:
      positions_bt = jnp.broadcast_to(start + jnp.arange(t), (b, t))
    if attention_mask_bt is None:
      attention_mask_bt = jnp.ones((b, t), bool)
    attention_mask_bt = attention_mask_bt.astype(bool)

    x = jnp.take(self.embed[...], tokens_bt, axis=0).astype(cfg.dtype)
    x = sharding.constrain(x, ("act_batch", "act_len", "act_embed"))
    # A compile-time constant, not state: nothing to checkpoint or corrupt.
    inv_freq = np.asarray(config_lib.llama3_inv_freq(
        cfg.head_dim, cfg.rope_theta, cfg.rope_scaling), np.float32)
    cos, sin = layers.rope_cos_sin(positions_bt, inv_freq)

    if cache is None:
      q_slot = jnp.arange(t)
      allowed = (q_slot[None, :, None] >= q_slot[None, None, :]) & (
          attention_mask_bt[:, None, :])
      valid = None
    else:
      s = cache.valid.shape[1]
      valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask_bt,
                                           (0, start))
      q_slot = start + jnp.arange(t)
      allowed = (q_slot[None, :, None] >= jnp.arange(s)[None, None, :]) & (
          valid[:, None, :])

    names = layer_param_names(cfg)
    stacked = {n: getattr(self.layers, n)[...].astype(cfg.dtype)
               for n in names}

    def layer(x, xs):
      p, k_cache, v_cache = xs
      h = layers.rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
      q = jnp.einsum("btd,dnh->btnh", h, p["q_w"])
      k = jnp.einsum("btd,dkh->btkh", h, p["k_w"])
      v = jnp.einsum("btd,dkh->btkh", h, p["v_w"])
      if cfg.qkv_bias:
        q, k, v = q + p["q_b"], k + p["k_b"], v + p["v_b"]
      if cfg.qk_norm:
        q = layers.rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
        k = layers.rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
      q = layers.apply_rope(q, cos, sin)
      k = layers.apply_rope(k, cos, sin)
      q = sharding.constrain(q, ("act_batch", "act_len", "act_heads", None))
      if k_cache is not None:
        k_cache = jax.lax.dynamic_update_slice(
            k_cache, k.astype(k_cache.dtype), (0, start, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(
            v_cache, v.astype(v_cache.dtype), (0, start, 0, 0))
        k, v = k_cache.astype(cfg.dtype), v_cache.astype(cfg.dtype)
      attn = layers.attention(q, k, v, allowed)
      out = jnp.einsum("btnh,nhd->btd", attn, p["o_w"])
      if cfg.o_bias:
        out = out + p["o_b"]
      x = x + out
      h = layers.rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
      x = x + layers.swiglu(h, p["gate_w"], p["up_w"], p["down_w"],
                            p.get("gate_b"), p.get("up_b"), p.get("down_b"))
      x = sharding.constrain(x, ("act_batch", "act_len", "act_embed"))
      return x, (k_cache, v_cache)

    if cfg.remat:
      layer = jax.checkpoint(layer, prevent_cse=False)
    kv = (None, None) if cache is None else (cache.k, cache.v)
    x, (k_new, v_new) = jax.lax.scan(layer, x, (stacked,) + kv)
    x = layers.rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)
    if cache is not None:
      cache = KVCache(k_new, v_new, valid, start + t)
    return x, cache

  def __call__(self, tokens_bt, positions_bt=None, attention_mask_bt=None,
               cache: KVCache | None = None):
    """Logits [B, T, V] (float32) and the updated cache (None without one)."""
    x, cache = self.hidden_states(tokens_bt, positions_bt, attention_mask_bt,
                                  cache)
    logits = jnp.einsum("btd,dv->btv", x, self.head_weight(),
                        preferred_element_type=jnp.float32)
    logits = sharding.constrain(logits, ("act_batch", "act_len", "act_vocab"))
    return logits, cache


def init_model(cfg: config_lib.ModelConfig, seed: int = 0) -> DecoderLM:
  """A randomly initialised model (unsharded; see `models.hf_io` for meshes)."""
  return DecoderLM(cfg, rngs=nnx.Rngs(seed))


def num_params(model: DecoderLM) -> int:
  state = nnx.state(model, nnx.Param)
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))
