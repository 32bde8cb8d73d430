"""Length-aware attention of one decode step over per-slot KV caches.

A rollout's decode step attends one new token per slot to that slot's cache,
whose columns [starts[b], lengths[b]) are filled (the left-padded prompt,
then the completion). The kernels here read only up to the filled part, so
a step costs O(filled) instead of O(cache width):

  `blockwise`  XLA, any backend: a `scan` over cache blocks with an online
               (flash) softmax, whose body is a `cond` that skips blocks
               past the longest filled slot (unread); within the filled
               blocks, columns past a slot's length are masked. The scan's
               static trip count keeps the step's FLOPs countable (the AOT
               check counts the full-cache step, an upper bound).
  `full`       the whole cache width, masked (the reference, and what the
               rollout did before).
  `pallas_gpu` `jax.experimental.pallas.ops.gpu.decode_attention.gqa` with
               `start_idx`/`kv_seq_len` (per-slot bounds inside the kernel);
               it wants
               [B, S, K, H] caches, so the storage layout is transposed for it
               (a copy per step: correct everywhere, fast only with a
               GPU-native cache layout, which this module does not pick).

Caches are in `decoder.SlotCache`'s storage layout: keys [B, K, H, S], values
[B, K, S, H], optionally int8 with float32 scales per (slot, kv head, column).

Axis legend: B slots, N query heads, K kv heads, G = N/K, H head dim,
S cache columns, J columns of one block.
"""

import jax
import jax.numpy as jnp
import numpy as np

# Same value as the training attention's mask: large negative but finite, so
# a block with no filled column stays finite and is wiped out exactly (its
# weight is multiplied by exp(mask - real max) = 0) once a filled one arrives.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)

IMPLS = ("blockwise", "full", "pallas_gpu")


def _grouped(q_bnh, num_kv_heads):
  b, n, h = q_bnh.shape
  return q_bnh.reshape(b, num_kv_heads, n // num_kv_heads, h)


def _dequant(x, scale, dtype):
  if scale is None:
    return x.astype(dtype)
  return (x.astype(jnp.float32) * scale).astype(dtype)


def _in_range(col, starts_b, lengths_b):
  """bool [B, 1, 1, J]: column within [starts, lengths) of each slot."""
  ok = col < lengths_b[:, None, None, None]
  if starts_b is not None:
    ok &= col >= starts_b[:, None, None, None]
  return ok


def full(q_bnh, k_bkhs, v_bksh, lengths_b, k_scale=None, v_scale=None,
         starts_b=None):
  """Attention over every cache column, masked outside [starts, lengths).

  Args:
    q_bnh: [B, N, H] queries of the new token.
    k_bkhs: [B, K, H, S] keys (int8 with `k_scale` [B, K, 1, S]).
    v_bksh: [B, K, S, H] values (int8 with `v_scale` [B, K, S, 1]).
    lengths_b: int32 [B] end (exclusive) of each slot's filled columns.
    starts_b: optional int32 [B] first filled column (default 0).

  Returns:
    [B, N, H] in q's dtype.
  """
  b, n, h = q_bnh.shape
  kh = k_bkhs.shape[1]
  q = _grouped(q_bnh, kh)
  k = _dequant(k_bkhs, k_scale, q.dtype)
  v = _dequant(v_bksh, v_scale, q.dtype)
  s = jnp.matmul(q, k, preferred_element_type=jnp.float32) * (h ** -0.5)
  col = jnp.arange(k.shape[-1])
  s = jnp.where(_in_range(col, starts_b, lengths_b), s, MASK_VALUE)
  probs = jax.nn.softmax(s, axis=-1).astype(v.dtype)
  return jnp.matmul(probs, v).reshape(b, n, h).astype(q_bnh.dtype)


def blockwise(q_bnh, k_bkhs, v_bksh, lengths_b, k_scale=None, v_scale=None,
              starts_b=None, *, block: int):
  """Online-softmax attention over the filled blocks only (same as `full`).

  Only the first ceil(max(lengths) / block) blocks are read (the others'
  `cond` branch is the identity): a step early in a rollout reads a
  prompt-sized prefix of the cache, not the whole width. Columns at or past
  a slot's length are masked; a block of them adds exactly zero (its exp
  underflows to 0 and the running max does not move), so the result does
  not depend on how many blocks the longest slot makes the loop read.

  Args:
    block: J, columns per block; must divide S.
    (others as `full`)
  """
  b, n, h = q_bnh.shape
  kh, s_len = k_bkhs.shape[1], k_bkhs.shape[-1]
  if s_len % block:
    raise ValueError(f"cache width {s_len} is not a multiple of the block "
                     f"{block}.")
  q = _grouped(q_bnh, kh)
  g = q.shape[2]
  scale = h ** -0.5
  num_blocks = (jnp.max(lengths_b) + block - 1) // block

  def read(j, carry):
    m, l, acc = carry
    start = j * block
    kb = jax.lax.dynamic_slice_in_dim(k_bkhs, start, block, axis=3)
    vb = jax.lax.dynamic_slice_in_dim(v_bksh, start, block, axis=2)
    kb = _dequant(kb, None if k_scale is None else
                  jax.lax.dynamic_slice_in_dim(k_scale, start, block, 3),
                  q.dtype)
    vb = _dequant(vb, None if v_scale is None else
                  jax.lax.dynamic_slice_in_dim(v_scale, start, block, 2),
                  q.dtype)
    sc = jnp.matmul(q, kb, preferred_element_type=jnp.float32) * scale
    sc = jnp.where(_in_range(start + jnp.arange(block), starts_b, lengths_b),
                   sc, MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(sc, axis=-1, keepdims=True))
    corr = jnp.exp(m - m_new)
    p = jnp.exp(sc - m_new)
    l = l * corr + jnp.sum(p, axis=-1, keepdims=True)
    acc = acc * corr + jnp.matmul(p.astype(vb.dtype), vb,
                                  preferred_element_type=jnp.float32)
    return m_new, l, acc

  init = (jnp.full((b, kh, g, 1), MASK_VALUE, jnp.float32),
          jnp.zeros((b, kh, g, 1), jnp.float32),
          jnp.zeros((b, kh, g, h), jnp.float32))
  def body(carry, j):
    return jax.lax.cond(j < num_blocks, read, lambda j, c: c, j, carry), None

  (_, l, acc), _ = jax.lax.scan(body, init, jnp.arange(s_len // block))
  return (acc / l).reshape(b, n, h).astype(q_bnh.dtype)


def pallas_gpu(q_bnh, k_bkhs, v_bksh, lengths_b, k_scale=None, v_scale=None,
               starts_b=None, *, block: int, interpret: bool = False):
  """Pallas GPU decode attention with per-slot `kv_seq_len` (see module doc).

  Args:
    block: the kernel's `block_k` (columns per step of its loop).
    interpret: run the kernel in the Pallas interpreter (CPU tests).
  """
  from jax.experimental.pallas.ops.gpu import decode_attention  # pylint: disable=g-import-not-at-top
  dtype = q_bnh.dtype
  k = _dequant(k_bkhs, k_scale, dtype).transpose(0, 3, 1, 2)  # [B, S, K, H]
  v = _dequant(v_bksh, v_scale, dtype).transpose(0, 2, 1, 3)
  s_len = k.shape[1]
  return decode_attention.gqa(
      q_bnh, k, v, start_idx=None if starts_b is None else
      starts_b.astype(jnp.int32), kv_seq_len=lengths_b.astype(jnp.int32),
      block_k=min(block, s_len), k_splits=max(1, s_len // block),
      interpret=interpret).astype(dtype)


def attend(q_bnh, k_bkhs, v_bksh, lengths_b, k_scale=None, v_scale=None, *,
           starts_b=None, impl: str = "blockwise", block: int = 128):
  """Dispatches to one of `IMPLS` (see the module docstring)."""
  args = (q_bnh, k_bkhs, v_bksh, lengths_b, k_scale, v_scale, starts_b)
  if impl == "full":
    return full(*args)
  if impl == "blockwise":
    return blockwise(*args, block=block)
  if impl == "pallas_gpu":
    return pallas_gpu(*args, block=block)
  raise ValueError(f"unknown decode attention {impl!r}; one of {IMPLS}.")


def quantize(x, axis: int):
  """Symmetric int8 with one float32 scale per slice along `axis`.

  Args:
    x: float array.
    axis: the axis reduced by the scale (the head dim H).

  Returns:
    (int8 array like x, float32 scale with `axis` kept as size 1).
  """
  x32 = x.astype(jnp.float32)
  amax = jnp.max(jnp.abs(x32), axis=axis, keepdims=True)
  scale = jnp.where(amax > 0, amax / 127.0, 1.0)
  q = jnp.clip(jnp.round(x32 / scale), -127, 127).astype(jnp.int8)
  return q, scale

