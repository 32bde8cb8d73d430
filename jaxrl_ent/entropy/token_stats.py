"""Per-token log-prob, entropy and dynamics moments, chunked over N and V.

The kernels never hold more than one `[token_chunk, vocab_chunk]` block of
logits, forward or backward: token chunks run under `lax.map`, vocabulary
chunks under `lax.scan` with an online (streaming logsumexp-style) merge, and
both bodies are `jax.checkpoint`-ed so the backward pass recomputes each block
instead of storing it (DESIGN.md §3).

Streaming identities. With `π = softmax(z)` and any shift `M`, put
`e_a = exp(z_a − M)`, `ζ_a = z_a − M` and `s = Σ e`, `t = Σ e ζ`,
`q_k = Σ e² ζ^k` (k = 0, 1, 2). Since `log π_a + H = z_a − E_π z = ζ_a − μ`
with `μ = t / s`:

  log Σ exp z = M + log s,   H = log s − μ,
  m2 = (q1 − μ q0) / s²,     m3 = (q2 − 2μ q1 + μ² q0) / s².

Moving the shift from `M` to `M' ≥ M` (δ = M − M' ≤ 0) maps
`s → e^δ s`, `t → e^δ (t + δ s)`, `q0 → e^{2δ} q0`, `q1 → e^{2δ}(q1 + δ q0)`,
`q2 → e^{2δ}(q2 + 2δ q1 + δ² q0)`, which is how two vocabulary chunks merge.
Shifts are chunk maxima, so every `exp` is ≤ 1 and logits of ±1e4 are safe.
"""

import chex
import jax
import jax.numpy as jnp

from jaxrl_ent.entropy import types

_F32 = jnp.float32


def _summary(z_cv, valid_v):
  """Shift-relative partial sums of one logits block, float32.

  Args:
    z_cv: tempered logits `[C, Vc]`.
    valid_v: bool `[Vc]`, columns that belong to this chunk.

  Returns:
    Tuple `(M, s, t, q0, q1, q2)`, each `[C]`.
  """
  # The results are exactly invariant to the shift, so its gradient is zero.
  m_c = jax.lax.stop_gradient(
      jnp.max(jnp.where(valid_v, z_cv, -jnp.inf), axis=-1))
  # `where` before `exp`: invalid columns must not produce inf (NaN grads).
  zeta_cv = jnp.where(valid_v, z_cv - m_c[:, None], 0.0)
  e_cv = jnp.where(valid_v, jnp.exp(zeta_cv), 0.0)
  e2_cv = e_cv * e_cv
  return (m_c, e_cv.sum(-1), (e_cv * zeta_cv).sum(-1), e2_cv.sum(-1),
          (e2_cv * zeta_cv).sum(-1), (e2_cv * zeta_cv * zeta_cv).sum(-1))


def _shift(summary, new_m):
  """Re-expresses a summary relative to the larger shift `new_m`."""
  m, s, t, q0, q1, q2 = summary
  d = m - new_m  # ≤ 0 and finite: both shifts are maxima of finite logits.
  e1, e2 = jnp.exp(d), jnp.exp(2.0 * d)
  return (e1 * s, e1 * (t + d * s), e2 * q0, e2 * (q1 + d * q0),
          e2 * (q2 + 2.0 * d * q1 + d * d * q0))


def _merge(a, b):
  new_m = jnp.maximum(a[0], b[0])
  sums = [x + y for x, y in zip(_shift(a, new_m), _shift(b, new_m))]
  return (new_m, *sums)


def _finalize(summary, z_y):
  """TokenStats from a full-vocabulary summary and the sampled-token logit."""
  m, s, t, q0, q1, q2 = summary
  log_s = jnp.log(s)
  mu = t / s
  s2 = s * s
  return types.TokenStats(
      logp=(z_y - m) - log_s,
      entropy=log_s - mu,
      m2=(q1 - mu * q0) / s2,
      m3=(q2 - 2.0 * mu * q1 + mu * mu * q0) / s2,
  )


def _dot(subscripts, a, b):
  """`einsum` with float32 results whatever the input dtypes."""
  if a.dtype == b.dtype and jnp.finfo(a.dtype).bits < 32:
    # Products of two bf16/f16 numbers are exact in f32, so one low-precision
    # pass with f32 accumulation equals upcasting first, at a fraction of the
    # MXU cost.
    return jnp.einsum(subscripts, a, b, preferred_element_type=_F32)
  return jnp.einsum(subscripts, a.astype(_F32), b.astype(_F32),
                    precision=jax.lax.Precision.HIGHEST)


def _map_token_chunks(body, xs, n, token_chunk):
  """Applies `body` to `token_chunk`-row slices of each `[N, ...]` array in xs.

  Pads N up to a multiple of the chunk (padded rows are dropped afterwards)
  and checkpoints `body`, so the backward pass keeps only each chunk's inputs.
  """
  c = max(1, min(token_chunk, n))
  num_chunks = -(-n // c)
  pad = num_chunks * c - n
  xs = [jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) for x in xs]
  xs = [x.reshape((num_chunks, c) + x.shape[1:]) for x in xs]
  out = jax.lax.map(jax.checkpoint(body, prevent_cse=False), tuple(xs))
  return jax.tree.map(lambda x: x.reshape((num_chunks * c,))[:n], out)


def _check_temperature(temperature):
  if isinstance(temperature, (int, float)) and not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")


def token_stats_from_logits(logits, tokens, *, temperature=1.0,
                            token_chunk=1024):
  """Token statistics from materialised logits, chunked over tokens.

  Args:
    logits: `[..., V]` (e.g. `[N, V]` or `[B, T, V]`), any float dtype; each
      chunk is upcast to float32 before dividing by the temperature.
    tokens: int `[...]`, the sampled token ids.
    temperature: sampling temperature τ > 0 (float or scalar array);
      statistics are those of `softmax(z / τ)`, as verl computes them (§3.1).
    token_chunk: rows per chunk; peak temporaries are `[token_chunk, V]` f32.

  Returns:
    `TokenStats` with fields of shape `[...]`.
  """
  chex.assert_type(tokens, int)
  chex.assert_equal_shape_prefix([logits, tokens], tokens.ndim)
  chex.assert_rank(logits, tokens.ndim + 1)
  _check_temperature(temperature)
  lead = tokens.shape
  logits_nv = logits.reshape((-1, logits.shape[-1]))
  tokens_n = tokens.reshape((-1,))
  all_valid_v = jnp.ones((logits_nv.shape[-1],), bool)

  def body(chunk):
    z_cv = chunk[0].astype(_F32) / temperature
    z_y = jnp.take_along_axis(z_cv, chunk[1][:, None], axis=-1)[:, 0]
    return _finalize(_summary(z_cv, all_valid_v), z_y)

  out = _map_token_chunks(body, [logits_nv, tokens_n], tokens_n.shape[0],
                          token_chunk)
  return jax.tree.map(lambda x: x.reshape(lead), out)


def token_stats(hidden, head_dv, tokens, *, temperature=1.0, token_chunk=256,
                vocab_chunk=8192):
  """Token statistics from final hidden states and the LM head, never `[N, V]`.

  Computes, at temperature τ, `z = hidden @ head / τ` block by block and
  returns `log π_y`, `H`, `m2 = Σπ²(log π + H)`, `m3 = Σπ²(log π + H)²`
  (DESIGN.md §3, entropy_methods.md §1). Forward and backward peak memory is
  `O(token_chunk · vocab_chunk)` beyond inputs and gradients; gradients w.r.t.
  `hidden` and `head_dv` are exact (autodiff through checkpointed chunks).

  Args:
    hidden: `[..., D]` (e.g. `[N, D]` or `[B, T, D]`), bf16/f32.
    head_dv: LM head weight `[D, V]`, bf16/f32. Not padded or copied: the last
      vocabulary chunk is a slice ending at V whose overlap is masked.
    tokens: int `[...]`, sampled token ids.
    temperature: τ > 0, float or scalar array.
    token_chunk: tokens per chunk; N need not be a multiple (rows are padded).
    vocab_chunk: vocabulary columns per block; `None` means all of V.

  Returns:
    `TokenStats`, float32 fields of shape `[...]`.
  """
  chex.assert_type(tokens, int)
  chex.assert_rank(head_dv, 2)
  chex.assert_rank(hidden, tokens.ndim + 1)
  chex.assert_equal_shape_prefix([hidden, tokens], tokens.ndim)
  chex.assert_axis_dimension(hidden, -1, head_dv.shape[0])
  _check_temperature(temperature)
  num_vocab = head_dv.shape[1]
  vc = num_vocab if vocab_chunk is None else max(1, min(vocab_chunk, num_vocab))
  num_vchunks = -(-num_vocab // vc)
  lead = tokens.shape
  hidden_nd = hidden.reshape((-1, hidden.shape[-1]))
  tokens_n = tokens.reshape((-1,))

  def vocab_block(h_cd, y_c, k):
    """(summary, sampled logit or 0) of vocabulary chunk k."""
    # Clamp the last slice inside [0, V); columns before k·vc were already
    # counted by the previous chunk and are masked out.
    start = jnp.minimum(k * vc, num_vocab - vc)
    w_dv = jax.lax.dynamic_slice_in_dim(head_dv, start, vc, axis=1)
    cols_v = start + jnp.arange(vc)
    valid_v = cols_v >= k * vc
    z_cv = _dot("cd,dv->cv", h_cd, w_dv) / temperature
    # The sampled logit is read from the same block values as the max and the
    # sums, so log π_y ≤ 0 holds to rounding even for logits of ±1e4.
    hit_cv = valid_v & (cols_v == y_c[:, None])
    return _summary(z_cv, valid_v), jnp.sum(jnp.where(hit_cv, z_cv, 0.0), -1)

  def body(chunk):
    h_cd, y_c = chunk
    summary, z_y = vocab_block(h_cd, y_c, 0)
    if num_vchunks > 1:

      def step(carry, k):
        block_summary, block_z_y = vocab_block(h_cd, y_c, k)
        return (_merge(carry[0], block_summary), carry[1] + block_z_y), None

      (summary, z_y), _ = jax.lax.scan(
          jax.checkpoint(step, prevent_cse=False), (summary, z_y),
          jnp.arange(1, num_vchunks))
    return _finalize(summary, z_y)

  out = _map_token_chunks(body, [hidden_nd, tokens_n], tokens_n.shape[0],
                          token_chunk)
  return jax.tree.map(lambda x: x.reshape(lead), out)

