"""Sequence packing for the log-prob and train passes.

A rollout batch is R rows of S = P + C tokens: a left-padded prompt bucket P
and a completion budget C, right-padded after the stop token. Most of it is
padding when prompts and completions vary in length. `pack` moves each
row's real span (last prompt tokens + completion) into fixed-length packed
rows, first-fit decreasing, with segment ids (1, 2, ... per packed row, 0 on
padding) and the row's own RoPE positions, so `DecoderLM.hidden_states(...,
segment_ids_bt=...)` computes exactly the per-token results of the unpacked
rows (attention never crosses a segment). `gather_completion` brings the
hidden states that predict each completion token back to [R, C], after
which the token statistics, the loss and its gradients are those of the
unpacked batch (tests/models/packing_test.py).

`pack` runs on the host (numpy, with clear errors); `pack_traced` is the
same layout inside a jit (first-fit decreasing as a `lax.scan` over rows,
the tokens placed by one scatter), which is what the trainer uses: each
forward of the RL update (old/reference/after log-probs, every micro-batch
of the train pass) packs its own rows, so the permutation of the mini-
batches stays inside `update` and `jax.vmap` over replicas still works.
`num_rows` fixes the packed shape so one compiled program serves every
step; when the rows do not fit, `rl.train_step.completion_stats` runs the
unpacked forward instead (a `lax.cond`: exact either way, and counted in
`perf/pack_fits`).

Axis legend: R rows, S = P + C tokens per row, C completion tokens,
Rp packed rows, L packed row length, D hidden.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class Packed:
  """Packed rows and the map back to the unpacked completion layout.

  Attributes:
    tokens: int32 [Rp, L] token ids (0 on padding).
    positions: int32 [Rp, L] RoPE positions, each segment's own.
    segment_ids: int32 [Rp, L], 1.. per segment, 0 on padding.
    src_row: int32 [R, C] packed row of the hidden state that predicts
      completion token c of row r (its predecessor's slot).
    src_col: int32 [R, C] column of that hidden state.
    valid: bool [R, C] completion tokens that exist (attention_mask of the
      completion part); where False, src_* point at a harmless slot.
  """
  tokens: jax.Array
  positions: jax.Array
  segment_ids: jax.Array
  src_row: jax.Array
  src_col: jax.Array
  valid: jax.Array


def real_spans(attention_mask_rs) -> tuple[np.ndarray, np.ndarray]:
  """(start, end) [R] of each row's real tokens; they must be contiguous."""
  mask = np.asarray(attention_mask_rs).astype(bool)
  r, s = mask.shape
  any_real = mask.any(1)
  start = np.where(any_real, mask.argmax(1), 0)
  end = np.where(any_real, s - mask[:, ::-1].argmax(1), 0)
  lengths = mask.sum(1)
  if np.any(end - start != lengths):
    bad = int(np.nonzero(end - start != lengths)[0][0])
    raise ValueError(f"pack: row {bad}'s real tokens are not contiguous (a "
                     "left-padded prompt followed by a right-padded "
                     "completion is).")
  return start, end


def pack(tokens_rs, positions_rs, attention_mask_rs, completion_len: int,
         row_len: int, num_rows: int | None = None) -> Packed:
  """Packs rows' real spans into rows of `row_len` tokens (host side).

  Args:
    tokens_rs, positions_rs, attention_mask_rs: [R, S] of the unpacked batch
      (`RLBatch.tokens/positions/attention_mask`); each row's real tokens
      are one contiguous span with at least one prompt token.
    completion_len: C, the last C columns are the completion.
    row_len: L, tokens per packed row (>= the longest span).
    num_rows: Rp (default: as many as first-fit needs). Fixing it keeps the
      jitted shapes constant across steps.

  Returns:
    `Packed` (numpy arrays).

  Raises:
    ValueError: a span longer than `row_len`, more packed rows than
      `num_rows`, a row without a prompt token, non-contiguous spans.
  """
  tokens = np.asarray(tokens_rs)
  positions = np.asarray(positions_rs)
  r, s = tokens.shape
  p = s - completion_len
  start, end = real_spans(attention_mask_rs)
  lengths = end - start
  if np.any(lengths > row_len):
    raise ValueError(f"pack: a row has {lengths.max()} real tokens, more "
                     f"than row_len={row_len}.")
  if np.any(start >= p):
    raise ValueError("pack: every row needs at least one prompt token (the "
                     "hidden state that predicts the first completion token).")
  # First-fit decreasing: longest spans first, each into the first packed
  # row with room.
  order = np.argsort(-lengths, kind="stable")
  fill, where_row, where_col = [], np.zeros(r, np.int64), np.zeros(r, np.int64)
  for i in order:
    for j, used in enumerate(fill):
      if used + lengths[i] <= row_len:
        break
    else:
      j = len(fill)
      fill.append(0)
    where_row[i], where_col[i] = j, fill[j]
    fill[j] += lengths[i]
  rows = len(fill) if num_rows is None else num_rows
  if len(fill) > rows:
    raise ValueError(f"pack: the spans need {len(fill)} rows of {row_len} "
                     f"tokens, more than num_rows={num_rows}.")
  out_tok = np.zeros((rows, row_len), np.int32)
  out_pos = np.zeros((rows, row_len), np.int32)
  out_seg = np.zeros((rows, row_len), np.int32)
  seg_count = np.zeros(rows, np.int32)
  for i in range(r):
    j, c0, n = where_row[i], where_col[i], lengths[i]
    seg_count[j] += 1
    out_tok[j, c0:c0 + n] = tokens[i, start[i]:end[i]]
    out_pos[j, c0:c0 + n] = positions[i, start[i]:end[i]]
    out_seg[j, c0:c0 + n] = seg_count[j]
  # Completion token c of row i sits at column p + c; its predecessor's
  # hidden state at p + c - 1, i.e. packed column where_col + p + c - 1 -
  # start. Missing tokens point at the prompt's last token (still real).
  c = np.arange(completion_len)[None]
  valid = (p + c) < end[:, None]
  col = where_col[:, None] + np.where(valid, p + c - 1, p - 1) - start[:, None]
  src_row = np.broadcast_to(where_row[:, None], (r, completion_len))
  return Packed(tokens=out_tok, positions=out_pos, segment_ids=out_seg,
                src_row=src_row.astype(np.int32), src_col=col.astype(np.int32),
                valid=valid)


def plan(attention_mask_rs, num_rows: int, row_len: int):
  """First-fit decreasing placement of each row's real tokens (traceable).

  Returns:
    (packed row [R], first column [R], fits bool []): row r's real tokens
    go to packed row `row[r]` from column `col[r]` on; `fits` is False when
    `num_rows` rows of `row_len` cannot hold them (the placement is then
    meaningless). The same layout as the host `pack`.
  """
  mask = jnp.asarray(attention_mask_rs).astype(bool)
  lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)
  order = jnp.argsort(-lengths, stable=True)

  def place(fill, i):
    n = lengths[i]
    room = fill + n <= row_len
    j = jnp.argmax(room)  # the first row with room (empty rows come last)
    ok = room[j]
    col = fill[j]
    return fill.at[j].add(jnp.where(ok, n, 0)), (j, col, ok)

  _, (rows, cols, ok) = jax.lax.scan(
      place, jnp.zeros((num_rows,), jnp.int32), order)
  r = mask.shape[0]
  unsort = lambda x: jnp.zeros((r,), x.dtype).at[order].set(x)
  return (unsort(rows.astype(jnp.int32)), unsort(cols.astype(jnp.int32)),
          jnp.all(ok))


def pack_traced(tokens_rs, positions_rs, attention_mask_rs,
                completion_len: int, num_rows: int, row_len: int):
  """`pack` inside a jit: (`Packed` of jax arrays, fits bool []).

  Each row's real tokens keep their order and their own positions; the
  real tokens of a row need not be contiguous here (they are compacted).
  Where `fits` is False the layout is not valid: use the unpacked rows.
  """
  mask = jnp.asarray(attention_mask_rs).astype(bool)
  r, s = mask.shape
  p = s - completion_len
  where_row, where_col, fits = plan(mask, num_rows, row_len)
  rank = jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1  # among real tokens
  size = num_rows * row_len
  flat = jnp.where(mask, where_row[:, None] * row_len + where_col[:, None]
                   + rank, size).reshape(-1)  # padding: out of range, dropped
  # Segment ids as `pack` numbers them: 1 + the rows before this one (in
  # row order) that share its packed row.
  same = where_row[:, None] == where_row[None, :]
  seg_r = 1 + jnp.sum(same & jnp.tri(r, k=-1, dtype=bool), axis=1,
                      dtype=jnp.int32)
  scatter = lambda x: jnp.zeros((size,), jnp.int32).at[flat].set(
      jnp.asarray(x, jnp.int32).reshape(-1), mode="drop").reshape(
          num_rows, row_len)
  seg_rs = jnp.broadcast_to(seg_r[:, None], (r, s))
  # The hidden state that predicts completion token c is its predecessor's;
  # a missing token points at the prompt's last token.
  valid = mask[:, p:]
  prev = jnp.where(valid, rank[:, p:] - 1,
                   jnp.maximum(rank[:, p - 1:p], 0))
  packed = Packed(tokens=scatter(tokens_rs), positions=scatter(positions_rs),
                  segment_ids=scatter(seg_rs),
                  src_row=jnp.broadcast_to(where_row[:, None],
                                           (r, completion_len)),
                  src_col=where_col[:, None] + prev, valid=valid)
  return packed, fits


def num_packed_rows(rows: int, fraction: float) -> int:
  """Packed rows for `rows` unpacked ones at `fraction` (>= 1)."""
  return max(1, int(np.ceil(rows * fraction - 1e-9)))


def gather_completion(x_rp_l, packed: Packed):
  """Per-token values [Rp, L, ...] of the packed rows -> [R, C, ...] at the
  slots that predict each completion token (jittable)."""
  return x_rp_l[packed.src_row, packed.src_col]


def unpack(x_rp_l, packed: Packed, fill=0):
  """Like `gather_completion`, with `fill` where the completion token does
  not exist (e.g. per-token outputs for metrics)."""
  out = gather_completion(x_rp_l, packed)
  valid = packed.valid.reshape(packed.valid.shape + (1,) * (out.ndim - 2))
  return jnp.where(valid, out, fill)


def completion_hidden(model, packed: Packed):
  """Hidden states [R, C, D] predicting each completion token, computed on
  the packed rows: the drop-in for `hidden[:, P - 1:-1]` of the unpacked
  forward (`rl.train_step.completion_stats`)."""
  hidden, _ = model.hidden_states(packed.tokens, packed.positions, None,
                                  packed.segment_ids)
  return gather_completion(hidden, packed)


def forward_completion_hidden(model, tokens_rs, positions_rs,
                              attention_mask_rs, completion_len: int,
                              pack=None):
  """Hidden states [R, C, D] predicting each completion token of the rows:
  on packed rows when `pack` = (packed rows, row length) is given and they
  fit (`pack_traced`), else the unpacked forward's `hidden[:, P - 1:-1]`.
  The one place the policy's log-prob/train passes and the critic choose
  between the two (jittable; differentiable in the model's params)."""
  p = tokens_rs.shape[1] - completion_len

  def unpacked():
    hidden, _ = model.hidden_states(tokens_rs, positions_rs,
                                    attention_mask_rs)
    # The hidden state at t predicts token t + 1.
    return hidden[:, p - 1:-1]

  if pack is None:
    return unpacked()
  packed, fits = pack_traced(tokens_rs, positions_rs, attention_mask_rs,
                             completion_len, *pack)
  # Under `jax.vmap` (replicas) both branches run.
  return jax.lax.cond(fits, lambda: completion_hidden(model, packed),
                      unpacked)


def padding_fraction(mask) -> float:
  """Fraction of slots that are padding: `attention_mask` [R, S] before
  packing, `segment_ids` [Rp, L] (0 = padding) after (`perf/padding_fraction`)."""
  m = np.asarray(mask)
  return float(1.0 - np.count_nonzero(m) / max(m.size, 1))


def suggest_row_len(attention_mask_rs, multiple: int = 128) -> int:
  """The longest real span rounded up to `multiple` (splash attention tiles
  by 128): the smallest `row_len` that fits every row."""
  start, end = real_spans(attention_mask_rs)
  longest = int((end - start).max(initial=1))
  return -(-longest // multiple) * multiple
