"""Jitted, sharded KV-cache sampler for group rollouts.

`generate` validates its inputs on the host (before anything compiles), pads
the prompts into a length bucket, and calls one jitted program that
  1. prefills each left-padded prompt once and copies its KV cache to its
     `n_samples` rows (contiguous GRPO groups), in a cache preallocated for
     the whole completion,
  2. decodes inside `lax.while_loop`, stopping early when every row is done,
     over per-layer weights sliced once before the loop.

Axis legend: B prompts, R = B·n_samples rows, P prompt bucket length,
C max_new_tokens, V vocabulary.
"""

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax import struct

from jaxrl_ent import sharding
from jaxrl_ent.data import tokenization
from jaxrl_ent.models import decoder
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
             mesh=None) -> Rollout:
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
    mesh: optional mesh; rows are sharded over (`data`, `fsdp`).

  Raises:
    ValueError: empty prompt list, empty or too-long prompt, bad sampling
      settings — all before anything is compiled.
  """
  params = SamplingParams(
      max_new_tokens=max_new_tokens, temperature=float(temperature),
      top_p=float(top_p), top_k=top_k, n_samples=n_samples,
      stop_token_ids=tuple(int(t) for t in stop_token_ids), greedy=greedy,
      return_entropy=return_entropy, pad_id=pad_id)
  cfg = policy.cfg
  params.validate(cfg.vocab_size)
  if max_prompt_len is None:
    max_prompt_len = cfg.max_position_embeddings - max_new_tokens
  if max_prompt_len < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a "
                     f"prompt in the model's context of "
                     f"{cfg.max_position_embeddings} tokens.")
  buckets = tuple(prompt_buckets or
                  tokenization.default_buckets(max_prompt_len))

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
  length = tokenization.bucket_length(int(lengths.max()), buckets)
  if tokens is None or tokens.shape[1] != length:
    # Left-pad token lists (or re-pad arrays) into their bucket.
    if tokens is not None:
      prompts = [t[m.astype(bool)] for t, m in zip(tokens, mask)]
    padded = tokenization.left_pad([np.asarray(p, np.int32) for p in prompts],
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
  graphdef, state = nnx.split(policy)
  return _generate_jit(graphdef, state, tokens, mask, key, params)


@functools.partial(jax.jit, static_argnames=("graphdef", "params"))
def _generate_jit(graphdef, state, tokens_bp, mask_bp, key, params):
  policy = nnx.merge(graphdef, state)
  return generate_arrays(policy, tokens_bp, mask_bp, key, params)


def prefill(weights: decoder.DecodeWeights, tokens_bp, mask_bp,
            params: SamplingParams):
  """Prefills each prompt once, then copies its cache to its `n_samples` rows.

  The prompts run through the model once ([B, P], not [R, P]: the n rows of a
  group share their prompt, so running it n times would be n× the prefill
  FLOPs for the same keys and values); the cache and last logits are then
  repeated per row and the cache grown to P + C slots.

  Returns:
    (tokens_rp, mask_rp, positions_rp, prompt_index, carry): the repeated
    prompts [R, P], their RoPE positions, the prompt of each row [R], and the
    initial decode carry `(i, logits_rv, cache, out_tok_rc, out_logp_rc,
    out_ent_rc, done_r)` for `decode_step` (the cache has P + C slots).
  """
  cfg = weights.cfg
  n, c = params.n_samples, params.max_new_tokens
  b, p = tokens_bp.shape
  tokens_bp = sharding.constrain(tokens_bp, ("act_batch", None))
  mask_bp = sharding.constrain(mask_bp.astype(jnp.int32), ("act_batch", None))
  positions_bp = jnp.maximum(jnp.cumsum(mask_bp, axis=1) - 1, 0)
  hidden, cache = decoder.cached_forward(
      weights, tokens_bp, positions_bp, mask_bp,
      _constrain_cache(decoder.init_cache(cfg, b, p)))
  # Only the last column's logits are needed (left padding: it is real). The
  # head applied to every prompt position would be a [B, P, V] float32
  # buffer: 38 GiB per chip for 512 rows × 512 tokens of a 152k vocabulary
  # on v5e-8 (found by launch/aot_check.py), more than the chip's HBM.
  last_logits = decoder.cached_logits(weights, hidden[:, -1:])[:, 0]

  def rows(x):
    return jnp.repeat(x, n, axis=0)

  cache = _constrain_cache(decoder.KVCache(
      k=tuple(jnp.pad(rows(k), ((0, 0), (0, 0), (0, 0), (0, c)))
              for k in cache.k),
      v=tuple(jnp.pad(rows(v), ((0, 0), (0, 0), (0, c), (0, 0)))
              for v in cache.v),
      valid=jnp.pad(rows(cache.valid), ((0, 0), (0, c))),
      index=cache.index))
  r = b * n
  logits_rv = sharding.constrain(rows(last_logits), ("act_batch", "act_vocab"))
  carry = (jnp.zeros((), jnp.int32), logits_rv, cache,
           jnp.full((r, c), params.pad_id, jnp.int32),
           jnp.zeros((r, c), jnp.float32), jnp.zeros((r, c), jnp.float32),
           jnp.zeros((r,), bool))
  prompt_index = rows(jnp.arange(b, dtype=jnp.int32))
  return (rows(tokens_bp), rows(mask_bp), rows(positions_bp), prompt_index,
          carry)


def _constrain_cache(cache: decoder.KVCache) -> decoder.KVCache:
  """Rows over the batch axes, kv heads over tensor (both layouts: [B, K, .])."""
  axes = decoder.CACHE_AXES
  return cache._replace(
      k=tuple(sharding.constrain(k, axes) for k in cache.k),
      v=tuple(sharding.constrain(v, axes) for v in cache.v),
      valid=sharding.constrain(cache.valid, ("act_batch", None)))


def decode_step(weights: decoder.DecodeWeights, key, prompt_len_r, carry, *,
                params: SamplingParams):
  """Samples token `i` for every row and feeds it through the model.

  Args:
    weights: `policy.decode_weights()`.
    key: the rollout key; step `i` uses `fold_in(key, i)`.
    prompt_len_r: int [R] real prompt tokens per row (RoPE offset).
    carry: `(i, logits_rv, cache, out_tok_rc, out_logp_rc, out_ent_rc,
      done_r)` as made by `prefill`.
    params: sampling settings.

  Returns:
    The carry for step `i + 1`.
  """
  i, logits_rv, cache, out_tok, out_logp, out_ent, done = carry
  stop_ids = jnp.asarray(params.stop_token_ids or (-1,), jnp.int32)
  tok, logp, ent = sampling.sample(
      jax.random.fold_in(key, i), logits_rv, temperature=params.temperature,
      top_k=params.top_k, top_p=params.top_p, greedy=params.greedy)
  tok = jnp.where(done, params.pad_id, tok)
  live = ~done
  out_tok = out_tok.at[:, i].set(tok)
  out_logp = out_logp.at[:, i].set(jnp.where(live, logp, 0.0))
  if params.return_entropy:
    out_ent = out_ent.at[:, i].set(jnp.where(live, ent, 0.0))
  done = done | jnp.isin(tok, stop_ids)
  hidden, cache = decoder.cached_forward(
      weights, tok[:, None], (prompt_len_r + i)[:, None], live[:, None], cache)
  logits = decoder.cached_logits(weights, hidden)[:, 0]
  return i + 1, logits, cache, out_tok, out_logp, out_ent, done


def fuses_projections() -> bool:
  """Whether rollouts fuse q/k/v and gate/up: unless the active mesh splits
  heads or the MLP width (see `decoder.DecodeWeights`)."""
  return not sharding.splits(("act_heads", "act_kv_heads", "act_mlp"))


def rollout_weights(policy: decoder.DecoderLM) -> decoder.DecodeWeights:
  """The decode weights a rollout uses (made once, outside the decode loop)."""
  return policy.decode_weights(fuse=fuses_projections())


def generate_arrays(policy, tokens_bp, mask_bp, key, params: SamplingParams
                    ) -> Rollout:
  """The traceable core of `generate` (call it inside your own jit)."""
  c = params.max_new_tokens
  # Made once here, outside the decode loop (see `DecodeWeights`).
  weights = rollout_weights(policy)
  tokens_rp, mask_rp, positions_rp, prompt_index, carry = prefill(
      weights, tokens_bp, mask_bp, params)
  prompt_len = mask_rp.sum(axis=1)

  def cond(carry):
    i, _, _, _, _, _, done = carry
    return (i < c) & ~jnp.all(done)

  body = functools.partial(decode_step, weights, key, prompt_len,
                           params=params)
  _, _, _, out_tok, out_logp, out_ent, _ = jax.lax.while_loop(cond, body,
                                                              carry)

  # A row's completion runs up to and including its first stop token.
  stop_ids = jnp.asarray(params.stop_token_ids or (-1,), jnp.int32)
  is_stop = jnp.isin(out_tok, stop_ids) & (params.stop_token_ids != ())
  stopped_before = jnp.cumsum(is_stop, axis=1) - is_stop
  completion_mask = (stopped_before == 0).astype(jnp.int32)
  lengths = completion_mask.sum(axis=1)
  completion_mask = completion_mask * (jnp.arange(c) < lengths[:, None])
  positions_rc = prompt_len[:, None] + jnp.arange(c)[None, :]
  return Rollout(
      tokens=jnp.concatenate([tokens_rp, out_tok], axis=1),
      positions=jnp.concatenate([positions_rp, positions_rc],
                                axis=1).astype(jnp.int32),
      prompt_mask=mask_rp,
      completion_mask=completion_mask.astype(jnp.int32),
      lengths=lengths.astype(jnp.int32),
      logp=out_logp * completion_mask,
      entropy=out_ent * completion_mask,
      prompt_index=prompt_index)
