"""Jitted, sharded KV-cache sampler for group rollouts.

`generate` validates its inputs on the host (before anything compiles), pads
the prompts into a length bucket, and calls one jitted program that
  1. prefills each left-padded prompt once ([B, P], not [R, P]) into a
     prompt queue,
  2. inserts rows (prompt, sample) into decode slots, each with a cache of
     P + C columns, and decodes inside `lax.while_loop` over per-layer
     weights sliced once before the loop; each step's attention reads only
     the filled columns (`models.decode_attention`).

Static batch (default): one slot per row, all inserted at the start; the loop
runs until the longest row stops. Continuous batching (`continuous=True`,
`num_slots < R`): fewer slots than rows; when a slot's row stops (stop token
or budget), the slot is refilled with the next row of the queue — its
prompt's prefilled cache copied into the slot, as JetStream's insert does —
until the queue is empty. Either way row r's token i is drawn with the key
`fold_in(fold_in(key, r), i)`, so completions and log-probs do not depend on
which slot or step a row ran in: both paths give the same rollout.

Axis legend: B prompts, R = B·n_samples rows, S decode slots, P prompt bucket
length, C max_new_tokens, W slot cache width (P + C rounded up to a block),
V vocabulary.
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax import struct

from jaxrl_ent import sharding
from jaxrl_ent.models import decode_attention as attention_lib
from jaxrl_ent.models import decoder
from jaxrl_ent.rollout import padding
from jaxrl_ent.rollout import sampling


@struct.dataclass
class Rollout:
  """Prompts and their sampled completions (a frozen pytree).

  Attributes:
    tokens: int32 [R, P + C], left-padded prompt then completion (padding
      after the stop token is `pad_id`).
    positions: int32 [R, P + C], RoPE positions (0 at the first real token).
    prompt_mask: int32 [R, P], 1 on real prompt tokens.
    completion_mask: int32 [R, C], 1 on generated tokens up to and including
      the stop token.
    lengths: int32 [R], number of generated tokens per row.
    logp: float32 [R, C], behaviour log-prob of each sampled token under
      softmax(logits / temperature); 0 where the completion mask is 0.
    entropy: float32 [R, C], entropy of that distribution (0 where masked, and
      all zeros unless requested).
    prompt_index: int32 [R], which input prompt each row samples.
  """
  tokens: jax.Array
  positions: jax.Array
  prompt_mask: jax.Array
  completion_mask: jax.Array
  lengths: jax.Array
  logp: jax.Array
  entropy: jax.Array
  prompt_index: jax.Array

  @property
  def completion(self) -> jax.Array:
    """int32 [R, C] completion tokens."""
    return self.tokens[:, self.prompt_mask.shape[1]:]

  @property
  def attention_mask(self) -> jax.Array:
    """int32 [R, P + C] for teacher forcing the whole sequence."""
    return jnp.concatenate([self.prompt_mask, self.completion_mask], axis=1)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Static sampling settings (one compiled program per distinct value).

  Attributes:
    max_new_tokens: C, completion budget.
    temperature: > 0; log-probs are reported at this temperature.
    top_p: nucleus mass in (0, 1].
    top_k: 0 (off) or a positive number of tokens.
    n_samples: completions per prompt (the GRPO group size).
    stop_token_ids: tokens that end a completion (kept in it, like EOS).
    greedy: argmax decoding (log-probs still at `temperature`).
    return_entropy: also compute per-token entropies.
    pad_id: token written after a completion has stopped.
    continuous: continuous batching over `num_slots` decode slots.
    num_slots: decode slots with `continuous` (0: a quarter of the rows,
      at least 1); at or above the row count it is the static batch.
    kv_int8: int8 KV cache with float32 scales per (slot, kv head, token)
      (off by default: it changes the behaviour log-probs slightly).
    decode_attention: `models.decode_attention.CHOICES` member: `auto`
      (default) is the Pallas TPU kernel when compiling for a TPU,
      `blockwise` elsewhere (`decode_attention.resolve`). With `pallas_tpu`
      the slot caches hold keys token-major and each row left-aligned at
      column 0 (the kernel's layout; the completions are the same).
    kv_block: cache columns per block of the decode attention.
  """
  max_new_tokens: int
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  n_samples: int = 1
  stop_token_ids: tuple[int, ...] = ()
  greedy: bool = False
  return_entropy: bool = False
  pad_id: int = 0
  continuous: bool = False
  num_slots: int = 0
  kv_int8: bool = False
  decode_attention: str = "auto"
  kv_block: int = 128

  def attention(self, head_dim: int) -> str:
    """The decode attention impl, `auto` resolved for the target platform
    (the active mesh's devices, else jax's backend): call it when tracing."""
    return attention_lib.resolve(self.decode_attention, kv_int8=self.kv_int8,
                                 head_dim=head_dim)

  def slots(self, rows: int) -> int:
    """S, the decode slots for `rows` rows (R for the static batch)."""
    if not self.continuous:
      return rows
    return min(rows, self.num_slots or max(1, rows // 4))

  def validate(self, vocab_size: int | None = None):
    """Raises ValueError naming the offending field."""
    if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be a positive int, got "
                       f"{self.max_new_tokens!r}.")
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature!r} "
                       "(use greedy=True for argmax decoding).")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}.")
    if not isinstance(self.top_k, int) or self.top_k < 0:
      raise ValueError(f"top_k must be an int >= 0, got {self.top_k!r}.")
    if not isinstance(self.n_samples, int) or self.n_samples < 1:
      raise ValueError(f"n_samples must be an int >= 1, got "
                       f"{self.n_samples!r}.")
    if not isinstance(self.num_slots, int) or self.num_slots < 0:
      raise ValueError(f"num_slots must be an int >= 0, got "
                       f"{self.num_slots!r}.")
    if self.decode_attention not in attention_lib.CHOICES:
      raise ValueError(f"decode_attention must be one of "
                       f"{attention_lib.CHOICES}, got "
                       f"{self.decode_attention!r}.")
    if self.kv_int8 and self.decode_attention == "pallas_tpu":
      raise ValueError("decode_attention='pallas_tpu' cannot read the int8 "
                       "KV cache (kv_int8=True); use 'auto' or 'blockwise'.")
    if not isinstance(self.kv_block, int) or self.kv_block < 8:
      raise ValueError(f"kv_block must be an int >= 8, got "
                       f"{self.kv_block!r}.")
    if vocab_size is not None:
      bad = [t for t in (*self.stop_token_ids, self.pad_id)
             if not 0 <= t < vocab_size]
      if bad:
        raise ValueError(f"stop_token_ids/pad_id {bad} are outside the "
                         f"vocabulary [0, {vocab_size}).")


def generate(policy: decoder.DecoderLM, prompts, key: jax.Array, *,
             max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, n_samples: int = 1,
             stop_token_ids: Sequence[int] = (), greedy: bool = False,
             return_entropy: bool = False, pad_id: int = 0,
             max_prompt_len: int | None = None,
             prompt_buckets: Sequence[int] | None = None,
             continuous: bool = False, num_slots: int = 0,
             kv_int8: bool = False, decode_attention: str = "auto",
             row_budgets=None, mesh=None) -> Rollout:
  """Samples `n_samples` completions for each prompt.

  Args:
    policy: the model.
    prompts: a list of token-id lists, or a pair (tokens [B, P], mask [B, P])
      of left-padded arrays. In a multi-process run, pass global jax.Arrays
      (`sharding.global_batch`) already padded to their bucket: they are
      used in place, and read back to every host only to be validated.
    key: PRNG key; the same key gives the same completions.
    max_new_tokens: completion budget C.
    temperature, top_p, top_k, greedy: see `SamplingParams`.
    n_samples: completions per prompt; rows of one prompt are contiguous.
    stop_token_ids: tokens that end a completion.
    return_entropy: also return per-token entropies.
    pad_id: padding token.
    max_prompt_len: longest allowed prompt (default: the model's context
      minus `max_new_tokens`).
    prompt_buckets: allowed padded prompt lengths; prompts are padded to the
      smallest bucket that fits, so a run compiles one program per bucket.
    continuous, num_slots, kv_int8, decode_attention: see `SamplingParams`.
    row_budgets: optional int [R] per-row completion budgets (<= C): row r
      stops after `row_budgets[r]` tokens if nothing stopped it before.
    mesh: optional mesh; rows are sharded over (`data`, `fsdp`).

  Raises:
    ValueError: empty prompt list, empty or too-long prompt, bad sampling
      settings — all before anything is compiled.
  """
  params = SamplingParams(
      max_new_tokens=max_new_tokens, temperature=float(temperature),
      top_p=float(top_p), top_k=top_k, n_samples=n_samples,
      stop_token_ids=tuple(int(t) for t in stop_token_ids), greedy=greedy,
      return_entropy=return_entropy, pad_id=pad_id, continuous=continuous,
      num_slots=num_slots, kv_int8=kv_int8,
      decode_attention=decode_attention)
  cfg = policy.cfg
  params.validate(cfg.vocab_size)
  if max_prompt_len is None:
    max_prompt_len = cfg.max_position_embeddings - max_new_tokens
  if max_prompt_len < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a "
                     f"prompt in the model's context of "
                     f"{cfg.max_position_embeddings} tokens.")
  buckets = tuple(prompt_buckets or
                  padding.default_buckets(max_prompt_len))

  on_device = None
  if isinstance(prompts, tuple) and len(prompts) == 2 and hasattr(
      prompts[0], "shape"):
    if all(isinstance(x, jax.Array) and not x.is_fully_addressable
           for x in prompts):
      on_device = prompts  # Global arrays spanning several processes.
    tokens, mask = (np.asarray(sharding.to_host(x), np.int32)
                    for x in prompts)
    if tokens.ndim != 2 or tokens.shape != mask.shape:
      raise ValueError(f"prompts: tokens {tokens.shape} and mask "
                       f"{mask.shape} must both be [B, P].")
    lengths = mask.sum(axis=1)
  else:
    prompts = [list(p) for p in prompts]
    lengths = np.asarray([len(p) for p in prompts])
    tokens = mask = None
  if len(lengths) == 0:
    raise ValueError("prompts: the prompt list is empty.")
  if (lengths == 0).any():
    raise ValueError(f"prompts: prompt {int(np.argmin(lengths))} is empty.")
  if lengths.max() > max_prompt_len:
    i = int(np.argmax(lengths))
    raise ValueError(f"prompts: prompt {i} has {int(lengths[i])} tokens, more "
                     f"than max_prompt_len={max_prompt_len}.")
  length = padding.bucket_length(int(lengths.max()), buckets)
  if tokens is None or tokens.shape[1] != length:
    # Left-pad token lists (or re-pad arrays) into their bucket.
    if tokens is not None:
      prompts = [t[m.astype(bool)] for t, m in zip(tokens, mask)]
    padded = padding.left_pad([np.asarray(p, np.int32) for p in prompts],
                                   (length,), pad_id)
    tokens, mask = padded["tokens"], padded["mask"]
  if (tokens >= cfg.vocab_size).any() or (tokens < 0).any():
    raise ValueError(f"prompts: token ids must be in [0, {cfg.vocab_size}).")

  batch_sharding = None
  if mesh is not None:
    batch_sharding = sharding.batch_sharding(mesh, tokens.shape)
  if on_device is not None and on_device[0].shape == tokens.shape:
    # Multi-process: reshard the caller's global arrays (usually a no-op);
    # the host copies above are the same values on every process.
    tokens, mask = (jax.device_put(x.astype(jnp.int32), batch_sharding)
                    for x in on_device)
  else:
    tokens = jax.device_put(tokens, batch_sharding)
    mask = jax.device_put(mask, batch_sharding)
  if row_budgets is not None:
    row_budgets = np.asarray(row_budgets, np.int32)
    if row_budgets.shape != (len(lengths) * n_samples,):
      raise ValueError(f"row_budgets: shape {row_budgets.shape}, expected "
                       f"({len(lengths) * n_samples},) (one per row).")
    if (row_budgets < 1).any() or (row_budgets > max_new_tokens).any():
      raise ValueError(f"row_budgets must be in [1, max_new_tokens="
                       f"{max_new_tokens}].")
    row_budgets = jax.device_put(row_budgets, None if mesh is None else
                                 sharding.batch_sharding(mesh,
                                                         row_budgets.shape))
  graphdef, state = nnx.split(policy)
  return _generate_jit(graphdef, state, tokens, mask, key, params,
                       row_budgets)


@functools.partial(jax.jit, static_argnames=("graphdef", "params"))
def _generate_jit(graphdef, state, tokens_bp, mask_bp, key, params,
                  row_budgets):
  policy = nnx.merge(graphdef, state)
  return generate_arrays(policy, tokens_bp, mask_bp, key, params,
                         row_budgets=row_budgets)


class PromptQueue(NamedTuple):
  """The prefilled prompts rows are inserted from (loop-invariant).

  Attributes:
    cache: `SlotCache` of B entries × P columns: prompt b's keys/values,
      left-padded (`starts` = P - its length, `lengths` = P).
    logits: float32 [B, V], logits of each prompt's last token.
  """
  cache: decoder.SlotCache
  logits: jax.Array


class DecodeCarry(NamedTuple):
  """State of the decode loop (one entry per slot, outputs per row).

  Attributes:
    logits: float32 [S, V], logits for each slot's next token.
    cache: `decoder.SlotCache` of S slots × W columns.
    out_tok: int32 [R, C] sampled tokens (`pad_id` where none).
    out_logp: float32 [R, C] their log-probs.
    out_ent: float32 [R, C] entropies (zeros unless `return_entropy`).
    done: bool [S], the slot holds no live row.
    slot_row: int32 [S], the row each slot holds (or last held).
  """
  logits: jax.Array
  cache: decoder.SlotCache
  out_tok: jax.Array
  out_logp: jax.Array
  out_ent: jax.Array
  done: jax.Array
  slot_row: jax.Array


def cache_width(prompt_len: int, params: SamplingParams) -> tuple[int, int]:
  """(W, block): slot cache columns (P + C rounded up) and attention block."""
  need = prompt_len + params.max_new_tokens
  block = min(params.kv_block, -(-need // 8) * 8)
  return -(-need // block) * block, block


def _constrain_slots(cache: decoder.SlotCache) -> decoder.SlotCache:
  """Slots over the batch axes, kv heads over tensor (both layouts)."""
  axes = decoder.CACHE_AXES
  con = lambda xs: tuple(sharding.constrain(x, axes) for x in xs)
  rows = ("act_batch",)
  return decoder.SlotCache(con(cache.k), con(cache.v),
                           sharding.constrain(cache.lengths, rows),
                           sharding.constrain(cache.starts, rows),
                           con(cache.k_scale), con(cache.v_scale))


def prefill_queue(weights: decoder.DecodeWeights, tokens_bp, mask_bp,
                  params: SamplingParams) -> PromptQueue:
  """Runs each left-padded prompt through the model once ([B, P]).

  The n rows of a group share their prompt, so running it n times would be
  n× the prefill FLOPs for the same keys and values. The cache is
  quantised once here with `kv_int8`.
  """
  cfg = weights.cfg
  b, p = tokens_bp.shape
  tokens_bp = sharding.constrain(jnp.asarray(tokens_bp), ("act_batch", None))
  mask_bp = sharding.constrain(jnp.asarray(mask_bp, jnp.int32),
                               ("act_batch", None))
  positions_bp = jnp.maximum(jnp.cumsum(mask_bp, axis=1) - 1, 0)
  hidden, cache = decoder.cached_forward(
      weights, tokens_bp, positions_bp, mask_bp,
      _constrain_cache(decoder.init_cache(cfg, b, p)))
  # Only the last column's logits are needed (left padding: it is real). The
  # head applied to every prompt position would be a [B, P, V] float32
  # buffer: 38 GiB per chip for 512 rows × 512 tokens of a 152k vocabulary
  # on v5e-8 (found by launch/aot_check.py), more than the chip's HBM.
  last_logits = decoder.cached_logits(weights, hidden[:, -1:])[:, 0]
  prompt_len = mask_bp.sum(axis=1).astype(jnp.int32)
  k, v, ks, vs = cache.k, cache.v, (), ()
  starts, lengths = p - prompt_len, jnp.full((b,), p, jnp.int32)
  if attention_lib.token_major_keys(params.attention(cfg.head_dim)):
    k, v = _left_align(k, v, starts)
    starts, lengths = jnp.zeros_like(starts), prompt_len
  if params.kv_int8:
    k, ks = zip(*(attention_lib.quantize(x, axis=2) for x in k))
    v, vs = zip(*(attention_lib.quantize(x, axis=3) for x in v))
  return PromptQueue(
      _constrain_slots(decoder.SlotCache(
          tuple(k), tuple(v), lengths, starts, tuple(ks), tuple(vs))),
      sharding.constrain(last_logits, ("act_batch", "act_vocab")))


def _left_align(k, v, starts_b):
  """Keys [B, K, H, P] -> [B, K, P, H] and both caches' rows shifted left
  by `starts_b` (the prompt in columns [0, P - start), padding after it):
  the layout of `decode_attention.pallas_tpu`, made once per prompt."""
  p = v[0].shape[2]
  col_bp = (jnp.arange(p)[None, :] + starts_b[:, None]) % p
  shift = lambda x: jnp.take_along_axis(x, col_bp[:, None, :, None], axis=2)
  return (tuple(shift(x.transpose(0, 1, 3, 2)) for x in k),
          tuple(shift(x) for x in v))


def init_carry(queue: PromptQueue, rows: int, slots: int,
               params: SamplingParams) -> DecodeCarry:
  """Slots 0..S-1 holding rows 0..S-1 (row r samples prompt r // n)."""
  c, n = params.max_new_tokens, params.n_samples
  p = queue.cache.v[0].shape[2]
  width, _ = cache_width(p, params)
  k_axis = 2 if attention_lib.token_major_keys(
      params.attention(queue.cache.v[0].shape[-1])) else 3
  prompt = jnp.arange(slots, dtype=jnp.int32) // n

  def fill(xs, axis):
    pad = [(0, 0)] * 4
    pad[axis] = (0, width - p)
    return tuple(jnp.pad(x[prompt], pad) for x in xs)

  q = queue.cache
  cache = decoder.SlotCache(fill(q.k, k_axis), fill(q.v, 2),
                            q.lengths[prompt], q.starts[prompt],
                            fill(q.k_scale, k_axis),
                            fill(q.v_scale, 2))
  return DecodeCarry(
      logits=sharding.constrain(queue.logits[prompt],
                                ("act_batch", "act_vocab")),
      cache=_constrain_slots(cache),
      out_tok=jnp.full((rows, c), params.pad_id, jnp.int32),
      out_logp=jnp.zeros((rows, c), jnp.float32),
      out_ent=jnp.zeros((rows, c), jnp.float32),
      done=jnp.zeros((slots,), bool),
      slot_row=jnp.arange(slots, dtype=jnp.int32))


def prefill(weights: decoder.DecodeWeights, tokens_bp, mask_bp,
            params: SamplingParams):
  """Prefills the prompts and inserts every row into its own slot (S = R).

  Returns:
    (tokens_rp, mask_rp, positions_rp, prompt_index, carry): the repeated
    prompts [R, P], their RoPE positions, the prompt of each row [R], and the
    initial `DecodeCarry` of the static batch for `decode_step`.
  """
  n = params.n_samples
  rows = tokens_bp.shape[0] * n
  queue = prefill_queue(weights, tokens_bp, mask_bp, params)
  carry = init_carry(queue, rows, rows, params)
  return _prompt_rows(tokens_bp, mask_bp, n) + (carry,)


def _prompt_rows(tokens_bp, mask_bp, n):
  def rows(x):
    return jnp.repeat(x, n, axis=0)
  tokens_bp, mask_bp = jnp.asarray(tokens_bp), jnp.asarray(mask_bp, jnp.int32)
  positions_bp = jnp.maximum(jnp.cumsum(mask_bp, axis=1) - 1, 0)
  prompt_index = rows(jnp.arange(tokens_bp.shape[0], dtype=jnp.int32))
  return rows(tokens_bp), rows(mask_bp), rows(positions_bp), prompt_index


def _constrain_cache(cache: decoder.KVCache) -> decoder.KVCache:
  """Rows over the batch axes, kv heads over tensor (both layouts: [B, K, .])."""
  axes = decoder.CACHE_AXES
  return cache._replace(
      k=tuple(sharding.constrain(k, axes) for k in cache.k),
      v=tuple(sharding.constrain(v, axes) for v in cache.v),
      valid=sharding.constrain(cache.valid, ("act_batch", None)))


def row_keys(key, rows_s, tokens_s):
  """[S] keys `fold_in(fold_in(key, row), token)`: a draw depends on its row
  and token index only, never on the slot or step it ran at."""
  fold = jax.vmap(jax.random.fold_in, in_axes=(None, 0))
  return jax.vmap(jax.random.fold_in)(fold(key, rows_s), tokens_s)


def decode_step(weights: decoder.DecodeWeights, key, prompt_len_s,
                carry: DecodeCarry, *, params: SamplingParams,
                row_budgets=None, lockstep: bool = True,
                axis_name=None) -> DecodeCarry:
  """Samples the next token of every slot and feeds it through the model.

  Args:
    weights: `policy.decode_weights()`.
    key: the rollout key (see `row_keys`).
    prompt_len_s: int [S] real prompt tokens of each slot's row (its token
      index is `lengths - starts - prompt_len_s`).
    carry: the `DecodeCarry`.
    params: sampling settings.
    row_budgets: optional int [R] per-row budgets (default C for all).
    lockstep: the static batch (every slot started at step 0, so all write
      the same cache column); False for continuous batching.
    axis_name: the replicas' vmap axis, if any (see `generate_arrays`).

  Returns:
    The carry one token later; slots whose row stopped are `done`.
  """
  cache = carry.cache
  rows, c = carry.out_tok.shape
  stop_ids = jnp.asarray(params.stop_token_ids or (-1,), jnp.int32)
  i_s = cache.lengths - cache.starts - prompt_len_s
  tok, logp, ent = sampling.sample(
      row_keys(key, carry.slot_row, i_s), carry.logits,
      temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
      greedy=params.greedy)
  live = ~carry.done
  tok = jnp.where(live, tok, params.pad_id)
  # Finished slots write nowhere (row index R is out of range: dropped).
  at = (jnp.where(live, carry.slot_row, rows), i_s)
  out_tok = carry.out_tok.at[at].set(tok, mode="drop")
  out_logp = carry.out_logp.at[at].set(logp, mode="drop")
  out_ent = carry.out_ent
  if params.return_entropy:
    out_ent = out_ent.at[at].set(ent, mode="drop")
  budget = c if row_budgets is None else row_budgets[
      jnp.minimum(carry.slot_row, rows - 1)]
  done = carry.done | jnp.isin(tok, stop_ids) | (i_s + 1 >= budget)
  width = cache.v[0].shape[2]
  # `cache_width` made W a multiple of kv_block, or one block if smaller.
  block = params.kv_block if width % params.kv_block == 0 else width
  impl = params.attention(weights.cfg.head_dim)
  # Left-aligned rows (`pallas_tpu`) write at their own columns.
  lockstep &= not attention_lib.token_major_keys(impl)
  hidden, cache = decoder.decode_forward(
      weights, tok, cache, attention=impl, block=block, lockstep=lockstep,
      axis_name=axis_name)
  if not lockstep:
    # A stopped slot's columns are no longer read: shrink it to one column
    # so later steps' attention does not scan them (until it is refilled).
    cache = cache._replace(lengths=jnp.where(done, cache.starts + 1,
                                             cache.lengths))
  cache = _constrain_slots(cache)
  logits = decoder.cached_logits(weights, hidden)[:, 0]
  return DecodeCarry(sharding.constrain(logits, ("act_batch", "act_vocab")),
                     cache, out_tok, out_logp, out_ent, done, carry.slot_row)


def refill(queue: PromptQueue, carry: DecodeCarry, prompt_len_s, next_row,
           params: SamplingParams, axis_name=None):
  """Inserts the next rows of the queue into the slots that are done.

  The k-th done slot (in slot order) gets row `next_row + k` while rows
  remain: the prompt's packed cache is copied into the slot's first P
  columns (one dynamic-update-slice per refilled slot and layer, in place),
  and its logits, filled columns and prompt length are set.

  With `axis_name` (the replicas' vmap axis) the `cond` and the copy loop
  run on the largest count over the replicas, so neither is batched: vmap
  of a `cond` with a batched test computes both branches and selects every
  cache leaf, on every decode step. A replica with fewer slots to fill
  writes its own slot back for the extra iterations.

  Returns:
    (carry, prompt_len_s, next_row).
  """
  rows = carry.out_tok.shape[0]
  new_row = next_row + jnp.cumsum(carry.done) - 1
  take = carry.done & (new_row < rows)
  count = jnp.sum(take)
  shared = count if axis_name is None else jax.lax.pmax(count, axis_name)

  def insert(args):
    carry, prompt_len_s = args
    prompt = jnp.where(take, new_row, 0) // params.n_samples
    slots = jnp.nonzero(take, size=take.shape[0], fill_value=0)[0]
    q = queue.cache

    def one(j, arrs):
      s = slots[j]
      b = prompt[s]

      def put(dst, src):
        new = jax.lax.dynamic_index_in_dim(src, b, 0)
        at = (s, 0, 0, 0)
        if axis_name is not None:  # j >= count: this replica is done.
          new = jnp.where(j < count, new,
                          jax.lax.dynamic_slice(dst, at, new.shape))
        return jax.lax.dynamic_update_slice(dst, new, at)
      return tuple(tuple(put(d, x) for d, x in zip(ds, xs))
                   for ds, xs in zip(arrs, (q.k, q.v, q.k_scale, q.v_scale)))

    cache = carry.cache
    k, v, ks, vs = jax.lax.fori_loop(
        0, shared, one, (cache.k, cache.v, cache.k_scale, cache.v_scale))
    lengths = jnp.where(take, q.lengths[prompt], cache.lengths)
    starts = jnp.where(take, q.starts[prompt], cache.starts)
    cache = _constrain_slots(decoder.SlotCache(k, v, lengths, starts, ks, vs))
    logits = jnp.where(take[:, None], queue.logits[prompt], carry.logits)
    carry = carry._replace(
        logits=logits, cache=cache, done=carry.done & ~take,
        slot_row=jnp.where(take, new_row, carry.slot_row).astype(jnp.int32))
    return carry, jnp.where(take, q.lengths[prompt] - q.starts[prompt],
                            prompt_len_s)

  carry, prompt_len_s = jax.lax.cond(shared > 0, insert, lambda a: a,
                                     (carry, prompt_len_s))
  return carry, prompt_len_s, next_row + count


def fuses_projections() -> bool:
  """Whether rollouts fuse q/k/v and gate/up: unless the active mesh splits
  heads or the MLP width (see `decoder.DecodeWeights`)."""
  return not sharding.splits(("act_heads", "act_kv_heads", "act_mlp"))


def rollout_weights(policy: decoder.DecoderLM) -> decoder.DecodeWeights:
  """The decode weights a rollout uses (made once, outside the decode loop)."""
  return policy.decode_weights(fuse=fuses_projections())


def _running(done, axis_name):
  """The decode loop's test: some row is not done. With `axis_name` (a
  `jax.vmap` axis over replicas) the test is shared by all replicas, so it is
  not batched: vmap of a `while_loop` with a batched test keeps every replica
  looping and selects each carry leaf, the whole KV cache included, between
  the new and the old value on every token (a quarter of a 4-replica
  rollout's time at the main job's shapes). A replica whose rows are done
  meanwhile steps on as a no-op: done rows write nowhere, and no row runs
  past its budget, so the cache columns stay in range."""
  running = ~jnp.all(done)
  if axis_name is None:
    return running
  return jax.lax.pmax(running.astype(jnp.int32), axis_name) > 0


def generate_arrays(policy, tokens_bp, mask_bp, key, params: SamplingParams,
                    row_budgets=None, *, axis_name=None) -> Rollout:
  """The traceable core of `generate` (call it inside your own jit or vmap).

  Args:
    policy: the model.
    tokens_bp, mask_bp: int [B, P] left-padded prompts and their mask.
    key: PRNG key.
    params: sampling settings (static).
    row_budgets: optional int [R] per-row budgets (<= C).
    axis_name: under `jax.vmap(..., axis_name=...)` over replicas, that name:
      one loop test for all replicas (see `_running`), and shared bounds for
      the refill (`refill`) and the blocks each step reads
      (`decode_attention.blockwise`); the rollouts are the same either way.
  """
  n = params.n_samples
  rows = tokens_bp.shape[0] * n
  slots = params.slots(rows)
  # Made once here, outside the decode loop (see `DecodeWeights`).
  weights = rollout_weights(policy)
  queue = prefill_queue(weights, tokens_bp, mask_bp, params)
  carry = init_carry(queue, rows, slots, params)
  step = functools.partial(decode_step, weights, key, params=params,
                           row_budgets=row_budgets, axis_name=axis_name)
  if slots == rows:  # Static batch: every row has its slot from the start.
    prompt_len_r = jnp.repeat(queue.cache.lengths - queue.cache.starts, n)
    carry = jax.lax.while_loop(lambda c: _running(c.done, axis_name),
                               lambda c: step(prompt_len_r, c), carry)
  else:
    def body(state):
      carry, prompt_len_s, next_row = state
      carry = step(prompt_len_s, carry, lockstep=False)
      return refill(queue, carry, prompt_len_s, next_row, params, axis_name)
    state = (carry, carry.cache.lengths - carry.cache.starts,
             jnp.asarray(slots, jnp.int32))
    carry, _, _ = jax.lax.while_loop(
        lambda s: _running(s[0].done, axis_name), body, state)
  return _assemble(tokens_bp, mask_bp, carry, params, row_budgets)


def _assemble(tokens_bp, mask_bp, carry: DecodeCarry, params: SamplingParams,
              row_budgets) -> Rollout:
  c = params.max_new_tokens
  tokens_rp, mask_rp, positions_rp, prompt_index = _prompt_rows(
      tokens_bp, mask_bp, params.n_samples)
  prompt_len = mask_rp.sum(axis=1)
  out_tok = carry.out_tok
  # A row's completion runs up to and including its first stop token, at
  # most to its budget.
  stop_ids = jnp.asarray(params.stop_token_ids or (-1,), jnp.int32)
  is_stop = jnp.isin(out_tok, stop_ids) & (params.stop_token_ids != ())
  stopped_before = jnp.cumsum(is_stop, axis=1) - is_stop
  budget = c if row_budgets is None else row_budgets[:, None]
  completion_mask = (stopped_before == 0) & (jnp.arange(c) < budget)
  lengths = completion_mask.sum(axis=1)
  positions_rc = prompt_len[:, None] + jnp.arange(c)[None, :]
  out = Rollout(
      tokens=jnp.concatenate([tokens_rp, out_tok], axis=1),
      positions=jnp.concatenate([positions_rp, positions_rc],
                                axis=1).astype(jnp.int32),
      prompt_mask=mask_rp,
      completion_mask=completion_mask.astype(jnp.int32),
      lengths=lengths.astype(jnp.int32),
      logp=carry.out_logp * completion_mask,
      entropy=carry.out_ent * completion_mask,
      prompt_index=prompt_index)
  # Rows over the batch axes, as the trainer's update expects them (the
  # slot bookkeeping above may leave the outputs replicated).
  return jax.tree.map(
      lambda x: sharding.constrain(x, ("act_batch",) + (None,) * (x.ndim - 1)),
      out)
