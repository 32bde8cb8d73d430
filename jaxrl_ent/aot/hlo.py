"""Collectives in compiled HLO: which kinds, how many, how big.

The SPMD partitioner turns the sharding rules into communication: FSDP
(`embed → fsdp`) gathers parameters before use (all-gather) and reduces
gradients back to shards (reduce-scatter, or an all-reduce when XLA prefers
it), tensor parallelism (`mlp`/`heads`/`vocab → tensor`) all-reduces
activations. Counting them in the compiled program shows the rules did what
they say. Async pairs (`all-gather-start`/`-done`) count once.
"""

import collections
import math
import re

import numpy as np

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all",
         "collective-permute")

# `%name = <shape> <op>(` where <op> is a collective or its async start.
_INSTR = re.compile(
    r"^\s*(?:ROOT\s+)?%[\w.\-]+\s*=\s*(?P<shape>.*?)\s+"
    r"(?P<op>all-gather|reduce-scatter|all-reduce|all-to-all|"
    r"collective-permute)(?:-start)?\(")
_ARRAY = re.compile(r"\b(pred|[subf]\d+|bf16|f8e\w+)\[([\d,]*)\]")


def _dtype_bytes(name: str) -> int:
  if name == "pred":
    return 1
  if name == "bf16":
    return 2
  if name.startswith("f8"):
    return 1
  return max(1, int(re.sub(r"\D", "", name)) // 8)


def array_bytes(shape_text: str) -> list[int]:
  """Bytes of every array shape (`bf16[8,128]`) in an HLO shape string."""
  out = []
  for dtype, dims in _ARRAY.findall(shape_text):
    n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
    out.append(n * _dtype_bytes(dtype))
  return out


def count_collectives(hlo_text: str) -> dict[str, int]:
  """Number of collective instructions of each kind in `hlo_text`.

  Static counts: a collective inside a loop body counts once. Kinds that
  do not occur are reported as 0.
  """
  counts = collections.Counter({k: 0 for k in KINDS})
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if m:
      counts[m.group("op")] += 1
  return dict(counts)


def largest_collective_bytes(hlo_text: str, kind: str) -> int:
  """Largest array (per device) produced or consumed by a `kind` collective.

  For an all-gather this is the gathered buffer: a parameter gathered to
  its full, unsharded size shows up here at its full size.
  """
  best = 0
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if m and m.group("op") == kind:
      best = max([best] + array_bytes(m.group("shape")))
  return best


def full_size_gathers(hlo_text: str, shape: tuple[int, ...], dtype) -> int:
  """How many all-gathers produce an array of exactly `shape` (any layout).

  Used to show a parameter is never rebuilt at its full, unsharded size on
  one device (e.g. the [V, D] embedding at 7B).
  """
  itemsize = np.dtype(dtype).itemsize
  target = math.prod(shape) * itemsize
  dims = ",".join(str(d) for d in shape)
  n = 0
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if m and m.group("op") == "all-gather" and f"[{dims}]" in m.group(
        "shape") and target in array_bytes(m.group("shape")):
      n += 1
  return n


_CUSTOM_CALL = re.compile(r'custom_call_target="(?P<target>[^"]+)"')


def count_custom_calls(hlo_text: str) -> dict[str, int]:
  """custom-call target -> number of custom calls in `hlo_text`, plus
  `splash`: the Mosaic (`tpu_custom_call`) ones that are splash attention
  kernels (their kernel name, e.g. `splash_mha_fwd_segmented_residuals`,
  is in the instruction's metadata or backend config)."""
  counts = collections.Counter()
  for line in hlo_text.splitlines():
    m = _CUSTOM_CALL.search(line)
    if m and "custom-call(" in line:
      counts[m.group("target")] += 1
      if m.group("target") == "tpu_custom_call" and "splash" in line:
        counts["splash"] += 1
  return dict(counts)
