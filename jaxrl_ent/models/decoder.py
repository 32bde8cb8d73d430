"""Decoder-only LM (Llama 3, Qwen 2/2.5, Qwen 3) as a Flax NNX module.

Parameters carry logical axis names only (metadata `logical_axes`); the mesh
mapping lives in `jaxrl_ent.sharding`. Per-layer parameters are stacked on a
leading `layers` axis and the training forward pass runs `lax.scan` over
them, so compile time does not grow with depth. The cached forward pass of
the rollout (`cached_forward`) unrolls the layers instead, over per-layer
weights and cache arrays (see `KVCache` and `DecodeWeights` for why).

Axis legend: B batch, T time, S cache slots, L layers, V vocab, D hidden,
N query heads, K kv heads, H head dim, F MLP width.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax import struct
from jax import ad_checkpoint

from jaxrl_ent import sharding
from jaxrl_ent.models import attention as attention_lib
from jaxrl_ent.models import config as config_lib
from jaxrl_ent.models import decode_attention
from jaxrl_ent.models import layers
from jaxrl_ent.models import lora as lora_lib

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


def layer_param_specs(cfg: config_lib.ModelConfig
                      ) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
  """name -> (shape, logical axes) of one layer's parameters (no `layers`)."""
  return {n: (_LAYER_PARAMS[n][0](cfg), _LAYER_PARAMS[n][1])
          for n in layer_param_names(cfg)}


# Fused projections of the cached forward: name -> (parts, bias parts). Each
# part [D, ...] is flattened to [D, cols] and concatenated along the columns.
_FUSED = {"qkv_w": (("q_w", "k_w", "v_w"), ("q_b", "k_b", "v_b")),
          "gate_up_w": (("gate_w", "up_w"), ("gate_b", "up_b"))}


def _whole(axes: tuple) -> tuple:
  return tuple(None if a == "embed" else a for a in axes)


def decode_layer_specs(cfg: config_lib.ModelConfig, fused: bool
                       ) -> dict[str, tuple[tuple[int, ...], tuple]]:
  """name -> (shape, logical axes) of one layer of `DecodeWeights`.

  The axes are the parameters' with `embed` dropped: the decode weights are
  whole along the hidden dimension (see `DecodeWeights`).
  """
  specs = {n: (shape, _whole(axes))
           for n, (shape, axes) in layer_param_specs(cfg).items()}
  if not fused:
    return specs
  for name, (parts, biases) in _FUSED.items():
    cols = sum(int(np.prod(specs[n][0][1:])) for n in parts)
    specs[name] = ((cfg.hidden_size, cols), (None, None))
    if biases[0] in specs:
      specs[name[:-2] + "_b"] = ((cols,), (None,))
    for n in parts + biases:
      specs.pop(n, None)
  return specs


def decode_weight_axes(cfg: config_lib.ModelConfig, fused: bool
                       ) -> "DecodeWeights":
  """Logical axes of every leaf of `DecodeWeights` (same tree)."""
  layer = {n: axes for n, (_, axes) in decode_layer_specs(cfg, fused).items()}
  return DecodeWeights(cfg=cfg, layers=tuple(dict(layer)
                                             for _ in range(cfg.num_layers)),
                       embed=("vocab", None), final_norm=("norm",),
                       head=(None, "vocab"))


def _fuse_layer(p: dict[str, jax.Array]) -> dict[str, jax.Array]:
  p = dict(p)
  for name, (parts, biases) in _FUSED.items():
    d = p[parts[0]].shape[0]
    p[name] = jnp.concatenate([p.pop(n).reshape(d, -1) for n in parts], -1)
    if biases[0] in p:
      p[name[:-2] + "_b"] = jnp.concatenate(
          [p.pop(n).reshape(-1) for n in biases], -1)
  return p


class KVCache(NamedTuple):
  """Preallocated key/value cache for incremental decoding, one array a layer.

  Attributes:
    k: L arrays [B, K, H, S], keys (already rotated), slots last.
    v: L arrays [B, K, S, H], values.
    valid: bool [B, S], slots holding a real (non-padding) token.
    index: int32 scalar, the next slot to write (same for every row).

  Why these layouts: decoding is a chain of small per-(row, kv head) dots,
  and with keys [.., H, S] and values [.., S, H] both attention dots are
  plain [rows, c] @ [c, cols] products. Measured on XLA:CPU at the 5M
  benchmark model's decode shapes: 26 + 15 µs per layer for the two dots in
  these layouts against 120 + 113 µs with keys [.., S, H] and values
  [.., H, S], whose small batched dots fall off the fast path. One array per
  layer (not a stacked [L, ...]) lets each layer update its cache in place
  inside the decode loop instead of slicing and restacking it.
  """
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  valid: jax.Array
  index: jax.Array


# Logical axes of one layer's cache array (both layouts lead with [B, K]).
CACHE_AXES = ("act_batch", "act_kv_heads", None, None)


def init_cache(cfg: config_lib.ModelConfig, batch: int, max_len: int,
               dtype=None) -> KVCache:
  """An empty cache of `max_len` slots."""
  dtype = dtype or cfg.dtype
  k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, max_len)
  v_shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
  return KVCache(tuple(jnp.zeros(k_shape, dtype)
                       for _ in range(cfg.num_layers)),
                 tuple(jnp.zeros(v_shape, dtype)
                       for _ in range(cfg.num_layers)),
                 jnp.zeros((batch, max_len), bool), jnp.zeros((), jnp.int32))


@struct.dataclass
class DecodeWeights:
  """The weights of a cached forward pass, unstacked per layer.

  Made once per rollout (`DecoderLM.decode_weights`), outside the decode loop:
  slicing the stacked [L, ...] parameters inside the loop costs a copy of
  every layer's weights on every token on XLA:CPU (~15 % of a decode step),
  while the rollout holds one extra copy of the weights once. `cfg` is static.

  The weights are whole along the hidden (`embed`, i.e. FSDP) dimension:
  sharding them there, as the training state is, makes every decode step
  all-gather every layer's weights on every chip (275 all-gathers and
  14 GB per chip per token for Qwen2.5-0.5B on v5e-8 in the AOT check);
  gathering them once per rollout trades that for one copy of the weights
  per tensor-parallel group. Heads, MLP width and vocabulary stay split
  over `tensor`.

  With `fused`, each layer's q/k/v and gate/up projections are concatenated
  into one matrix each (`qkv_w`, `gate_up_w`): four dots a layer instead of
  seven, ~10 % of a decode step on XLA:CPU at 16 rows. Only for meshes that
  do not split heads or the MLP width, where the concatenated columns would
  not line up with the shards.
  """
  cfg: config_lib.ModelConfig = struct.field(pytree_node=False)
  layers: tuple[dict[str, jax.Array], ...]
  embed: jax.Array
  final_norm: jax.Array
  head: jax.Array


def _rope_tables(cfg: config_lib.ModelConfig, positions_bt):
  # A compile-time constant, not state: nothing to checkpoint or corrupt.
  inv_freq = np.asarray(config_lib.llama3_inv_freq(
      cfg.head_dim, cfg.rope_theta, cfg.rope_scaling), np.float32)
  return layers.rope_cos_sin(positions_bt, inv_freq)


def _embed(cfg: config_lib.ModelConfig, embed_vd, tokens_bt):
  x = jnp.take(embed_vd, tokens_bt, axis=0).astype(cfg.dtype)
  return sharding.constrain(x, ("act_batch", "act_len", "act_embed"))


def _flat_dots() -> bool:
  """Projections as 2-D matmuls on XLA:CPU (`layers.dense`: its layout
  assignment transposes 3-D dots' cotangents). Elsewhere the 3-D dots stay,
  so a sharded length axis (`act_len`) never has to merge with the batch."""
  return attention_lib.platform() == "cpu"


def _qkv(cfg: config_lib.ModelConfig, p, x_btd, cos, sin):
  """Pre-norm, q/k/v projections, optional qk-norm, RoPE."""
  h = layers.rms_norm(x_btd, p["attn_norm"], cfg.rms_norm_eps)
  if "qkv_w" in p:  # DecodeWeights(fused): one dot, then split the columns.
    qkv = h @ p["qkv_w"]
    if cfg.qkv_bias:
      qkv = qkv + p["qkv_b"]
    b, t, _ = h.shape
    nq = cfg.num_heads * cfg.head_dim
    nk = cfg.num_kv_heads * cfg.head_dim
    q = qkv[..., :nq].reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = qkv[..., nq:nq + nk].reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = qkv[..., nq + nk:].reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
  else:
    flat = _flat_dots()
    q = layers.dense(h, p["q_w"], flat=flat)
    k = layers.dense(h, p["k_w"], flat=flat)
    v = layers.dense(h, p["v_w"], flat=flat)
    if cfg.qkv_bias:
      q, k, v = q + p["q_b"], k + p["k_b"], v + p["v_b"]
  if cfg.qk_norm:
    q = layers.rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
    k = layers.rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
  q = layers.apply_rope(q, cos, sin)
  k = layers.apply_rope(k, cos, sin)
  q = sharding.constrain(q, ("act_batch", "act_len", "act_heads", None))
  return q, k, v


def _finish_layer(cfg: config_lib.ModelConfig, p, x_btd, attn_btnh):
  """Output projection, residual, pre-norm SwiGLU MLP, residual."""
  flat = _flat_dots()
  out = layers.dense(attn_btnh, p["o_w"], 2, flat=flat)
  if cfg.o_bias:
    out = out + p["o_b"]
  x = x_btd + out
  h = layers.rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
  if "gate_up_w" in p:  # DecodeWeights(fused)
    gu = h @ p["gate_up_w"]
    if cfg.mlp_bias:
      gu = gu + p["gate_up_b"]
    f = cfg.intermediate_size
    y = (jax.nn.silu(gu[..., :f]) * gu[..., f:]) @ p["down_w"]
    x = x + (y + p["down_b"] if cfg.mlp_bias else y)
  else:
    x = x + layers.swiglu(h, p["gate_w"], p["up_w"], p["down_w"],
                          p.get("gate_b"), p.get("up_b"), p.get("down_b"),
                          flat=flat)
  return sharding.constrain(x, ("act_batch", "act_len", "act_embed"))


def cached_forward(weights: DecodeWeights, tokens_bt, positions_bt,
                   attention_mask_bt, cache: KVCache):
  """Final hidden states of T new tokens that attend to a KV cache.

  The layers are unrolled (a Python loop, not a scan): each updates its own
  cache array in place, and the decode loop around this carries no stacked
  cache through a scan (a scan's per-layer outputs copy the whole cache on
  every token).

  Args:
    weights: `DecoderLM.decode_weights()`.
    tokens_bt: int [B, T] token ids.
    positions_bt: int [B, T] RoPE positions.
    attention_mask_bt: [B, T], 1 for real tokens (padding is never attended).
    cache: the tokens are written at `cache.index` and attend to every
      earlier valid slot.

  Returns:
    (hidden [B, T, D] in the compute dtype, updated cache).
  """
  cfg = weights.cfg
  t = tokens_bt.shape[1]
  start = cache.index
  valid = jax.lax.dynamic_update_slice(
      cache.valid, attention_mask_bt.astype(bool), (0, start))
  q_slot = start + jnp.arange(t)
  allowed = (q_slot[None, :, None] >= jnp.arange(valid.shape[1])[None, None, :]
             ) & valid[:, None, :]
  x = _embed(cfg, weights.embed, tokens_bt)
  cos, sin = _rope_tables(cfg, positions_bt)
  new_k, new_v = [], []
  for p, k_cache, v_cache in zip(weights.layers, cache.k, cache.v):
    q, k, v = _qkv(cfg, p, x, cos, sin)
    k_cache = jax.lax.dynamic_update_slice(
        k_cache, k.transpose(0, 2, 3, 1).astype(k_cache.dtype),
        (0, 0, 0, start))
    v_cache = jax.lax.dynamic_update_slice(
        v_cache, v.transpose(0, 2, 1, 3).astype(v_cache.dtype),
        (0, 0, start, 0))
    new_k.append(k_cache)
    new_v.append(v_cache)
    attn = layers.cached_attention(q, k_cache.astype(cfg.dtype),
                                   v_cache.astype(cfg.dtype), allowed)
    x = _finish_layer(cfg, p, x, attn)
  x = layers.rms_norm(x, weights.final_norm, cfg.rms_norm_eps)
  return x, KVCache(tuple(new_k), tuple(new_v), valid, start + t)


class SlotCache(NamedTuple):
  """Per-slot KV cache of the decode loop.

  Slot b holds one row in columns [starts[b], lengths[b]): its prompt,
  left-padded into the first P columns as the prefill leaves it (so
  starts = P - prompt length), then its completion, token i at column
  P + i. The rows of a static batch are in lockstep and write the same
  column each step (one dynamic-update-slice); with continuous batching a
  refilled slot restarts at column P while others are further along (a
  per-slot scatter). The decode attention reads only the filled columns
  (`decode_attention`). Same storage layouts as `KVCache`.

  Attributes:
    k: L arrays [B, K, H, S] (int8 when quantised), keys already rotated.
    v: L arrays [B, K, S, H] (int8 when quantised).
    lengths: int32 [B], end (exclusive) of each slot's filled columns.
    starts: int32 [B], first filled column of each slot.
    k_scale: () or L float32 arrays [B, K, 1, S], per (slot, kv head,
      column) scales of int8 keys.
    v_scale: () or L float32 arrays [B, K, S, 1].
  """
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  lengths: jax.Array
  starts: jax.Array
  k_scale: tuple[jax.Array, ...] = ()
  v_scale: tuple[jax.Array, ...] = ()

  @property
  def quantized(self) -> bool:
    return bool(self.k_scale)


def _write_column(cache_arr, new, col_b, axis, shared: bool):
  """cache_arr[b, ..., col_b[b] on `axis`, ...] = new[b].

  With `shared` (every slot at the same column), one in-place
  dynamic-update-slice at col_b[0]; otherwise one scatter.
  """
  new = new.astype(cache_arr.dtype)
  if shared:
    start = [0] * cache_arr.ndim
    start[axis] = col_b[0]
    return jax.lax.dynamic_update_slice(cache_arr, jnp.expand_dims(new, axis),
                                        start)
  rows = jnp.arange(cache_arr.shape[0])
  index = [rows] + [slice(None)] * (cache_arr.ndim - 1)
  index[axis] = col_b
  return cache_arr.at[tuple(index)].set(new, mode="drop")


def decode_forward(weights: DecodeWeights, tokens_b, cache: SlotCache, *,
                   attention: str = "blockwise", block: int = 128,
                   lockstep: bool = False, axis_name=None):
  """Final hidden states of one new token per slot, attending to its cache.

  Slot b's token goes to cache column `lengths[b]`, at RoPE position
  `lengths[b] - starts[b]`, and attends to its columns [starts, lengths]
  (itself included).

  Args:
    weights: `DecoderLM.decode_weights()`.
    tokens_b: int [B] token ids.
    cache: the slots' caches.
    attention: `decode_attention.IMPLS` member (resolved, not `auto`); for
      `pallas_tpu` keys are [B, K, S, H] and starts are 0.
    block: cache columns per attention block (divides the cache width).
    lockstep: every slot is at the same column (the static batch): the
      cache writes are then dynamic-update-slices, not scatters.
    axis_name: the replicas' vmap axis, if any (`decode_attention.blockwise`
      then reads as many blocks in every replica).

  Returns:
    (hidden [B, 1, D] in the compute dtype, cache with `lengths + 1`).
  """
  cfg = weights.cfg
  col = cache.lengths
  lengths = col + 1
  # Keys [B, K, H, S] (column axis 3), or [B, K, S, H] and left-aligned
  # slots for the TPU kernel (`decode_attention.token_major_keys`).
  token_major = decode_attention.token_major_keys(attention)
  k_axis = 2 if token_major else 3
  x = _embed(cfg, weights.embed, tokens_b[:, None])
  cos, sin = _rope_tables(cfg, (col - cache.starts)[:, None])
  new_k, new_v, new_ks, new_vs = [], [], [], []
  for i, (p, k_cache, v_cache) in enumerate(zip(weights.layers, cache.k,
                                                cache.v)):
    q, k, v = _qkv(cfg, p, x, cos, sin)
    k_bkh, v_bkh = k[:, 0], v[:, 0]
    k_scale = v_scale = None
    if cache.quantized:
      k_bkh, ks = decode_attention.quantize(k_bkh, axis=-1)
      v_bkh, vs = decode_attention.quantize(v_bkh, axis=-1)
      k_scale = _write_column(cache.k_scale[i], ks, col, k_axis, lockstep)
      v_scale = _write_column(cache.v_scale[i], vs, col, 2, lockstep)
      new_ks.append(k_scale)
      new_vs.append(v_scale)
    k_cache = _write_column(k_cache, k_bkh, col, k_axis, lockstep)
    v_cache = _write_column(v_cache, v_bkh, col, 2, lockstep)
    new_k.append(k_cache)
    new_v.append(v_cache)
    attn = decode_attention.attend(q[:, 0], k_cache, v_cache, lengths,
                                   k_scale, v_scale, starts_b=None if
                                   token_major else cache.starts,
                                   impl=attention, block=block,
                                   axis_name=axis_name)
    x = _finish_layer(cfg, p, x, attn[:, None])
  x = layers.rms_norm(x, weights.final_norm, cfg.rms_norm_eps)
  return x, SlotCache(tuple(new_k), tuple(new_v), lengths, cache.starts,
                      tuple(new_ks), tuple(new_vs))


def _logits(hidden_btd, head_dv):
  logits = jnp.einsum("btd,dv->btv", hidden_btd, head_dv,
                      preferred_element_type=jnp.float32)
  return sharding.constrain(logits, ("act_batch", "act_len", "act_vocab"))


def cached_logits(weights: DecodeWeights, hidden_btd):
  """float32 logits [B, T, V] of hidden states from `cached_forward`."""
  return _logits(hidden_btd, weights.head)


# Names `remat_policy="save_names"` keeps: the attention block's inputs and
# output, so the backward pass recomputes norms and the MLP but never the
# attention (the part whose cost grows with T).
SAVED_NAMES = ("attn_q", "attn_k", "attn_v", "attn_out")


def remat_layer(layer_fn, policy: str):
  """Wraps the scanned layer body for `ModelConfig.remat_policy`.

  Trade-offs (per layer; A = activations of one layer, the scan always
  keeps each layer's input x [B, T, D]):
    none          keeps everything the backward needs: fastest (one forward),
                  most memory (~all of A per layer, incl. MLP [B, T, F]).
    full          keeps only the layer input; the backward re-runs the whole
                  layer forward (+1 forward ≈ +33 % FLOPs); least memory.
    dots_saveable keeps every matmul output (projections, MLP; with the
                  `xla_naive` kernel also its [B, N, T, S] scores, so use it
                  only with a fused kernel); recomputes elementwise ops.
    dots_with_no_batch_dims_saveable  keeps the weight matmuls (q/k/v/o,
                  gate/up/down) but not the batched attention dots;
                  recomputes attention and elementwise ops.
    save_names    keeps `SAVED_NAMES` (q, k, v after RoPE and the attention
                  output): the attention is never recomputed, the MLP is.
                  The middle ground for long sequences, where attention
                  dominates the recompute.
  All wrap with `prevent_cse=False`: inside `lax.scan` the loop already stops
  XLA from merging the recompute with the forward, and CSE protection would
  only add barriers.
  """
  if policy == "none":
    return layer_fn
  policies = jax.checkpoint_policies
  named = {
      "full": None,
      "dots_saveable": policies.dots_saveable,
      "dots_with_no_batch_dims_saveable":
          policies.dots_with_no_batch_dims_saveable,
      "save_names": policies.save_only_these_names(*SAVED_NAMES),
  }
  if policy not in named:
    raise ValueError(f"remat_policy={policy!r}; expected one of "
                     f"{config_lib.REMAT_POLICIES}.")
  return jax.checkpoint(layer_fn, prevent_cse=False, policy=named[policy])


class Layers(nnx.Module):
  """The stacked per-layer parameters ([L, ...] each)."""

  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.02)
    for name, (shape, axes) in layer_param_specs(cfg).items():
      shape = (cfg.num_layers,) + shape
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

  def decode_weights(self, per_layer=None, fuse: bool = False
                     ) -> DecodeWeights:
    """Per-layer weights in the compute dtype for `cached_forward`.

    Args:
      per_layer: optional already unstacked layer weights (L dicts shaped as
        `decode_layer_specs`), used as given (fused if they hold `qkv_w`);
        by default they are sliced from the stacked parameters here.
      fuse: concatenate the q/k/v and gate/up projections (see
        `DecodeWeights`); only when slicing here.
    """
    cfg = self.cfg
    if per_layer is None:
      # LoRA: each layer's merged weight, by the same ops as the training
      # scan (`lora.layer_weights`), so rollout and training agree exactly.
      spec = getattr(self.layers, "lora", None)
      stacked = lora_lib.stacked_inputs(self.layers, layer_param_names(cfg),
                                        cfg.dtype)
      if spec is not None:
        # One merge vmapped over the layer axis (as `lora.merged_weights`):
        # unrolled, the dequantisation and A @ B of every layer were L
        # copies of the same subgraph in the rollout program.
        stacked = jax.vmap(
            lambda raw: lora_lib.layer_weights(spec, raw, cfg.dtype))(stacked)
      per_layer = tuple({n: w[i] for n, w in stacked.items()}
                        for i in range(cfg.num_layers))
      if fuse:
        per_layer = tuple(_fuse_layer(p) for p in per_layer)
    weights = DecodeWeights(cfg=cfg, layers=per_layer, embed=self.embed[...],
                            final_norm=self.final_norm[...],
                            head=self.head_weight())
    # Gather along `embed` once here (a no-op without an active mesh).
    axes = decode_weight_axes(cfg, "qkv_w" in per_layer[0])
    return jax.tree.map(sharding.constrain, weights, axes)

  def hidden_states(self, tokens_bt, positions_bt=None, attention_mask_bt=None,
                    segment_ids_bt=None):
    """Final RMS-normalised hidden states of a whole sequence (no cache).

    Args:
      tokens_bt: int [B, T] token ids.
      positions_bt: int [B, T] RoPE positions (default: 0..T-1). With left
        padding, pass positions that start at 0 on the first real token;
        packed rows restart them at 0 in every segment.
      attention_mask_bt: [B, T], 1 for real tokens, 0 for padding (keys that
        are padding are never attended to). Default: all real.
      segment_ids_bt: optional int [B, T]: tokens attend causally within
        their segment only (packed rows, `models.packing`); 0 marks padding.
        Default: the attention mask (one segment of real tokens, padding a
        segment of its own), which gives every real token the same result
        as the [B, T, S] mask `causal & key_is_real`.

    Returns:
      (hidden [B, T, D] in the compute dtype, None). The second element keeps
      the signature of the cached path (`__call__` with a cache).
    """
    cfg = self.cfg
    b, t = tokens_bt.shape
    if positions_bt is None:
      positions_bt = jnp.broadcast_to(jnp.arange(t), (b, t))
    if segment_ids_bt is None:
      if attention_mask_bt is None:
        segment_ids_bt = jnp.ones((b, t), jnp.int32)
      else:
        segment_ids_bt = attention_mask_bt.astype(bool).astype(jnp.int32)
    segment_ids_bt = segment_ids_bt.astype(jnp.int32)

    x = _embed(cfg, self.embed[...], tokens_bt)
    cos, sin = _rope_tables(cfg, positions_bt)
    stacked = lora_lib.stacked_inputs(self.layers, layer_param_names(cfg),
                                      cfg.dtype)
    spec = getattr(self.layers, "lora", None)
    name = ad_checkpoint.checkpoint_name

    def layer(x, raw):
      # Identity without LoRA; else dequantise / merge this layer only.
      p = lora_lib.layer_weights(spec, raw, cfg.dtype)
      q, k, v = _qkv(cfg, p, x, cos, sin)
      q, k, v = (name(q, "attn_q"), name(k, "attn_k"), name(v, "attn_v"))
      attn = attention_lib.attention(q, k, v, segment_ids_bt,
                                     impl=cfg.attention_impl)
      attn = name(attn, "attn_out")
      return _finish_layer(cfg, p, x, attn), None

    layer = remat_layer(layer, cfg.effective_remat_policy)
    x, _ = jax.lax.scan(layer, x, stacked,
                        unroll=min(cfg.scan_unroll, cfg.num_layers))
    return layers.rms_norm(x, self.final_norm[...], cfg.rms_norm_eps), None

  def __call__(self, tokens_bt, positions_bt=None, attention_mask_bt=None,
               cache: KVCache | None = None):
    """Logits [B, T, V] (float32) and the updated cache (None without one).

    With a cache, the T tokens are written at `cache.index` (positions then
    default to continuing from it) and attend to every earlier valid slot.
    """
    if cache is None:
      x, _ = self.hidden_states(tokens_bt, positions_bt, attention_mask_bt)
      return _logits(x, self.head_weight()), None
    b, t = tokens_bt.shape
    if positions_bt is None:
      positions_bt = jnp.broadcast_to(cache.index + jnp.arange(t), (b, t))
    if attention_mask_bt is None:
      attention_mask_bt = jnp.ones((b, t), bool)
    weights = self.decode_weights()
    x, cache = cached_forward(weights, tokens_bt, positions_bt,
                              attention_mask_bt, cache)
    return cached_logits(weights, x), cache


def init_model(cfg: config_lib.ModelConfig, seed: int = 0) -> DecoderLM:
  """A randomly initialised model (unsharded; see `models.hf_io` for meshes)."""
  return DecoderLM(cfg, rngs=nnx.Rngs(seed))


def num_params(model: DecoderLM) -> int:
  state = nnx.state(model, nnx.Param)
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))
