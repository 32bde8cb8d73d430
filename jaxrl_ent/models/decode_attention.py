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
  `pallas_tpu` `jax.experimental.pallas.ops.tpu.paged_attention` over the
               slot caches viewed as pages (see `pallas_tpu`): each slot's
               kv heads loop over their own ceil(length / block) blocks only
               (ragged per slot, not the max over slots). It needs keys
               token-major ([B, K, S, H], `token_major_keys`) and each
               slot's row left-aligned at column 0 (no `starts`: the kernel
               has only an upper bound); the sampler lays the slot caches
               out so for it. Float caches only (see `pallas_tpu` for int8).

Caches are in `decoder.SlotCache`'s storage layout: keys [B, K, H, S], values
[B, K, S, H], optionally int8 with float32 scales per (slot, kv head, column);
for `pallas_tpu` keys are [B, K, S, H] like the values.

`auto` (`resolve`) is `pallas_tpu` when compiling for a TPU (float cache,
head dim a multiple of 128), `blockwise` everywhere else: on CPU the default is unchanged, and on GPU
`pallas_gpu` transposes the cache per step (see above), so it is opt-in.

Axis legend: B slots, N query heads, K kv heads, G = N/K, H head dim,
S cache columns, J columns of one block.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_ent import sharding
from jaxrl_ent.models import attention

# Same value as the training attention's mask: large negative but finite, so
# a block with no filled column stays finite and is wiped out exactly (its
# weight is multiplied by exp(mask - real max) = 0) once a filled one arrives.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)

IMPLS = ("blockwise", "full", "pallas_gpu", "pallas_tpu")
# What `SamplingParams.decode_attention` / `config.rollout.decode_attention`
# accept: an impl, or `auto` (see `resolve`).
CHOICES = ("auto",) + IMPLS


def resolve(impl: str, platform: str | None = None, kv_int8: bool = False,
            head_dim: int | None = None) -> str:
  """The impl `auto` stands for on `platform` (default: jax's backend).

  `pallas_tpu` on TPU, unless the cache is int8 (which its kernel cannot
  read exactly: see `pallas_tpu`) or `head_dim` is not a multiple of 128
  (the kernel's blocks need it on a TPU: Qwen2.5-0.5B's 64 does not
  lower); `blockwise` elsewhere. Other names are returned as they are. Pass the platform a program is compiled for when it
  is not the host's (the AOT check compiles TPU programs on a CPU host).
  """
  if impl != "auto":
    return impl
  # The active mesh's devices (the AOT check's are compile-only TPUs on a
  # CPU host), else the default backend.
  platform = platform or attention.platform()
  if platform == "tpu" and not kv_int8 and (head_dim or 128) % 128 == 0:
    return "pallas_tpu"
  return "blockwise"


def token_major_keys(impl: str) -> bool:
  """Whether `impl` reads keys [B, K, S, H] (and int8 key scales
  [B, K, S, 1]) and left-aligned slots, instead of keys [B, K, H, S]."""
  return impl == "pallas_tpu"



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
              starts_b=None, *, block: int, axis_name=None):
  """Online-softmax attention over the filled blocks only (same as `full`).

  Only the first ceil(max(lengths) / block) blocks are read (the others'
  `cond` branch is the identity): a step early in a rollout reads a
  prompt-sized prefix of the cache, not the whole width. Columns at or past
  a slot's length are masked; a block of them adds exactly zero (its exp
  underflows to 0 and the running max does not move), so the result does
  not depend on how many blocks the longest slot makes the loop read.

  Args:
    block: J, columns per block; must divide S.
    axis_name: under `jax.vmap(..., axis_name=...)` over replicas, that name:
      the number of blocks read is the largest over all replicas, so it is
      not batched. A batched count would turn each block's `cond` into a
      select: every replica would read and compute every block.
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
  if axis_name is not None:
    num_blocks = jax.lax.pmax(num_blocks, axis_name)

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


def pallas_tpu(q_bnh, k_bksh, v_bksh, lengths_b, k_scale=None, v_scale=None,
               starts_b=None, *, block: int, page_size: int | None = None,
               interpret: bool = False):
  """Pallas TPU paged attention over token-major slot caches.

  Why `paged_attention` and not `ragged_paged_attention`: the slot caches
  are contiguous per (slot, kv head), keys and values apart. `paged_attention`
  takes keys and values as separate [K', pages, page, H] arrays, and a
  contiguous [B, K, S, H] cache *is* such an array with no copy: fold the kv
  heads into the batch (K' = 1, B·K sequences of S / page pages, the
  identity page table, each sequence's G query heads as its group). The
  ragged kernel wants keys and values interleaved in one [pages, page, 2K,
  H] array (a copy of the whole cache per step, or a different cache for
  every other impl) and batches mixed prefill queries (`cu_q_lens`), which
  a decode step does not need. With `inline_seq_dim` (the default) each
  (slot, kv head) loops over its own ceil(length / block) blocks: reads are
  ragged per slot.

  What the kernel cannot do, and how this handles it:
    * no lower bound: columns [0, lengths) are attended, so `starts_b` must
      be None (the sampler left-aligns rows for this impl);
    * no softmax scale: q is scaled by H^-0.5 (in float32) before the call;
    * keys and values are rounded to bfloat16 inside the kernel (its
      `_maybe_dequantize`): exact for a bfloat16 cache (the TPU jobs'), a
      bfloat16-sized error for a float32 one;
    * on a TPU the head dim must be a multiple of 128 (the kernel's m/l
      outputs are blocked like q: [.., H]); the interpreter takes any;
    * int8 scales must be [.., page, H] (the wrapper broadcasts them to the
      head dim: 4 bytes per element read next to the int8 one, more than a
      bfloat16 cache) and are applied in bfloat16, so int8 caches raise a
      ValueError here (use `blockwise`; `resolve("auto")` does).

  Args:
    q_bnh: [B, N, H] queries of the new token.
    k_bksh: [B, K, S, H] keys (token-major).
    v_bksh: [B, K, S, H] values.
    lengths_b: int32 [B] filled columns of each slot ([0, lengths)).
    block: columns per step of the kernel's loop (a multiple of the page).
    page_size: columns per page (default `block`: one DMA per block, the
      cache being contiguous); must divide S and `block`.
    interpret: run the kernel in the Pallas TPU interpreter (CPU tests).

  Under `sharding.use_mesh` the kernel runs inside `shard_map` (a Mosaic
  custom call cannot be partitioned by XLA): slots over the `act_batch` mesh
  axes, heads over `act_heads`/`act_kv_heads` when both split evenly alike
  (a query head's kv head then sits on its device), the whole cache width
  on each device.

  Returns:
    [B, N, H] in q's dtype.
  """
  if k_scale is not None or v_scale is not None:
    raise ValueError(
        "pallas_tpu does not read int8 KV caches exactly (the TPU paged "
        "kernel applies scales in bfloat16, broadcast to the head dim); "
        "use decode_attention='blockwise' (or 'auto') with kv_int8.")
  if starts_b is not None:
    raise ValueError("pallas_tpu attends to columns [0, lengths) only; the "
                     "slots must be left-aligned (starts_b=None).")
  local = functools.partial(_pallas_tpu_local, block=block,
                            page_size=page_size, interpret=interpret)
  active = getattr(sharding._ACTIVE, "value", None)  # pylint: disable=protected-access
  if active is None:
    return local(q_bnh, k_bksh, v_bksh, lengths_b)
  mesh, rules = active
  b, n, _ = q_bnh.shape
  kh = k_bksh.shape[1]
  rows = sharding.logical_to_spec(("act_batch",), rules, (b,), mesh)
  rows = rows[0] if len(rows) else None
  q_heads = sharding.logical_to_spec((None, "act_heads"), rules, (1, n), mesh)
  kv_heads = sharding.logical_to_spec((None, "act_kv_heads"), rules, (1, kh),
                                      mesh)
  heads = q_heads[1] if len(q_heads) > 1 and q_heads == kv_heads else None
  spec_q = jax.sharding.PartitionSpec(rows, heads, None)
  spec_kv = jax.sharding.PartitionSpec(rows, heads, None, None)
  return jax.shard_map(local, mesh=mesh,
                       in_specs=(spec_q, spec_kv, spec_kv,
                                 jax.sharding.PartitionSpec(rows)),
                       out_specs=spec_q, check_vma=False)(
                           q_bnh, k_bksh, v_bksh, lengths_b)


def _pallas_tpu_local(q_bnh, k_bksh, v_bksh, lengths_b, *, block, page_size,
                      interpret):
  """`pallas_tpu` on one device's slots and heads."""
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention_kernel  # pylint: disable=g-import-not-at-top
  b, n, h = q_bnh.shape
  kh, s_len = k_bksh.shape[1], k_bksh.shape[2]
  if k_bksh.shape != v_bksh.shape or k_bksh.shape[:1] + k_bksh.shape[3:] != (
      b, h):
    raise ValueError(f"pallas_tpu wants keys and values [B, K, S, H]; got "
                     f"{k_bksh.shape}, {v_bksh.shape} for q {q_bnh.shape}.")
  page = page_size or block
  block = min(block, s_len)
  page = min(page, block)
  if s_len % block or block % page:
    raise ValueError(f"cache width {s_len}, block {block} and page {page} "
                     "must each divide the one before.")
  pages = s_len // page
  g = n // kh
  # Zero-copy views: kv heads folded into the batch (one kv head per
  # "sequence"), pages in slot-major order, the identity page table.
  k_pages = k_bksh.reshape(1, b * kh * pages, page, h)
  v_pages = v_bksh.reshape(1, b * kh * pages, page, h)
  table = jnp.arange(b * kh * pages, dtype=jnp.int32).reshape(b * kh, pages)
  q = (q_bnh.astype(jnp.float32) * (h ** -0.5)).reshape(b * kh, g, h)
  seq_lengths = jnp.repeat(lengths_b.astype(jnp.int32), kh)

  def call():
    return paged_attention_kernel.paged_attention(
        q, k_pages, v_pages, seq_lengths, table, mask_value=MASK_VALUE,
        pages_per_compute_block=block // page)
  if interpret:
    with pltpu.force_tpu_interpret_mode():
      out = call()
  else:
    out = call()
  return out.reshape(b, n, h).astype(q_bnh.dtype)


def attend(q_bnh, k_bkhs, v_bksh, lengths_b, k_scale=None, v_scale=None, *,
           starts_b=None, impl: str = "blockwise", block: int = 128,
           axis_name=None):
  """Dispatches to one of `IMPLS` (see the module docstring).

  For `pallas_tpu` keys are [B, K, S, H] and `starts_b` must be None.
  `axis_name` (a replicas' vmap axis) reaches `blockwise`; the other
  impls have no length-dependent control flow to share.
  """
  args = (q_bnh, k_bkhs, v_bksh, lengths_b, k_scale, v_scale, starts_b)
  if impl == "pallas_tpu":
    return pallas_tpu(*args, block=block)
  if impl == "full":
    return full(*args)
  if impl == "blockwise":
    return blockwise(*args, block=block, axis_name=axis_name)
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

