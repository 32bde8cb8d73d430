"""The one place that knows mesh axis names.

Everything else names *logical* axes (`embed`, `mlp`, `vocab`, `act_batch`,
...). This module owns: the mesh built from config, the default logical→mesh
rules (overridable), the shardings of a model/train state inferred from its
abstract shapes, activation constraints, and a start-up check that too many
parameter bytes are not replicated.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters
sharded over it, ZeRO-3 style), `tensor` (Megatron-style model parallel).
"""

import contextlib
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # Activations.
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # Parameters.
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    # LoRA adapters' rank axis (models/lora.py): small, whole everywhere.
    ("lora_rank", None),
)


def make_mesh(shape: Mapping[str, int] | Sequence[tuple[str, int]],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a mesh with axes (`data`, `fsdp`, `tensor`) from a config.

  Args:
    shape: sizes per axis name, e.g. `{"data": 1, "fsdp": -1, "tensor": 2}` or
      `[("data", 2), ("fsdp", 2), ("tensor", 2)]`. Missing axes get size 1;
      at most one axis may be -1 (= all remaining devices).
    devices: devices to use (default: all of `jax.devices()`).

  Raises:
    ValueError: unknown axis name, non-positive size, several -1 axes, or a
      product of sizes that does not equal the number of devices.
  """
  items = list(shape.items()) if isinstance(shape, Mapping) else list(shape)
  sizes = dict.fromkeys(MESH_AXES, 1)
  seen = set()
  for name, size in items:
    if name not in MESH_AXES:
      raise ValueError(f"mesh: unknown axis {name!r}; allowed axes are "
                       f"{MESH_AXES}.")
    if name in seen:
      raise ValueError(f"mesh: axis {name!r} is given twice.")
    seen.add(name)
    if not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
      raise ValueError(f"mesh: axis {name!r} has size {size!r}; use a "
                       "positive int or -1 (auto).")
    sizes[name] = int(size)
  devices = list(jax.devices() if devices is None else devices)
  auto = [n for n, s in sizes.items() if s == -1]
  if len(auto) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {auto}.")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if auto:
    if len(devices) % fixed:
      raise ValueError(
          f"mesh: the fixed axes {sizes} multiply to {fixed}, which does not "
          f"divide the {len(devices)} available devices.")
    sizes[auto[0]] = len(devices) // fixed
  total = math.prod(sizes.values())
  if total != len(devices):
    raise ValueError(
        f"mesh: shape {sizes} needs {total} devices but {len(devices)} are "
        f"available ({devices[0].platform}); make the sizes multiply to "
        f"{len(devices)} or set one axis to -1.")
  axis_shape = tuple(sizes[a] for a in MESH_AXES)
  # Auto axes: shardings propagate through jit and with_sharding_constraint
  # is honoured (jax.make_mesh defaults to explicit axes).
  return jax.make_mesh(axis_shape, MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)


def merge_rules(overrides: Mapping[str, Any] | Sequence | None = None,
                base: Sequence = DEFAULT_RULES) -> tuple[tuple[str, Any], ...]:
  """Returns `base` with the logical axes in `overrides` remapped."""
  if not overrides:
    return tuple(base)
  overrides = dict(overrides.items() if isinstance(overrides, Mapping)
                   else overrides)
  for logical, mesh_axes in overrides.items():
    for axis in _as_tuple(mesh_axes):
      if axis not in MESH_AXES:
        raise ValueError(f"sharding rules: logical axis {logical!r} maps to "
                         f"unknown mesh axis {axis!r}; allowed: {MESH_AXES}.")
  merged = [(k, overrides.pop(k, v)) for k, v in base]
  return tuple(merged + list(overrides.items()))


def _as_tuple(mesh_axes) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  if isinstance(mesh_axes, str):
    return (mesh_axes,)
  return tuple(mesh_axes)


def logical_to_spec(logical_axes: Sequence[str | None],
                    rules: Sequence = DEFAULT_RULES,
                    shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec.

  A mesh axis is used at most once per spec (first come, first served), and,
  when `shape` and `mesh` are given, a dimension that the mesh axes do not
  divide evenly is left replicated (e.g. 2 KV heads on a 4-way tensor axis).
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(logical_axes):
    if name is not None and name not in table:
      raise ValueError(f"sharding rules: no rule for logical axis {name!r}; "
                       f"known: {sorted(table)}.")
    axes = tuple(a for a in _as_tuple(table.get(name)) if a not in used)
    if mesh is not None:
      axes = tuple(a for a in axes if mesh.shape[a] > 1)
    if shape is not None and mesh is not None and axes:
      if shape[i] % math.prod(mesh.shape[a] for a in axes):
        axes = ()
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  while spec and spec[-1] is None:
    spec.pop()
  return PartitionSpec(*spec)


def _is_variable(x) -> bool:
  # Imported lazily: this module must not pull flax in for mesh helpers.
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return isinstance(x, nnx.Variable)


def logical_axes_of(state) -> Any:
  """Tree of logical-axis tuples (or None) for an nnx state of Variables."""
  def get(v):
    if _is_variable(v):
      return v.get_metadata().get("logical_axes")
    return None
  return jax.tree.map(get, state, is_leaf=_is_variable)


def state_shardings(state, mesh: Mesh, rules: Sequence = DEFAULT_RULES):
  """NamedShardings for every leaf of an (abstract) nnx state or array tree.

  Leaves that are nnx Variables use their `logical_axes` metadata; leaves
  without annotation (step counters, scalars) are replicated. The result has
  the same tree structure as `state` (Variables keep their type), so it can be
  used as `out_shardings` of a jitted init.
  """
  def one(v):
    value = v.get_value() if _is_variable(v) else v
    axes = v.get_metadata().get("logical_axes") if _is_variable(v) else None
    shape = getattr(value, "shape", ())
    if axes is None:
      spec = PartitionSpec()
    else:
      if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match the rank of a "
                         f"parameter of shape {shape}.")
      spec = logical_to_spec(axes, rules, shape, mesh)
    sharding = NamedSharding(mesh, spec)
    return v.replace(sharding) if _is_variable(v) else sharding
  return jax.tree.map(one, state, is_leaf=_is_variable)


def train_state_shardings(state, mesh: Mesh, rules: Sequence = DEFAULT_RULES,
                          *, replicas: bool = False):
  """Where every leaf of a (possibly abstract) `TrainState` lives.

  The one helper behind the trainer's init and `update`, restore,
  evaluate/export and the AOT check: parameters and the optimizer moments
  that mirror them follow their logical axes (`state_shardings`), counters,
  controller states and hyperparameters are replicated. With `replicas`,
  `state` is ONE replica's state and the shardings returned are for a stack
  of such states along a new leading axis, which stays whole on every
  device (each device runs every replica on its shard of the rows).
  """
  shardings = state_shardings(state, mesh, rules)
  if not replicas:
    return shardings

  def stacked(s):
    inner = s.get_value() if _is_variable(s) else s
    out = NamedSharding(mesh, PartitionSpec(None, *inner.spec))
    return s.replace(out) if _is_variable(s) else out
  return jax.tree.map(stacked, shardings, is_leaf=_is_variable)


def batch_shardings(batch, mesh: Mesh, rules: Sequence = DEFAULT_RULES, *,
                    replicas: bool = False):
  """Rows of every leaf of a batch pytree over the `act_batch` axes (after a
  whole leading replica axis with `replicas`)."""
  def one(x):
    shape = x.shape[1:] if replicas else x.shape
    spec = batch_sharding(mesh, shape, rules).spec
    return NamedSharding(mesh, PartitionSpec(None, *spec) if replicas
                         else spec)
  return jax.tree.map(one, batch)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def tree_specs(shardings) -> Any:
  """PartitionSpecs of a tree of NamedShardings (Variables unwrapped)."""
  return jax.tree.map(
      lambda s: (s.get_value() if _is_variable(s) else s).spec, shardings,
      is_leaf=_is_variable)


def replicated_fraction(state, shardings) -> float:
  """Fraction of parameter bytes fully replicated across a multi-device mesh."""
  def leaves(tree):
    return [x.get_value() if _is_variable(x) else x
            for x in jax.tree.leaves(tree, is_leaf=_is_variable)]
  total = replicated = 0
  for value, sharding in zip(leaves(state), leaves(shardings)):
    nbytes = math.prod(value.shape) * np.dtype(value.dtype).itemsize
    total += nbytes
    if sharding.is_fully_replicated:
      replicated += nbytes
  return replicated / max(total, 1)


def check_replication(state, shardings, max_fraction: float = 0.1) -> float:
  """Fails at start-up when too many parameter bytes are replicated.

  On a single-device mesh everything is trivially replicated, so the check
  only applies when the mesh has more than one device.

  Raises:
    ValueError: replicated bytes exceed `max_fraction` of all bytes.
  """
  leaves = jax.tree.leaves(shardings, is_leaf=_is_variable)
  if not leaves:
    return 0.0
  first = leaves[0].get_value() if _is_variable(leaves[0]) else leaves[0]
  if first.mesh.size == 1:
    return 0.0
  frac = replicated_fraction(state, shardings)
  if frac > max_fraction:
    raise ValueError(
        f"sharding: {frac:.1%} of parameter bytes are fully replicated on mesh "
        f"{dict(first.mesh.shape)} (allowed: {max_fraction:.1%}). Increase "
        "`fsdp`/`tensor`, or adjust `sharding.rules` so large parameters are "
        "split.")
  return frac


# ---------------------------------------------------------------------------
# Batches across hosts. In a multi-process run (DESIGN.md §6) each process
# holds only its rows of a batch; these helpers say which rows, build the
# global array from them, and bring results back to the host.

def batch_sharding(mesh: Mesh, shape: Sequence[int],
                   rules: Sequence = DEFAULT_RULES) -> NamedSharding:
  """Rows (axis 0) over the `act_batch` mesh axes, the rest replicated.

  Replicated entirely when those axes do not divide `shape[0]`.
  """
  spec = logical_to_spec(("act_batch",) + (None,) * (len(shape) - 1),
                         rules, shape, mesh)
  return NamedSharding(mesh, spec)


def process_row_block(mesh: Mesh, num_rows: int,
                      rules: Sequence = DEFAULT_RULES) -> tuple[int, int]:
  """`(index, count)`: this process's rows of a `[num_rows, ...]` batch laid
  out by `batch_sharding` are block `index` of `count` equal contiguous
  blocks. `(0, 1)` on one process, or when the batch is replicated.

  Raises:
    ValueError: this process's devices hold rows that are not one
      contiguous block (a mesh whose device order interleaves processes
      along the batch axes).
  """
  sh = batch_sharding(mesh, (num_rows,), rules)
  starts = sorted({idx[0].indices(num_rows)[:2] for idx in
                   sh.addressable_devices_indices_map((num_rows,)).values()})
  lo, hi = starts[0][0], starts[-1][1]
  covered = sum(b - a for a, b in starts)
  size = hi - lo
  if covered != size or num_rows % size or lo % size:
    raise ValueError(
        f"sharding: process {jax.process_index()} holds rows {starts} of a "
        f"batch of {num_rows}, not one contiguous block; order the mesh's "
        "devices so each process's devices are adjacent along the batch "
        "axes.")
  return lo // size, num_rows // size


def global_batch(mesh: Mesh, local: np.ndarray, block: tuple[int, int],
                 rules: Sequence = DEFAULT_RULES) -> jax.Array:
  """The global `[rows, ...]` array whose block `block` is `local`.

  Every process passes its own block (`process_row_block`);
  `jax.make_array_from_process_local_data` places it on its devices.
  """
  local = np.asarray(local)
  shape = (local.shape[0] * block[1],) + local.shape[1:]
  return jax.make_array_from_process_local_data(
      batch_sharding(mesh, shape, rules), local, shape)


def to_host(x) -> np.ndarray:
  """The whole array as numpy, on every process.

  `np.asarray` when this process holds all of it (one process, or a
  replicated array); otherwise a collective allgather, which every process
  must call.
  """
  if not isinstance(x, jax.Array) or x.is_fully_addressable or (
      x.is_fully_replicated):
    return np.asarray(x)
  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# ---------------------------------------------------------------------------
# Activation constraints: the model calls `constrain(x, logical_axes)`; it is
# a no-op unless a mesh and rules are active (via `use_mesh`).
_ACTIVE = threading.local()


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Sequence = DEFAULT_RULES):
  """Activates `mesh` (jax.set_mesh) and `rules` for activation constraints."""
  prev = getattr(_ACTIVE, "value", None)
  _ACTIVE.value = (mesh, tuple(rules))
  try:
    with jax.set_mesh(mesh):
      yield mesh
  finally:
    _ACTIVE.value = prev


def constrain(x, logical_axes: Sequence[str | None]):
  """`with_sharding_constraint` by logical names; no-op without `use_mesh`."""
  active = getattr(_ACTIVE, "value", None)
  if active is None:
    return x
  mesh, rules = active
  spec = logical_to_spec(logical_axes, rules, x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def splits(logical_axes: Sequence[str]) -> bool:
  """Whether the active mesh and rules split any of these logical axes over
  more than one device (False without `use_mesh`)."""
  active = getattr(_ACTIVE, "value", None)
  if active is None:
    return False
  mesh, rules = active
  return any(logical_to_spec(logical_axes, rules, mesh=mesh))
