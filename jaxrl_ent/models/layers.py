"""Pure building blocks of the decoder: RMSNorm, RoPE, grouped-query attention.

Axis legend: B batch, T query time, S key time (cache slots), D hidden,
N query heads, K key/value heads, G = N/K heads per group, H head dim,
F MLP width. Kernels take arrays, never configs.
"""

import jax
import jax.numpy as jnp
import numpy as np

# Large negative but finite: a fully masked row (padding) must stay finite.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def rms_norm(x, scale, eps):
  """RMSNorm computed in float32, returned in x's dtype. x [..., D], scale [D]."""
  x32 = x.astype(jnp.float32)
  var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
  y = x32 * jax.lax.rsqrt(var + eps)
  return (y * scale.astype(jnp.float32)).astype(x.dtype)


def rope_cos_sin(positions_bt, inv_freq_h2):
  """cos, sin [B, T, H] (float32) of RoPE angles, HF `rotate_half` layout."""
  angles = positions_bt.astype(jnp.float32)[..., None] * inv_freq_h2
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_bthd, cos_bth, sin_bth):
  """Rotates x [B, T, heads, H] by the angles (non-interleaved halves)."""
  half = x_bthd.shape[-1] // 2
  x32 = x_bthd.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  out = x32 * cos_bth[:, :, None, :] + rotated * sin_bth[:, :, None, :]
  return out.astype(x_bthd.dtype)


def attention(q_btnh, k_bskh, v_bskh, allowed_bts):
  """Grouped-query softmax attention.

  Args:
    q_btnh: queries [B, T, N, H].
    k_bskh: keys [B, S, K, H] with N % K == 0.
    v_bskh: values [B, S, K, H].
    allowed_bts: bool [B, T, S], True where query t may attend to key s.

  Returns:
    [B, T, N, H] in q's dtype. Scores and softmax are float32.
  """
  b, t, n, h = q_btnh.shape
  k = k_bskh.shape[2]
  q_btkgh = q_btnh.reshape(b, t, k, n // k, h)
  scores = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh,
                      preferred_element_type=jnp.float32)
  scores = scores * (h ** -0.5)
  scores = jnp.where(allowed_bts[:, None, None, :, :], scores, _MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_bskh.dtype)
  out = jnp.einsum("bkgts,bskh->btkgh", probs, v_bskh)
  return out.reshape(b, t, n, h)


def cached_attention(q_btnh, k_bkhs, v_bksh, allowed_bts):
  """Grouped-query attention over a KV cache in its storage layout.

  Args:
    q_btnh: queries [B, T, N, H].
    k_bkhs: cached keys [B, K, H, S] (slots last).
    v_bksh: cached values [B, K, S, H].
    allowed_bts: bool [B, T, S], True where query t may attend to slot s.

  Returns:
    [B, T, N, H] in q's dtype; the same function as `attention`. Both dots
    are plain [rows, c] @ [c, cols] products per (batch, kv head) — the form
    XLA:CPU's fast small-matrix path takes (see `decoder.KVCache`).
  """
  b, t, n, h = q_btnh.shape
  k = k_bkhs.shape[1]
  g = n // k
  # [B, K, T·G, H]: the query rows that share a kv head (a bitcast at T = 1).
  q = q_btnh.reshape(b, t, k, g, h).transpose(0, 2, 1, 3, 4).reshape(
      b, k, t * g, h)
  scores = jnp.matmul(q, k_bkhs, preferred_element_type=jnp.float32)
  scores = scores.reshape(b, k, t, g, -1) * (h ** -0.5)
  scores = jnp.where(allowed_bts[:, None, :, None, :], scores, _MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_bksh.dtype)
  out = jnp.matmul(probs.reshape(b, k, t * g, -1), v_bksh)
  return out.reshape(b, k, t, g, h).transpose(0, 2, 1, 3, 4).reshape(
      b, t, n, h)


def dense(x, w, in_dims: int = 1, *, flat: bool = False):
  """Contracts x's last `in_dims` axes with w's first `in_dims` axes.

  x [..., *I], w [*I, *O] -> [..., *O]. With `flat`, as one 2-D matmul
  [prod(...), prod(I)] @ [prod(I), prod(O)]: the same values, but on
  XLA:CPU autodiff's weight gradient of a 2-D dot is `dot(xᵀ, dy)` straight
  from the row-major cotangent, while for the 3-D dot its layout assignment
  first transposes the whole [tokens, F] cotangent in a loop fusion (a
  `jax.profiler` trace of the train step at `benchmarks/long_context.py
  --speed`'s 2 × 4096 tokens: the MLP's two [8192, 704] transposes per layer,
  0.83 s of a 4.2 s step; docs/performance.md).
  """
  lead, ins = x.shape[:x.ndim - in_dims], x.shape[x.ndim - in_dims:]
  if tuple(w.shape[:in_dims]) != tuple(ins):
    raise ValueError(f"dense: x {x.shape} and w {w.shape} disagree on the "
                     f"{in_dims} contracted axes.")
  outs = w.shape[in_dims:]
  if not flat:
    return jax.lax.dot_general(
        x, w, ((tuple(range(x.ndim - in_dims, x.ndim)),
                tuple(range(in_dims))), ((), ())))
  k = int(np.prod(ins))
  y = x.reshape(-1, k) @ w.reshape(k, -1)
  return y.reshape(lead + outs)


def swiglu(x_btd, gate_df, up_df, down_fd, gate_b=None, up_b=None,
           down_b=None, *, flat: bool = False):
  """SwiGLU MLP: down(silu(gate(x)) * up(x)). `flat`: as `dense`."""
  g = dense(x_btd, gate_df, flat=flat)
  u = dense(x_btd, up_df, flat=flat)
  if gate_b is not None:
    g, u = g + gate_b, u + up_b
  y = dense(jax.nn.silu(g) * u, down_fd, flat=flat)
  return y if down_b is None else y + down_b
