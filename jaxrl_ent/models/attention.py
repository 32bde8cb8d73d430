"""Causal self-attention of the training forward pass, one kernel per backend.

`attention(q, k, v, segment_ids, impl=...)` is the entry point. Masks are
positions + segment ids: query t attends to key s iff s <= t (row index, so
packed segments are causal too) and `segment_ids[t] == segment_ids[s]`.
Padding is a segment of its own (id 0 by convention), so a left- or
right-padded row is `segment_ids = attention_mask`, and a packed row numbers
its segments 1, 2, ... with 0 for the tail padding. Outputs at real tokens
equal those of `layers.attention` with the mask `causal & key_is_real`;
outputs at padding differ (they attend only to padding) and are never used.

Kernels (`IMPLS`), none of which builds a float [T, S] tensor:
  splash     TPU: Pallas splash attention (causal mask, segment ids, fused
             backward kernel); runs in Pallas interpret mode off TPU.
  cudnn      GPU: cuDNN flash attention via `jax.nn.dot_product_attention`;
             bf16/fp16 only. Segment ids enter as a boolean [B, 1, T, S]
             mask (cuDNN's public JAX API has no segment ids); without them
             the kernel would attend across padding.
  blockwise  anything: flash-style attention in XLA. Queries in blocks, keys
             in chunks up to the causal diagonal only (fully masked blocks
             are never computed), online softmax in float32, and a custom
             VJP that recomputes each block's probabilities from the saved
             log-sum-exp, so the backward keeps no [T, S] residual either.
  xla_naive  the reference: the [B, T, S] mask and float32 scores
             (`layers.attention`).
  auto       splash on TPU, cudnn on GPU where it qualifies, else blockwise.

Axis legend: B batch, T time (queries = keys), N query heads, K kv heads,
G = N / K, H head dim, R = block rows (query block × G).
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_ent import sharding
from jaxrl_ent.models import layers

IMPLS = ("auto", "xla_naive", "blockwise", "splash", "cudnn")

# Finite: exp(_MASK - m) underflows to 0 for any real row maximum m.
_MASK = layers._MASK_VALUE  # pylint: disable=protected-access

_warned: set[str] = set()


def _warn_once(msg: str):
  if msg not in _warned:
    _warned.add(msg)
    logging.warning("%s", msg)


def validate_impl(impl: str) -> str:
  if impl not in IMPLS:
    raise ValueError(f"model.attention_impl={impl!r}; expected one of "
                     f"{IMPLS}.")
  return impl


def _active():
  """(mesh, rules) set by `sharding.use_mesh`, or None."""
  return getattr(sharding._ACTIVE, "value", None)  # pylint: disable=protected-access


def platform() -> str:
  """The platform the program is compiled for: the active mesh's devices
  (compile-only TPU devices in the AOT check), else the default backend."""
  active = _active()
  if active is not None:
    return active[0].devices.flat[0].platform
  return jax.default_backend()


def cudnn_unsupported(dtype, head_dim: int, plat: str) -> str:
  """Why cuDNN flash attention cannot run these shapes ('' if it can)."""
  if plat not in ("gpu", "cuda"):
    return f"the platform is {plat!r}, not a GPU"
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"dtype {jnp.dtype(dtype).name} (cuDNN flash needs bf16/fp16)"
  if head_dim % 8 or head_dim > 128:
    return f"head_dim {head_dim} (cuDNN flash needs a multiple of 8, <= 128)"
  return ""


def resolve_impl(impl: str, dtype, head_dim: int, plat: str | None = None
                 ) -> str:
  """The kernel that runs for `impl` on `plat` (default: `platform()`).

  `cudnn` where it does not qualify falls back to `blockwise` with a logged
  reason; `splash` off TPU runs in interpret mode (slow; for tests).
  """
  validate_impl(impl)
  plat = plat or platform()
  if impl == "auto":
    if plat == "tpu":
      return "splash"
    if plat in ("gpu", "cuda") and not cudnn_unsupported(dtype, head_dim,
                                                         plat):
      return "cudnn"
    return "blockwise"
  if impl == "cudnn":
    why = cudnn_unsupported(dtype, head_dim, plat)
    if why:
      _warn_once(f"attention_impl='cudnn' cannot run here: {why}; falling "
                 "back to 'blockwise' (flash-style XLA attention).")
      return "blockwise"
  return impl


def attention(q_btnh, k_btkh, v_btkh, segment_ids_bt, *, impl: str = "auto",
              block_q: int | None = None, block_kv: int | None = None):
  """Causal grouped-query self-attention within segments.

  Args:
    q_btnh: queries [B, T, N, H].
    k_btkh: keys [B, T, K, H], N % K == 0.
    v_btkh: values [B, T, K, H].
    segment_ids_bt: int [B, T]; tokens attend only within their segment.
    impl: one of IMPLS (see the module docstring).
    block_q, block_kv: block sizes of the blockwise/splash kernels (default:
      chosen from T).

  Returns:
    [B, T, N, H] in q's dtype.
  """
  b, t, n, h = q_btnh.shape
  if k_btkh.shape[1] != t:
    raise ValueError("attention: self-attention needs as many keys as "
                     f"queries, got {k_btkh.shape[1]} and {t}.")
  seg = segment_ids_bt.astype(jnp.int32)
  kind = resolve_impl(impl, q_btnh.dtype, h)
  if kind == "xla_naive":
    idx = jnp.arange(t)
    allowed = (idx[:, None] >= idx[None, :])[None] & (
        seg[:, :, None] == seg[:, None, :])
    return layers.attention(q_btnh, k_btkh, v_btkh, allowed)
  if kind == "cudnn":
    mask = (seg[:, :, None] == seg[:, None, :])[:, None]
    return jax.nn.dot_product_attention(
        q_btnh, k_btkh, v_btkh, mask=mask, is_causal=True,
        implementation="cudnn")
  if kind == "splash":
    return splash_attention(q_btnh, k_btkh, v_btkh, seg, block=block_q)
  bq, bkv = default_blocks(t) if block_q is None else (
      block_q, block_kv or block_q)
  return blockwise_attention(q_btnh, k_btkh, v_btkh, seg, bq, bkv)


# ------------------------------------------------------------- blockwise

def default_blocks(t: int) -> tuple[int, int]:
  """(query block, key chunk) for T tokens on XLA.

  256 × 256: measured on XLA:CPU (2 cores, H = 64, G = 2;
  `benchmarks/long_context.py --speed`), fwd + bwd of one layer's attention
  at T = 1024 / 4096 took 52 / 637 ms against 160 / 1070 ms with the former
  512 × 1024 blocks: smaller blocks skip more of the causal triangle and
  keep a block pair's scores ([bq·G, bkv] float32, 0.5 MB) in cache, while
  the dots stay large enough for the matmul. Short sequences use one block.
  """
  t8 = -(-t // 8) * 8
  bq = min(t8, 256)
  return bq, bq


def _to_kernel_layout(q_btnh, k_btkh, v_btkh):
  """q [B, K, T, G, H], k/v [B, K, T, H]: per (batch, kv head) the dots are
  plain [rows, H] @ [H, keys] products."""
  b, t, n, h = q_btnh.shape
  kh = k_btkh.shape[2]
  q = q_btnh.reshape(b, t, kh, n // kh, h).transpose(0, 2, 1, 3, 4)
  return q, k_btkh.transpose(0, 2, 1, 3), v_btkh.transpose(0, 2, 1, 3)


def _slice(x, start, size, axis):
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis)


def _num_chunks(q_lo, bq, bkv):
  # Key chunks up to the block's last row: the causal skip.
  return (q_lo + bq + bkv - 1) // bkv


def _block_mask(sq_bq, sk_bk, q_lo, k_lo):
  """bool [B, 1, bq, 1, bk]: causal and same segment."""
  bq, bk = sq_bq.shape[1], sk_bk.shape[1]
  causal = (q_lo + jnp.arange(bq))[:, None] >= (k_lo + jnp.arange(bk))[None]
  m = (sq_bq[:, :, None] == sk_bk[:, None, :]) & causal[None]
  return m[:, None, :, None, :]


def _scores(q_blk, k_blk, scale):
  # q_blk [B, K, bq, G, H], k_blk [B, K, bk, H] -> f32 [B, K, bq, G, bk]
  b, kh, bq, g, h = q_blk.shape
  s = jnp.matmul(q_blk.reshape(b, kh, bq * g, h), jnp.swapaxes(k_blk, -1, -2),
                 preferred_element_type=jnp.float32)
  return s.reshape(b, kh, bq, g, -1) * scale


def _forward(q, k, v, seg_q, seg_k, bq, bkv):
  """Kernel-layout forward: (out [B, K, Tq, G, H] in q's dtype, float32
  log-sum-exp [B, K, Tq, G]). Tq % bq == 0, Tk % bkv == 0, Tk >= Tq.

  Loops, not unrolled blocks: one block pair's temporaries are live at a
  time (XLA would schedule unrolled independent blocks concurrently).
  """
  b, kh, tq, g, h = q.shape
  scale = h ** -0.5

  def q_block(i):
    q_lo = i * bq
    q_blk, sq = _slice(q, q_lo, bq, 2), _slice(seg_q, q_lo, bq, 1)

    def chunk(j, carry):
      m, l, acc = carry
      k_lo = j * bkv
      mask = _block_mask(sq, _slice(seg_k, k_lo, bkv, 1), q_lo, k_lo)
      s = jnp.where(mask, _scores(q_blk, _slice(k, k_lo, bkv, 2), scale),
                    _MASK)
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
      pv = jnp.matmul(p.astype(v.dtype).reshape(b, kh, bq * g, bkv),
                      _slice(v, k_lo, bkv, 2),
                      preferred_element_type=jnp.float32)
      alpha = jnp.exp(m - m_new)
      return (m_new, alpha * l + p.sum(-1),
              alpha[..., None] * acc + pv.reshape(acc.shape))

    init = (jnp.full((b, kh, bq, g), _MASK, jnp.float32),
            jnp.zeros((b, kh, bq, g), jnp.float32),
            jnp.zeros((b, kh, bq, g, h), jnp.float32))
    m, l, acc = jax.lax.fori_loop(0, _num_chunks(q_lo, bq, bkv), chunk, init)
    # Every row sees at least itself (same segment, s = t): l >= 1.
    return (acc / l[..., None]).astype(q.dtype), m + jnp.log(l)

  out, lse = jax.lax.map(q_block, jnp.arange(tq // bq))
  # [nq, B, K, bq, ...] -> [B, K, nq·bq, ...]
  out = jnp.moveaxis(out, 0, 2).reshape(b, kh, tq, g, h)
  lse = jnp.moveaxis(lse, 0, 2).reshape(b, kh, tq, g)
  return out, lse


def _backward(q, k, v, seg_q, seg_k, out, lse, dout, bq, bkv):
  """FlashAttention-2's backward: each block's probabilities recomputed from
  the saved log-sum-exp. dq, dk, dv in kernel layout."""
  b, kh, tq, g, h = q.shape
  scale = h ** -0.5
  # D_t = Σ_h dO·O = Σ_s P_ts dP_ts, the softmax Jacobian's diagonal term.
  delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), -1)

  def q_block(carry, i):
    q_lo = i * bq
    q_blk, sq = _slice(q, q_lo, bq, 2), _slice(seg_q, q_lo, bq, 1)
    q_rows = q_blk.reshape(b, kh, bq * g, h)
    do_rows = _slice(dout, q_lo, bq, 2).reshape(b, kh, bq * g, h)
    lse_blk, d_blk = _slice(lse, q_lo, bq, 2), _slice(delta, q_lo, bq, 2)

    def chunk(j, c):
      dq, dk, dv = c
      k_lo = j * bkv
      k_blk, v_blk = _slice(k, k_lo, bkv, 2), _slice(v, k_lo, bkv, 2)
      mask = _block_mask(sq, _slice(seg_k, k_lo, bkv, 1), q_lo, k_lo)
      p = jnp.where(mask, jnp.exp(_scores(q_blk, k_blk, scale)
                                  - lse_blk[..., None]), 0.0)
      p_rows = p.reshape(b, kh, bq * g, bkv)
      dv_blk = jnp.matmul(jnp.swapaxes(p_rows.astype(v.dtype), -1, -2),
                          do_rows, preferred_element_type=jnp.float32)
      dp = jnp.matmul(do_rows, jnp.swapaxes(v_blk, -1, -2),
                      preferred_element_type=jnp.float32).reshape(p.shape)
      ds = (p * (dp - d_blk[..., None]) * scale).astype(q.dtype)
      ds_rows = ds.reshape(b, kh, bq * g, bkv)
      dq = dq + jnp.matmul(ds_rows, k_blk, preferred_element_type=jnp.float32)
      dk_blk = jnp.matmul(jnp.swapaxes(ds_rows, -1, -2), q_rows,
                          preferred_element_type=jnp.float32)
      dk = jax.lax.dynamic_update_slice_in_dim(
          dk, _slice(dk, k_lo, bkv, 2) + dk_blk, k_lo, 2)
      dv = jax.lax.dynamic_update_slice_in_dim(
          dv, _slice(dv, k_lo, bkv, 2) + dv_blk, k_lo, 2)
      return dq, dk, dv

    dk, dv = carry
    dq = jnp.zeros((b, kh, bq * g, h), jnp.float32)
    dq, dk, dv = jax.lax.fori_loop(0, _num_chunks(q_lo, bq, bkv), chunk,
                                   (dq, dk, dv))
    return (dk, dv), dq.reshape(b, kh, bq, g, h)

  zeros = jnp.zeros(k.shape, jnp.float32)
  (dk, dv), dq = jax.lax.scan(q_block, (zeros, zeros), jnp.arange(tq // bq))
  dq = jnp.moveaxis(dq, 0, 2).reshape(q.shape)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _blockwise(q, k, v, seg_q, seg_k, bq, bkv):
  return _forward(q, k, v, seg_q, seg_k, bq, bkv)[0]


def _blockwise_fwd(q, k, v, seg_q, seg_k, bq, bkv):
  out, lse = _forward(q, k, v, seg_q, seg_k, bq, bkv)
  return out, (q, k, v, seg_q, seg_k, out, lse)


def _blockwise_bwd(bq, bkv, res, dout):
  q, k, v, seg_q, seg_k, out, lse = res
  dq, dk, dv = _backward(q, k, v, seg_q, seg_k, out, lse, dout, bq, bkv)
  float0 = lambda x: np.zeros(x.shape, jax.dtypes.float0)
  return dq, dk, dv, float0(seg_q), float0(seg_k)


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(q_btnh, k_btkh, v_btkh, segment_ids_bt, block_q,
                        block_kv):
  """Flash-style attention in XLA (see the module docstring).

  Residuals kept for the backward: q, k, v, the output and a float32
  log-sum-exp per query row; temporaries of one block pair, [B, K, bq·G,
  bkv], are live at a time. Queries are padded to a multiple of `block_q`
  and keys to a multiple of `block_kv` inside, the padding a segment (-1) of
  its own (each padded query sees at least itself; no real token sees it).

  Args:
    q_btnh: [B, T, N, H]; k_btkh, v_btkh: [B, T, K, H].
    segment_ids_bt: int32 [B, T].
    block_q, block_kv: query block and key chunk (static).

  Returns:
    [B, T, N, H] in q's dtype.
  """
  b, t, n, h = q_btnh.shape
  bq, bkv = int(block_q), int(block_kv)
  tq = -(-t // bq) * bq
  tk = -(-tq // bkv) * bkv
  q, k, v = _to_kernel_layout(q_btnh, k_btkh, v_btkh)
  seg = segment_ids_bt.astype(jnp.int32)
  pad = lambda x, n_pad, axis: jnp.pad(
      x, [(0, n_pad if i == axis else 0) for i in range(x.ndim)])
  q = pad(q, tq - t, 2)
  k, v = pad(k, tk - t, 2), pad(v, tk - t, 2)
  seg_q = jnp.pad(seg, ((0, 0), (0, tq - t)), constant_values=-1)
  seg_k = jnp.pad(seg, ((0, 0), (0, tk - t)), constant_values=-1)
  out = _blockwise(q, k, v, seg_q, seg_k, bq, bkv)[:, :, :t]
  return out.transpose(0, 2, 1, 3, 4).reshape(b, t, n, h)


# ---------------------------------------------------------------- splash

def _splash_kernel(heads: int, t: int, block: int, interpret: bool):
  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  mask = sa.MultiHeadMask([sa.CausalMask((t, t))] * heads)
  blocks = sa.BlockSizes(
      block_q=block, block_kv=block, block_kv_compute=block,
      block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
      use_fused_bwd_kernel=True)
  # Built per trace (its mask-info arrays become constants of the program;
  # the numpy block analysis behind them is cached by the library).
  return sa.make_splash_mha(mask, block_sizes=blocks, head_shards=1,
                            q_seq_shards=1, interpret=interpret)


def splash_block(t: int) -> int:
  """Largest of 512/256/128 that divides T (T is padded to a multiple of 128)."""
  for blk in (512, 256, 128):
    if t % blk == 0:
      return blk
  raise ValueError(f"splash: T={t} is not a multiple of 128.")


def _splash_local(q_btnh, k_btkh, v_btkh, seg_bt, block, interpret):
  """Splash attention on one device's shard (all of T, some rows/heads)."""
  b, t, n, h = q_btnh.shape
  pad = -t % 128
  if pad:  # padded tokens form segment -1: they attend only to themselves
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    q_btnh, k_btkh, v_btkh = (jnp.pad(x, widths)
                              for x in (q_btnh, k_btkh, v_btkh))
    seg_bt = jnp.pad(seg_bt, ((0, 0), (0, pad)), constant_values=-1)
  tp = t + pad
  block = block if block and tp % block == 0 else splash_block(tp)
  kernel = _splash_kernel(n, tp, block, interpret)
  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  q = (q_btnh.astype(jnp.float32) * h ** -0.5).astype(q_btnh.dtype)
  q = q.transpose(0, 2, 1, 3)  # [B, N, T, H]
  k = k_btkh.transpose(0, 2, 1, 3)
  v = v_btkh.transpose(0, 2, 1, 3)
  out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=sa.SegmentIds(
      q=s, kv=s)))(q, k, v, seg_bt)
  return out.transpose(0, 2, 1, 3)[:, :t]


def splash_attention(q_btnh, k_btkh, v_btkh, segment_ids_bt, block=None,
                     interpret: bool | None = None):
  """Pallas splash attention (TPU; interpret mode elsewhere).

  Under `sharding.use_mesh` the kernel runs inside `shard_map` (a Mosaic
  custom call cannot be partitioned by XLA): rows over the `act_batch` mesh
  axes, heads over `act_heads` when both query and kv heads split evenly,
  the whole sequence on each device.
  """
  if interpret is None:
    interpret = platform() != "tpu"
    if interpret:
      _warn_once("attention_impl='splash' off TPU: running the Pallas kernel "
                 "in interpret mode (slow; meant for tests).")
  local = functools.partial(_splash_local, block=block, interpret=interpret)
  active = _active()
  if active is None:
    return local(q_btnh, k_btkh, v_btkh, segment_ids_bt)
  mesh, rules = active
  b, t, n, _ = q_btnh.shape
  kh = k_btkh.shape[2]
  rows = sharding.logical_to_spec(("act_batch",), rules, (b,), mesh)
  rows = rows[0] if len(rows) else None
  q_heads = sharding.logical_to_spec((None, "act_heads"), rules, (1, n), mesh)
  kv_heads = sharding.logical_to_spec((None, "act_heads"), rules, (1, kh),
                                      mesh)
  heads = q_heads[1] if len(q_heads) > 1 and q_heads == kv_heads else None
  spec_x = jax.sharding.PartitionSpec(rows, None, heads, None)
  spec_s = jax.sharding.PartitionSpec(rows, None)
  return jax.shard_map(local, mesh=mesh,
                       in_specs=(spec_x, spec_x, spec_x, spec_s),
                       out_specs=spec_x, check_vma=False)(
                           q_btnh, k_btkh, v_btkh, segment_ids_bt)
