"""Sharding-independent checksums of a pytree's exact bits (the kernel the
checkpoints' integrity records use).

Per leaf, one jitted pass computes a 64-bit fingerprint: two lanes of
`Σ_i fmix32(word_i + fmix32(i ⊕ seed))` mod 2^32, `i` the element's
row-major index, and whether the leaf is finite. Modular sums are
order-free, so the value depends only on the logical array, not on how it
is sharded: a checkpoint saved on one mesh verifies on another.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils

# murmur3's 32-bit finaliser: a bijection on uint32 with good avalanche.
_FMIX_1 = 0x85EBCA6B
_FMIX_2 = 0xC2B2AE35
# One seed per lane; two lanes give a 64-bit fingerprint per leaf.
_LANE_SEEDS = (0x243F6A88, 0xB7E15162)


def _fmix32(h):
  h = h ^ (h >> 16)
  h = h * jnp.uint32(_FMIX_1)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(_FMIX_2)
  return h ^ (h >> 16)


def _words(x) -> jax.Array:
  """The leaf's bits as uint32 words (one per element; two for 8-byte types)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if jnp.iscomplexobj(x):
    x = jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = np.dtype(x.dtype).itemsize
  if size == 4:
    return lax.bitcast_convert_type(x, jnp.uint32)
  if size == 8:  # Only with jax_enable_x64: adds a trailing axis of 2 words.
    return lax.bitcast_convert_type(x, jnp.uint32)
  narrow = {1: jnp.uint8, 2: jnp.uint16}[size]
  return lax.bitcast_convert_type(x, narrow).astype(jnp.uint32)


def _leaf_fingerprint(x) -> jax.Array:
  """uint32 [2]: Σ_i fmix32(w_i + fmix32(i ⊕ seed)) mod 2^32, per lane seed.

  `fmix32` is a bijection, so changing any single word always changes both
  lanes; for random corruption of several words each lane collides with
  probability ~2^-32. Modular sums are order-free, hence the result does not
  depend on how the array is sharded.
  """
  w = _words(x)
  idx = jnp.zeros(w.shape, jnp.uint32)
  stride = 1
  for d in reversed(range(w.ndim)):
    idx = idx + (lax.broadcasted_iota(jnp.uint32, w.shape, d) *
                 jnp.uint32(stride & 0xFFFFFFFF))
    stride *= w.shape[d]
  lanes = [jnp.sum(_fmix32(w + _fmix32(idx ^ jnp.uint32(seed))),
                   dtype=jnp.uint32) for seed in _LANE_SEEDS]
  return jnp.stack(lanes)


def _is_float(dtype) -> bool:
  return (jnp.issubdtype(dtype, jnp.floating) or
          jnp.issubdtype(dtype, jnp.complexfloating))


@jax.jit
def _summarize(leaves: list[jax.Array]):
  """(finite bool [n], fingerprints uint32 [n, 2]) in one device program."""
  finite = jnp.stack([jnp.all(jnp.isfinite(x)) if _is_float(x.dtype)
                      else jnp.asarray(True) for x in leaves])
  fps = jnp.stack([_leaf_fingerprint(x) for x in leaves])
  return finite, fps


def to_host(x: jax.Array) -> np.ndarray:
  if x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def leaf_table(tree) -> tuple[list[str], list[Any]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [jax.tree_util.keystr(p) for p, _ in flat], [x for _, x in flat]


def _device_leaves(leaves) -> list[jax.Array]:
  # Host leaves (numpy, Python scalars) are put on device explicitly, which
  # `jax_transfer_guard="disallow"` permits.
  return [x if isinstance(x, jax.Array) else jax.device_put(np.asarray(x))
          for x in leaves]


def describe(tree) -> tuple[list[dict], np.ndarray]:
  """Per-leaf {path, shape, dtype, fp} records and per-leaf finiteness."""
  paths, leaves = leaf_table(tree)
  if not leaves:
    return [], np.ones((0,), bool)
  finite, fps = _summarize(_device_leaves(leaves))
  finite, fps = to_host(finite), to_host(fps)
  records = [{"path": p, "shape": list(np.shape(x)), "dtype": str(x.dtype),
              "fp": f"{int(a):08x}{int(b):08x}"}
             for p, x, (a, b) in zip(paths, leaves, fps)]
  return records, finite


def state_fingerprint(tree) -> dict[str, str]:
  """{leaf path: 16-hex-digit fingerprint} of a pytree of arrays.

  Equal for equal values regardless of sharding or device placement.
  """
  return {r["path"]: r["fp"] for r in describe(tree)[0]}
