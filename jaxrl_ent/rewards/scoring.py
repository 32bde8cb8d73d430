"""Safe batch scoring: a failing reward costs one sample, never the run.

`score_batch(fn, completions, references, timeout_s=...)` returns a reward
per sample; a call that raises, runs past `timeout_s`, or returns NaN/inf or
a non-number gives 0 for that sample and is counted in `ScoreResult.counts`
(and `metrics()`).

`batch_timeout_s` bounds the whole batch: when it runs out, items not scored
yet count as timeouts (`counts["over_budget"]` of them), busy workers are
killed and replaced (a stuck thread is abandoned), and the call returns —
so a batch in which every completion hangs its verifier costs the budget
plus the time to kill and respawn the workers, not items × `timeout_s`.

Backends:
- `process` (default): a persistent pool of worker processes
  (`rewards._worker`, plain `python -c` subprocesses, so no fork of a
  JAX-threaded parent and no re-import of the launcher). Batches are split
  into chunks; a worker runs each item under its own SIGALRM timer, which
  interrupts Python-level hangs without losing the worker. A worker that
  still does not finish an item by `timeout_s + grace` (stuck in C code,
  or swallowing the alarm) is killed and replaced; the item it was on (read
  from a shared 16-byte progress record) counts as a timeout and the rest of
  its chunk is re-queued. `fn` is pickled with cloudpickle (by reference when
  importable, by value for lambdas and notebook functions); one that cannot
  be pickled, or loaded in a worker, is scored with `thread`, with a warning.
- `thread`: one daemon thread at a time; a hung call is abandoned (a thread
  cannot be killed), counted, and a fresh thread continues.
- `inline`: in the calling thread; SIGALRM timeouts when that is the main
  thread. For debugging and for the cheapest rewards.
"""

import atexit
import dataclasses
import os
import pickle
import signal
import threading
import time
import warnings

import numpy as np

from jaxrl_ent.rewards import _worker
from jaxrl_ent.rewards import registry
from jaxrl_ent.rewards import worker_pool

OK, ERROR, TIMEOUT = _worker.OK, _worker.ERROR, _worker.TIMEOUT
NONFINITE, INVALID = _worker.NONFINITE, _worker.INVALID
STATUS_NAMES = _worker.STATUS_NAMES
BACKENDS = ("process", "thread", "inline")


@dataclasses.dataclass(frozen=True)
class ScoreResult:
  """Rewards of one batch and what went wrong.

  Attributes:
    rewards: [N] float32; 0 for a failed call (per component for sums).
    status: [N] int8; OK, or the first failing status among components.
    components: name -> [N] float32 unweighted rewards (`WeightedSum` only).
    counts: `ok`, `errors`, `timeouts`, `nonfinite`, `invalid` over all
      calls, plus `restarts` (workers killed), `abandoned` (threads) and
      `over_budget` (calls left unscored by `batch_timeout_s`, also counted
      in `timeouts`).
    errors: up to a few error messages, for the log.
    seconds: wall time of the call.
  """
  rewards: np.ndarray
  status: np.ndarray
  components: dict
  counts: dict
  errors: tuple
  seconds: float

  @classmethod
  def concatenate(cls, parts) -> "ScoreResult":
    """One result for consecutive batches (e.g. the row blocks that the
    processes of a multi-host run scored): per-row arrays concatenated in
    order, counts summed, the longest wall time."""
    parts = list(parts)
    if not parts:
      raise ValueError("ScoreResult.concatenate: no parts")
    counts = {}
    for p in parts:
      for name, n in p.counts.items():
        counts[name] = counts.get(name, 0) + n
    return cls(
        rewards=np.concatenate([p.rewards for p in parts]),
        status=np.concatenate([p.status for p in parts]),
        components={name: np.concatenate([p.components[name] for p in parts])
                    for name in parts[0].components},
        counts=counts, errors=sum((tuple(p.errors) for p in parts), ()),
        seconds=max(p.seconds for p in parts))

  def metrics(self, prefix: str = "reward") -> dict[str, float]:
    """Flat scalar metrics, e.g. `reward/mean`, `reward/timeouts`."""
    out = {f"{prefix}/mean": float(self.rewards.mean()) if self.rewards.size
           else 0.0, f"{prefix}/score_seconds": self.seconds}
    for name, n in self.counts.items():
      if name != "ok":
        out[f"{prefix}/{name}"] = float(n)
    for name, r in self.components.items():
      out[f"{prefix}/{name}/mean"] = float(r.mean()) if r.size else 0.0
    return out


class RewardScorer:
  """A reusable safe scorer; `score_batch` keeps one per configuration.

  Args:
    backend: `process`, `thread` or `inline` (see the module docstring).
    num_workers: worker processes (`process`); default min(8, cpu_count).
    warm_math_verify: workers import math-verify at start, so its ~1 s
      first import never lands inside an item's timeout.
    grace_s: extra seconds past `timeout_s` before a worker is killed.
  """

  def __init__(self, backend: str = "process", num_workers: int | None = None,
               warm_math_verify: bool = True, grace_s: float = 1.0):
    if backend not in BACKENDS:
      raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    self.backend = backend
    self.num_workers = num_workers or min(8, os.cpu_count() or 1)
    self._pool = worker_pool.WorkerPool(self.num_workers, warm_math_verify,
                                        grace_s)
    self._thread_only = set()  # Pickles the workers could not load.
    self._lock = threading.Lock()

  def score(self, fn, completions, references, *, timeout_s: float = 5.0,
            batch_timeout_s: float | None = None) -> ScoreResult:
    """Scores `fn(completions[i], references[i])` for all i, safely.

    Args:
      fn: the reward.
      completions: N completions.
      references: N references.
      timeout_s: limit per call (per component of a `WeightedSum`).
      batch_timeout_s: wall-time budget of the whole call (all components);
        None: no budget. Items unscored when it runs out count as timeouts.
    """
    if len(completions) != len(references):
      raise ValueError(f"{len(completions)} completions but "
                       f"{len(references)} references")
    if not timeout_s > 0:
      raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if batch_timeout_s is not None and not batch_timeout_s > 0:
      raise ValueError(f"batch_timeout_s must be > 0 or None, got "
                       f"{batch_timeout_s}")
    t0 = time.perf_counter()
    deadline = (None if batch_timeout_s is None
                else time.monotonic() + batch_timeout_s)
    items = list(zip(completions, references))
    if isinstance(fn, registry.WeightedSum):
      parts = {k: self._score_fn(f, items, timeout_s, deadline)
               for k, f in fn.fns.items()}
      components = {k: c.values.astype(np.float32) for k, c in parts.items()}
      rewards = sum(fn.weights[k] * c.values for k, c in parts.items())
      status = np.zeros(len(items), np.int8)
      for c in parts.values():
        status = np.where(status == OK, c.status, status)
      calls = list(parts.values())
    else:
      only = self._score_fn(fn, items, timeout_s, deadline)
      rewards, status, components, calls = only.values, only.status, {}, [
          only]
    counts = {name: 0 for name in STATUS_NAMES}
    for c in calls:
      for code, name in enumerate(STATUS_NAMES):
        counts[name] += int((c.status == code).sum())
    counts["restarts"] = sum(c.restarts for c in calls)
    counts["abandoned"] = sum(c.abandoned for c in calls)
    counts["over_budget"] = sum(c.over_budget for c in calls)
    errors = tuple(e for c in calls for e in c.errors)[:5]
    return ScoreResult(np.asarray(rewards, np.float32), status, components,
                       counts, errors, time.perf_counter() - t0)

  def _score_fn(self, fn, items, timeout_s, deadline) -> worker_pool.Calls:
    calls = worker_pool.Calls(len(items))
    if items:
      self._score_into(calls, fn, items, timeout_s, deadline)
    calls.expire_unscored()
    return calls

  def _score_into(self, calls, fn, items, timeout_s, deadline):
    if deadline is not None and time.monotonic() >= deadline:
      return  # No budget left (e.g. for a later component of a sum).
    backend = self.backend
    if backend == "process":
      try:
        fn_bytes = _dumps(fn)
      except Exception as e:  # pylint: disable=broad-except
        warnings.warn(f"reward {fn!r} is not picklable ({e}); scoring it in "
                      "threads, where a hung call can't be killed")
        backend = "thread"
    if backend == "process" and fn_bytes in self._thread_only:
      backend = "thread"
    if backend == "process":
      with self._lock:
        if not self._pool.run(fn_bytes, items, timeout_s, calls,
                              deadline=deadline):
          warnings.warn(f"reward {fn!r} could not be loaded in a worker "
                        f"({calls.errors.pop()}); scoring it in threads "
                        "from now on")
          self._thread_only.add(fn_bytes)
          backend = "thread"
    if backend == "thread":
      _run_threads(fn, items, timeout_s, calls, deadline)
    elif backend == "inline":
      use_alarm = threading.current_thread() is threading.main_thread()
      prev = _install_alarm() if use_alarm else None
      try:
        for i, (c, r) in enumerate(items):
          limit = timeout_s
          if deadline is not None:
            limit = min(limit, deadline - time.monotonic())
            if limit <= 0:
              break  # The rest count as over budget.
          calls.put(i, *_worker.call_one(fn, c, r, limit, use_alarm))
      finally:
        if use_alarm:
          _restore_alarm(prev)

  def close(self):
    """Stops the worker processes (they restart on the next `score`)."""
    with self._lock:
      self._pool.close()


def _dumps(fn) -> bytes:
  """Pickles a reward: by reference if importable, else by value (cloudpickle,
  a grain dependency), so lambdas and notebook functions reach the workers."""
  try:
    import cloudpickle  # pylint: disable=g-import-not-at-top
  except ImportError:
    return pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
  return cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)


# --------------------------------------------------------------------------
# Thread and inline backends.


def _install_alarm():
  return signal.signal(signal.SIGALRM, _worker.on_alarm)


def _restore_alarm(prev):
  signal.setitimer(signal.ITIMER_REAL, 0)
  signal.signal(signal.SIGALRM, prev)


def _run_threads(fn, items, timeout_s, calls, deadline=None):
  """Sequential calls in a daemon thread; a hung one is abandoned.

  Past `deadline` (monotonic seconds) the running thread is abandoned and
  the items it has not finished stay unscored.
  """
  start = 0
  while start < len(items):
    if deadline is not None and time.monotonic() >= deadline:
      return
    state = {"j": start, "t0": time.monotonic()}
    cancelled = threading.Event()

    def work(start=start, state=state, cancelled=cancelled):
      for j in range(start, len(items)):
        state["j"], state["t0"] = j, time.monotonic()
        result = _worker.call_one(fn, *items[j], timeout_s, False)
        if cancelled.is_set():
          return
        calls.put(j, *result)

    thread = threading.Thread(target=work, daemon=True,
                              name="jaxrl_ent-reward")
    thread.start()
    while True:
      thread.join(timeout=min(0.05, timeout_s / 4))
      if not thread.is_alive():
        start = len(items)
        break
      if deadline is not None and time.monotonic() >= deadline:
        cancelled.set()
        calls.abandoned += 1
        return
      j = state["j"]
      if time.monotonic() - state["t0"] > timeout_s and j == state["j"]:
        cancelled.set()
        calls.put(j, TIMEOUT, 0.0)
        calls.abandoned += 1
        start = j + 1
        break


# --------------------------------------------------------------------------
# Module-level entry point.

_SCORERS = {}
_SCORERS_LOCK = threading.Lock()


def get_scorer(backend: str = "process", num_workers: int | None = None
               ) -> RewardScorer:
  """The shared `RewardScorer` for this configuration (created lazily)."""
  with _SCORERS_LOCK:
    key = (backend, num_workers)
    if key not in _SCORERS:
      _SCORERS[key] = RewardScorer(backend, num_workers)
    return _SCORERS[key]


def score_batch(fn, completions, references, *, timeout_s: float = 5.0,
                backend: str = "process", num_workers: int | None = None,
                batch_timeout_s: float | None = None) -> ScoreResult:
  """Rewards `fn(completion, reference)` per sample; failures give 0.

  Args:
    fn: a reward (e.g. `registry.get_reward_fn("math:1,format:0.1")`).
    completions: N decoded completions.
    references: N references (answer strings or example dicts).
    timeout_s: limit per call (per component for a `WeightedSum`).
    backend: `process` (default), `thread` or `inline`.
    num_workers: pool size for `process`.
    batch_timeout_s: wall-time budget for the whole batch (None: none).

  Returns:
    A `ScoreResult`; `result.metrics()` gives the logged scalars.
  """
  scorer = get_scorer(backend, num_workers)
  return scorer.score(fn, completions, references, timeout_s=timeout_s,
                      batch_timeout_s=batch_timeout_s)


@atexit.register
def _close_all():
  for scorer in list(_SCORERS.values()):
    scorer.close()
