"""Loop-exact FLOP counts and the roofline step-time estimate.

XLA's `compiled.cost_analysis()` on TPU counts the body of every while loop
once, whatever its trip count: the layer `lax.scan`, the micro-batch scan and
the token/vocabulary chunk loops of `token_stats` are all counted as one
iteration, so its FLOPs are several times too low for a model. The count
here walks the traced jaxpr instead, multiplying every `scan` body by its
length, and counts the matrix products (`dot_general`), which are where
transformer FLOPs are (elementwise work is < 1 % at these widths).

The jaxpr is the *global* program; every product here is split over all
devices of the mesh (batch over `data`×`fsdp`, features over `tensor`), so
per-device FLOPs are the global count divided by the device count.
"""

import dataclasses
import math

import jax
from jax.extend import core as jex_core


def _dot_flops(eqn) -> int:
  (lc, _), (lb, _) = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  out = eqn.outvars[0].aval.shape
  contracted = math.prod(lhs[d] for d in lc)
  del lb  # Batch dims are already in the output shape.
  return 2 * math.prod(out) * contracted


def _sub_jaxprs(params):
  for value in params.values():
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(v, jex_core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jex_core.Jaxpr):
        yield v


def _pallas_flops(eqn) -> int:
  """A Pallas kernel: its body (one grid step's blocks) × the grid.

  Splash attention's causal kernels (as `models.attention` builds them:
  equal query and key blocks, so an n × n block grid whose last axis has
  n steps in both the forward and the dkv kernel) skip the blocks above
  the diagonal at run time: n(n + 1)/2 of the n² block pairs run.
  """
  grid = tuple(eqn.params["grid_mapping"].grid)
  try:
    body = jaxpr_flops(eqn.params["jaxpr"])
  except ValueError:
    return _paged_attention_flops(eqn)
  steps = math.prod(grid)
  if "splash" in str(eqn.params.get("name", "")) and grid:
    n = grid[-1]
    steps = steps * (n + 1) // (2 * n)
  return steps * body


def _paged_attention_flops(eqn) -> int:
  """A kernel with a data-dependent loop: the TPU paged decode attention
  (`models.decode_attention.pallas_tpu`), whose per-sequence loop runs over
  its filled blocks. Counted as if every page of the [K, pages, page, H]
  key and value pools were read by its group of G queries (the full cache:
  an upper bound, as the AOT check counts the other decode attentions):
  QK^T and PV, 2 · 2 · G · H per (kv head, cached token).
  """
  q = eqn.params["out_avals"][0].shape        # [B·K, G, (1,) H]
  pools = [v.aval.shape for v in eqn.invars if v.aval.ndim == 4
           and v.aval.shape[-1] == q[-1] and v.aval.shape != q]
  if len(q) not in (3, 4) or not pools:
    raise ValueError("jaxpr_flops: a Pallas kernel with a data-dependent "
                     "loop that is not the paged decode attention.")
  kv_heads, pages, page, h = pools[0]
  return 4 * q[1] * h * kv_heads * pages * page


def jaxpr_flops(jaxpr) -> int:
  """FLOPs of the matrix products in `jaxpr`, loop bodies × trip count.

  `scan` bodies count `length` times; a `cond` counts its most expensive
  branch; `while` loops have no static trip count and raise (compile their
  body as its own program instead, as the decode step is).

  Args:
    jaxpr: a `Jaxpr` or `ClosedJaxpr` (e.g. `jax.jit(f).trace(...).jaxpr`).

  Raises:
    ValueError: a `while` loop whose body contains matrix products.
  """
  if isinstance(jaxpr, jex_core.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "scan":
      total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"])
    elif name == "cond":
      total += max(jaxpr_flops(b) for b in eqn.params["branches"])
    elif name == "pallas_call":
      total += _pallas_flops(eqn)
    elif name == "shard_map":
      # The body sees one device's shard: every device runs it.
      total += eqn.params["mesh"].size * sum(
          jaxpr_flops(j) for j in _sub_jaxprs(eqn.params))
    elif name == "while":
      if jaxpr_flops(eqn.params["body_jaxpr"]):
        raise ValueError("jaxpr_flops: a while loop with matrix products has "
                         "no static trip count; count its body separately.")
    else:
      total += sum(jaxpr_flops(j) for j in _sub_jaxprs(eqn.params))
  return total


@dataclasses.dataclass(frozen=True)
class Roofline:
  """Per-device work of one program and its roofline time.

  Attributes:
    flops: loop-exact FLOPs per device.
    hbm_bytes: estimated HBM bytes per device (see `roofline`).
    seconds: max(flops / peak, hbm_bytes / bandwidth).
    bound: "compute" or "memory", whichever term is larger.
  """
  flops: float
  hbm_bytes: float
  seconds: float
  bound: str


def roofline(*, flops_global: float, num_devices: int, xla_bytes: float,
             io_bytes: float, weight_bytes: float, peak_flops: float,
             hbm_bandwidth: float) -> Roofline:
  """Roofline time of one program on one device (a lower bound).

  Args:
    flops_global: loop-exact FLOPs of the whole (unpartitioned) program.
    num_devices: devices the program is partitioned over.
    xla_bytes: per-device bytes accessed from XLA's `cost_analysis()`
      (loop bodies counted once, so a lower bound).
    io_bytes: per-device argument + output bytes (each is touched at least
      once), from `memory_analysis()`.
    weight_bytes: per-device weight traffic the program cannot avoid: each
      forward or backward pass reads every layer's weights as the device
      uses them (FSDP-gathered: full size over the `tensor` shards).
    peak_flops, hbm_bandwidth: the chip's figures.

  HBM bytes are the largest of the three byte counts. Inter-chip
  communication is not included: collectives are assumed to overlap with
  compute, which XLA's async collectives aim for. Activation traffic inside
  loops beyond one iteration is not counted either, so memory-bound
  programs may run slower than this.
  """
  flops = flops_global / num_devices
  hbm = max(xla_bytes, io_bytes, weight_bytes)
  t_compute, t_memory = flops / peak_flops, hbm / hbm_bandwidth
  return Roofline(flops=flops, hbm_bytes=hbm,
                  seconds=max(t_compute, t_memory),
                  bound="compute" if t_compute >= t_memory else "memory")
