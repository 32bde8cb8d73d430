"""Orbax checkpoints of the train state, verified on restore.

Layout. One orbax `CheckpointManager` directory (usually `workdir/ckpt`) with
one sub-directory per step, each committed atomically by orbax (written to
`<step>.orbax-checkpoint-tmp*`, then renamed; on GCS a `commit_success.txt`
marks the commit). Each step holds four items:

  state/      the `TrainState` pytree (`ocp.args.StandardSave`: tensorstore
              OCDBT, each process writes its own shards).
  data/       the data iterator's state (`get_state()` dict), JSON. In a
              multi-process run each process's own state, gathered into
              `{"per_process": [state of process 0, ...]}`; `restore` hands
              each process its own.
  meta/       the caller's `meta` dict (config, ...) plus a `metrics` summary,
              JSON.
  integrity/  checksums of the three items above, JSON (written in the same
              atomic commit as the rest, so a step either has it or is not a
              step).

Integrity. At save time, before the async write starts, one jitted pass over
the on-device state computes, per leaf, a 64-bit fingerprint of the leaf's
exact bits (two lanes of `Σ_i fmix32(word_i + fmix32(i ⊕ seed))` mod 2^32,
`i` the element's row-major index) and whether the leaf is finite. The
fingerprint depends only on the logical array, not on its sharding, so a
checkpoint saved on one mesh verifies after being restored onto another. The
JSON items get a SHA-256 of their canonical JSON; the integrity record
carries a SHA-256 of itself. `restore` re-computes all of these on the
restored values and accepts a step only if every one matches: a garbled,
truncated or emptied file, a step dir with missing items, or a missing or
edited integrity record makes that step *unusable*; the newest usable step
at or below the requested one is returned, with a `logging.warning` naming
each skipped step and its path. Skipped steps newer than the one restored
are moved to `<directory>/quarantine/` (never deleted), so the run can write
those steps again and keep-N does not count them. On a bucket the move is a
copy of every object, then the step's `commit_success.txt` is deleted first
(orbax stops seeing the step at once), then the rest. If no step is usable,
`CheckpointIntegrityError` lists every step and why.

A state with a non-finite floating leaf is never written: `save` refuses it
(returns False and logs the offending leaves). The check rides on the same
jitted pass as the fingerprint.

Restore order (DESIGN.md §7; `resolve_restore`):

  1. the run's own checkpoints (`workdir/ckpt`): a restarted job resumes;
  2. an explicit `config.resume` path: another run's checkpoint directory,
     or one step directory of it (full state: params, optimizer, controller,
     data iterator);
  3. `config.init_from`: initial weights only (an HF checkpoint, see
     `models.from_pretrained`);
  4. scratch (random init).

`resolve_restore` decides between 1, 2 and "neither" (None); the caller
handles 3 and 4. Per-step keys are `fold_in(seed_key, step)`, so nothing
key-related is checkpointed beyond `config.seed` (in `meta`).

Typical use::

  ckpt = checkpoint.Checkpointer(workdir / "ckpt", max_to_keep=3,
                                 save_interval_steps=config.ckpt_every)
  found = checkpoint.resolve_restore(workdir / "ckpt", config.resume)
  if found:
    source = ckpt if found[0] == ckpt.directory else checkpoint.Checkpointer(
        found[0], read_only=True)
    state, data_state, meta, step = source.restore(
        checkpoint.abstract_state(state), step=found[1])
    train_iter.set_state(data_state)
  ...
  ckpt.save(step, state, data_state=train_iter.get_state(),
            meta={"config": config.to_dict()}, metrics=summary)
  ...
  ckpt.close()  # waits for the last async save

Every process must call `save`, `restore`, `wait` and `close` (they are
collective); orbax writes the JSON items from the primary process only.
"""

import functools
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from jaxrl_ent import storage
from jaxrl_ent.train import distributed
from jaxrl_ent.train import fingerprint

# The checksum kernel lives in `fingerprint`; re-exported for callers.
state_fingerprint = fingerprint.state_fingerprint

_LOG = logging.getLogger(__name__)

_FORMAT_VERSION = 1
_ITEMS = ("state", "data", "meta", "integrity")
_QUARANTINE = "quarantine"
# What marks a finalized step on GCS (orbax's commit protocol there).
_COMMIT_MARKER = "commit_success.txt"
_PER_PROCESS = "per_process"


class CheckpointIntegrityError(RuntimeError):
  """No checkpoint in the directory passed verification."""


# ---------------------------------------------------------------------------
# JSON items.

def _json_default(o):
  if isinstance(o, (np.generic,)):
    return o.item()
  if isinstance(o, (np.ndarray, jax.Array)):
    return np.asarray(jax.device_get(o)).tolist()
  return str(o)


def _canonical(obj) -> str:
  return json.dumps(obj, sort_keys=True, separators=(",", ":"),
                    default=_json_default, allow_nan=True)


def _jsonable(obj):
  """`obj` as plain JSON types (tuples → lists, numpy → Python, other → str)."""
  return json.loads(_canonical(obj))


def _sha256(obj) -> str:
  return hashlib.sha256(_canonical(obj).encode()).hexdigest()


def _all_processes_agree(ok: bool) -> bool:
  """True only if `ok` on every process (so all take the same branch)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


# ---------------------------------------------------------------------------
# Abstract states.

def abstract_state(state):
  """`ShapeDtypeStruct`s carrying each leaf's current sharding.

  Restoring into the result puts every array exactly where the live `state`
  has it, e.g. a freshly initialised state on the current mesh.
  """
  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
  return jax.tree.map(one, state)


def abstract_like(tree, shardings):
  """`ShapeDtypeStruct`s with the shapes and dtypes of `tree` and `shardings`.

  Args:
    tree: pytree whose leaves have `.shape` and `.dtype` (arrays, or
      `jax.eval_shape` output).
    shardings: one `jax.sharding.Sharding` for every leaf, or a pytree of
      shardings with the same leaves in the same order (e.g. the output of
      `sharding.state_shardings`, where nnx Variables wrap the shardings).

  Raises:
    ValueError: the number of shardings does not match the number of leaves.
  """
  leaves, treedef = jax.tree.flatten(tree)
  if isinstance(shardings, jax.sharding.Sharding):
    sh = [shardings] * len(leaves)
  else:
    sh = jax.tree.leaves(
        shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
  if len(sh) != len(leaves):
    raise ValueError(f"abstract_like: {len(sh)} shardings for {len(leaves)} "
                     "leaves; pass one sharding or a tree matching `tree`.")
  return jax.tree.unflatten(treedef, [
      jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
      for x, s in zip(leaves, sh)])


# ---------------------------------------------------------------------------
# Restore order.

def _finalized_steps(directory: epath.Path) -> list[int]:
  if not directory.exists():
    return []
  return sorted(ocp.step.checkpoint_steps(directory))


def resolve_restore(workdir_ckpt_dir, resume_from=None
                    ) -> tuple[epath.Path, int] | None:
  """Where to resume from: `(checkpoint directory, step)`, or None.

  Order: the run's own checkpoints first (a restarted job resumes where it
  stopped), then `resume_from`, else None (the caller then loads initial HF
  weights, then falls back to scratch). Only finalized steps count; whether
  a step's contents verify is checked by `Checkpointer.restore`, which falls
  back to older steps of the same directory.

  Args:
    workdir_ckpt_dir: this run's checkpoint directory (may not exist yet).
    resume_from: optional path to another run's checkpoint directory (its
      latest step is used) or to one step directory in it.

  Raises:
    FileNotFoundError: `resume_from` is given but holds no finalized step.
  """
  own = epath.Path(workdir_ckpt_dir)
  steps = _finalized_steps(own)
  if steps:
    return own, steps[-1]
  if not resume_from:
    return None
  path = epath.Path(resume_from)
  if path.name.isdigit() and int(path.name) in _finalized_steps(path.parent):
    return path.parent, int(path.name)
  steps = _finalized_steps(path)
  if steps:
    return path, steps[-1]
  raise FileNotFoundError(
      f"resume_from={path} holds no finalized checkpoint: pass a checkpoint "
      "directory (with numbered step sub-directories) or one step directory.")


# ---------------------------------------------------------------------------

class Checkpointer:
  """Async orbax checkpoints of (state, data iterator state, meta), verified.

  Args:
    directory: the checkpoint directory (created unless `read_only`).
    max_to_keep: newest finalized steps kept (None: all).
    save_interval_steps: `save(step)` writes only when `step` is a multiple
      of this (or `force=True`, or no checkpoint exists yet).
    async_save: write in a background thread; `save` returns once the arrays
      are copied to host, so the caller may donate or update `state` at once.
    keep_best_metric: if set, also keep the single best step by
      `metrics[keep_best_metric]`, beyond the newest `max_to_keep`.
    best_mode: "max" or "min", for `keep_best_metric`.
    read_only: only restore (e.g. from another run's `resume` directory): no
      saves, no tmp-dir clean-up, no quarantine.
  """

  def __init__(self, directory, *, max_to_keep: int | None = 3,
               save_interval_steps: int = 1, async_save: bool = True,
               keep_best_metric: str | None = None, best_mode: str = "max",
               read_only: bool = False):
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}.")
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}.")
    if save_interval_steps < 1:
      raise ValueError("save_interval_steps must be >= 1, got "
                       f"{save_interval_steps}.")
    self.directory = epath.Path(directory)
    self._read_only = read_only
    self._best_key = keep_best_metric
    if self.directory.exists():
      for tmp in self.directory.iterdir():
        if ocp.step.is_path_temporary(tmp):
          _LOG.warning("checkpoint: %s is an unfinished save (the process "
                       "stopped while writing); it is ignored%s.", tmp,
                       "" if read_only else " and removed")
    policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
    best_fn = None
    if keep_best_metric is not None:
      best_fn = functools.partial(_metric, keep_best_metric)
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=(best_mode == "min"), n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_interval_steps,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(
            policies),
        best_fn=best_fn, best_mode=best_mode,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,
        create=not read_only, read_only=read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=_ITEMS)

  # ------------------------------------------------------------------ info
  def latest_step(self) -> int | None:
    """Newest finalized step (not yet verified; see `restore`)."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """All finalized steps, ascending."""
    return sorted(self._manager.all_steps())

  def step_dir(self, step: int) -> epath.Path:
    return self.directory / str(int(step))

  # ------------------------------------------------------------------ save
  def should_save(self, step: int) -> bool:
    """Whether `save(step, …)` without `force` would write (the interval)."""
    return not self._read_only and self._manager.should_save(int(step))

  def save(self, step: int, state, *, data_state: Mapping | None = None,
           meta: Mapping | None = None, metrics: Mapping | None = None,
           force: bool = False) -> bool:
    """Starts saving `state` at `step` (async); True if a save was started.

    Nothing is written when the save interval says no (unless `force`), or
    when a floating leaf of `state` is NaN/Inf (logged as a warning).

    Args:
      step: the step number (the step directory's name).
      state: pytree of arrays (a `TrainState`).
      data_state: this process's data iterator `get_state()` dict
        (JSON-able); with several processes every one passes its own.
      meta: JSON-able dict, e.g. `{"config": config.to_dict()}`; values that
        are not JSON types are stored as `str()`.
      metrics: a flat dict of scalars, stored as `meta["metrics"]` and used
        for `keep_best_metric`.
      force: save even off the interval.

    Raises:
      orbax's `StepAlreadyExistsError` if `step` is already saved; errors of
      an earlier async save surface here or in `wait`.
    """
    step = int(step)
    if self._read_only:
      _LOG.warning("checkpoint: %s is read-only; step %d not saved.",
                   self.directory, step)
      return False
    if not force and not self.should_save(step):
      return False
    records, finite = fingerprint.describe(state)
    if not finite.all():
      bad = [r["path"] for r, ok in zip(records, finite) if not ok]
      _LOG.warning("checkpoint: refusing to save step %d to %s: %d leaves "
                   "are not finite (%s%s).", step, self.step_dir(step),
                   len(bad), ", ".join(bad[:5]), ", ..." if len(bad) > 5
                   else "")
      return False
    data_item = _jsonable(dict(data_state) if data_state is not None else {})
    if jax.process_count() > 1:
      # One JSON item (written by process 0) holds every process's state.
      data_item = {_PER_PROCESS: distributed.allgather_object(data_item)}
    meta_item = _jsonable(dict(meta or {}))
    orbax_metrics = None
    if metrics is not None:
      meta_item["metrics"] = _jsonable(dict(metrics))
      if self._best_key is not None:
        if self._best_key in meta_item["metrics"]:
          orbax_metrics = meta_item["metrics"]
        else:
          _LOG.warning("checkpoint: step %d has no metric %r; it is not "
                       "ranked for keep_best_metric.", step, self._best_key)
    integrity = {
        "version": _FORMAT_VERSION, "step": step, "state": records,
        "data_present": data_state is not None,
        "data_sha256": _sha256(data_item), "meta_sha256": _sha256(meta_item)}
    integrity["sha256"] = _sha256(integrity)
    return bool(self._manager.save(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_item),
            meta=ocp.args.JsonSave(meta_item),
            integrity=ocp.args.JsonSave(integrity)),
        metrics=orbax_metrics, force=force))

  def wait(self):
    """Blocks until the pending async save is committed; raises its error."""
    self._manager.wait_until_finished()

  def close(self):
    """Waits for pending saves and releases orbax's threads."""
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # --------------------------------------------------------------- restore
  def restore(self, abstract_state_, step: int | None = None):
    """Restores the newest verified step at or below `step` (default: latest).

    Args:
      abstract_state_: pytree of `jax.ShapeDtypeStruct` with `sharding` set
        (see `abstract_state`, `abstract_like`); arrays are restored straight
        into those shardings, whatever mesh the checkpoint was written on.
        Shapes and dtypes must equal the saved ones.
      step: the step to restore; if it (or any newer one, when None) fails
        verification, older steps are tried.

    Returns:
      (state, data_state or None, meta dict, restored step).

    Raises:
      FileNotFoundError: no checkpoint at all, or `step` is not one.
      ValueError: the abstract state's leaves (paths, shapes, dtypes) differ
        from the saved ones; this is a caller error, nothing is skipped.
      CheckpointIntegrityError: no step at or below `step` verifies.
    """
    self.wait()
    self._manager.reload()
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"checkpoint: no checkpoint in {self.directory}.")
    if step is not None:
      if int(step) not in steps:
        raise FileNotFoundError(f"checkpoint: no step {step} in "
                                f"{self.directory}; steps: {steps}.")
      steps = [s for s in steps if s <= int(step)]
    skipped = []
    for s in reversed(steps):
      try:
        out = self._restore_verified(abstract_state_, s)
        error = None
      except _StructureMismatch as e:
        raise ValueError(str(e)) from None
      except Exception as e:  # pylint: disable=broad-except
        # Orbax/tensorstore raise many types on damaged files (KeyError,
        # ValueError, OSError, JSONDecodeError, ...); each means "unusable".
        out = None
        error = (str(e) if isinstance(e, _Corrupt)
                 else f"{type(e).__name__}: {e}")
      if not _all_processes_agree(error is None):
        error = error or "failed on another process"
      if error is None:
        self._quarantine(skipped)
        return out
      _LOG.warning("checkpoint: step %d at %s is unusable (%s); trying the "
                   "previous step.", s, self.step_dir(s), error[:500])
      skipped.append((s, error))
    listing = "; ".join(f"step {s} ({e[:200]})" for s, e in skipped)
    raise CheckpointIntegrityError(
        f"checkpoint: no usable checkpoint in {self.directory}: {listing}.")

  def _restore_verified(self, abstract, step: int):
    integrity = self._manager.restore(step, args=ocp.args.Composite(
        integrity=ocp.args.JsonRestore()))["integrity"]
    _check_integrity_record(integrity, step)
    _check_structure(abstract, integrity["state"], step)
    items = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    state, data, meta = items["state"], items["data"], items["meta"]
    if _sha256(data) != integrity["data_sha256"]:
      raise _Corrupt("the data item's checksum does not match")
    if _sha256(meta) != integrity["meta_sha256"]:
      raise _Corrupt("the meta item's checksum does not match")
    records, _ = fingerprint.describe(state)
    bad = [r["path"] for r, want in zip(records, integrity["state"])
           if r["fp"] != want["fp"]]
    if bad:
      raise _Corrupt(f"{len(bad)} state leaves do not match their checksums "
                     f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''})")
    if isinstance(data, dict) and _PER_PROCESS in data:
      data = _own_data_state(data[_PER_PROCESS], step)
    return state, (data if integrity["data_present"] else None), meta, step

  def _quarantine(self, skipped):
    """Moves unusable steps newer than a good one out of orbax's sight."""
    if self._read_only or not skipped:
      return
    if jax.process_index() == 0:
      qdir = self.directory / _QUARANTINE
      qdir.mkdir(parents=True, exist_ok=True)
      for s, _ in skipped:
        dst = qdir / f"{s}-{int(time.time())}"
        try:
          storage.move_tree(self.step_dir(s), dst,
                            first_removed=_COMMIT_MARKER)
        except OSError as e:  # The restore itself succeeded; just report.
          _LOG.warning("checkpoint: could not move unusable step %d to %s "
                       "(%s); remove it by hand.", s, dst, e)
          continue
        _LOG.warning("checkpoint: moved unusable step %d to %s.", s, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("jaxrl_ent_checkpoint_quarantine")
    self._manager.reload()


def _own_data_state(states, step: int):
  """This process's entry of a multi-process `data` item."""
  if len(states) == jax.process_count():
    return states[jax.process_index()]
  if all(s == states[0] for s in states):
    # Every process walked the same global batches (the prompt pipeline
    # does), so the state fits any number of processes.
    return states[0]
  raise _StructureMismatch(
      f"checkpoint: step {step} holds the data iterator states of "
      f"{len(states)} processes, and they differ; restore it with "
      f"{len(states)} processes (this run has {jax.process_count()}).")


def _metric(key: str, metrics) -> float:
  return float(metrics[key])


class _Corrupt(Exception):
  pass


class _StructureMismatch(Exception):
  pass


def _check_integrity_record(record, step: int):
  if not isinstance(record, dict) or "sha256" not in record:
    raise _Corrupt("the integrity record is missing or malformed")
  body = {k: v for k, v in record.items() if k != "sha256"}
  if _sha256(body) != record["sha256"]:
    raise _Corrupt("the integrity record's own checksum does not match")
  if record.get("version") != _FORMAT_VERSION:
    raise _Corrupt(f"unknown integrity format {record.get('version')!r}")
  if record.get("step") != step:
    raise _Corrupt(f"the integrity record is for step {record.get('step')}")


def _check_structure(abstract, saved: Sequence[dict], step: int):
  paths, leaves = fingerprint.leaf_table(abstract)
  want = [(p, list(np.shape(x)), str(x.dtype)) for p, x in zip(paths, leaves)]
  have = [(r["path"], r["shape"], r["dtype"]) for r in saved]
  if want == have:
    return
  diff = next((f"{w} vs saved {h}" for w, h in zip(want, have) if w != h),
              f"{len(want)} leaves vs {len(have)} saved")
  raise _StructureMismatch(
      f"checkpoint: the abstract state does not match step {step}'s saved "
      f"state (path, shape, dtype): {diff}. Build the abstract state from "
      "the same model config, optimizer and controller as the saved run.")
