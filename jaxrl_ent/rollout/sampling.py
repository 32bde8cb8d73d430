"""Token sampling kernels: temperature, top-k, top-p (nucleus), greedy.

Axis legend: B batch, V vocabulary. Kernels take arrays and Python scalars.
"""

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf


def truncate_logits(logits_bv, *, top_k: int = 0, top_p: float = 1.0):
  """Masks logits outside the top-k set and outside the top-p nucleus.

  Args:
    logits_bv: [B, V] float32 logits (already divided by the temperature).
    top_k: keep the k largest logits (0 = no top-k). Ties at the k-th value
      are all kept.
    top_p: keep the smallest set of most likely tokens whose probability
      reaches `top_p` (1.0 = no nucleus). The most likely token is always kept.

  Returns:
    [B, V] logits with excluded entries set to -inf.
  """
  if top_k > 0 and top_k < logits_bv.shape[-1]:
    kth = jax.lax.top_k(logits_bv, top_k)[0][..., -1:]
    logits_bv = jnp.where(logits_bv < kth, _NEG_INF, logits_bv)
  if top_p < 1.0:
    sorted_bv = jnp.sort(logits_bv, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_bv, axis=-1)
    # Probability mass strictly before each sorted token: a token is kept
    # while the mass before it is below top_p (so the first always is).
    before = jnp.cumsum(probs, axis=-1) - probs
    keep = before < top_p
    threshold = jnp.min(jnp.where(keep, sorted_bv, jnp.inf), axis=-1,
                        keepdims=True)
    logits_bv = jnp.where(logits_bv < threshold, _NEG_INF, logits_bv)
  return logits_bv


def sample(key, logits_bv, *, temperature: float, top_k: int = 0,
           top_p: float = 1.0, greedy: bool = False):
  """Samples one token per row.

  Returns:
    (tokens [B] int32, logp [B], entropy [B]): the log-prob and entropy are
    those of the *untruncated* distribution softmax(logits / temperature),
    i.e. exactly what the training forward pass computes at the sampling
    temperature (top-k/top-p only restrict which tokens can be drawn).
  """
  scaled = logits_bv.astype(jnp.float32) / temperature
  logp_bv = jax.nn.log_softmax(scaled, axis=-1)
  if greedy:
    tokens = jnp.argmax(scaled, axis=-1)
  else:
    tokens = jax.random.categorical(
        key, truncate_logits(scaled, top_k=top_k, top_p=top_p), axis=-1)
  tokens = tokens.astype(jnp.int32)
  logp = jnp.take_along_axis(logp_bv, tokens[:, None], axis=-1)[:, 0]
  entropy = -jnp.sum(jnp.exp(logp_bv) * logp_bv, axis=-1)
  return tokens, logp, entropy
