"""A persistent pool of reward worker processes (see `scoring`).

`WorkerPool.run` spreads one reward over a batch in chunks, reads each
worker's progress record to kill one stuck in an item past
`timeout_s + grace_s`, blames that item (a timeout), replaces the worker and
re-queues the rest of its chunk. Past the batch's `deadline` it kills and
replaces every busy worker and returns, leaving the unfinished items
unscored (`Calls.expire_unscored` turns them into timeouts).
"""

import collections
import math
import mmap
import multiprocessing.connection
import os
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

from jaxrl_ent.rewards import _worker

ERROR, TIMEOUT = _worker.ERROR, _worker.TIMEOUT
MAX_ERRORS = 5


class Calls:
  """Results of scoring one function over N items."""

  def __init__(self, n):
    self.status = np.full(n, -1, np.int8)
    self.values = np.zeros(n, np.float64)
    self.errors = []
    self.restarts = self.abandoned = self.over_budget = 0

  def put(self, i, status, value, err=None):
    self.status[i], self.values[i] = status, value
    if err is not None and len(self.errors) < MAX_ERRORS:
      self.errors.append(err)

  def expire_unscored(self):
    """Items never scored (the batch budget ran out) become timeouts."""
    left = self.status < 0
    self.over_budget += int(left.sum())
    self.status[left] = TIMEOUT
    self.values[left] = 0.0


class _Worker:
  """One reward worker subprocess (`_worker.main`) and its pipes."""

  def __init__(self, warm: bool):
    # Anonymous shared memory (no file to leak if we are killed).
    try:
      progress_fd = os.memfd_create("jaxrl_ent_reward_progress")
    except (AttributeError, OSError):  # Not Linux: an unlinked temp file.
      progress_fd, path = tempfile.mkstemp(prefix="jaxrl_ent_reward_")
      os.unlink(path)
    os.ftruncate(progress_fd, _worker.PROGRESS_BYTES)
    self._progress = mmap.mmap(progress_fd, _worker.PROGRESS_BYTES)
    to_child_r, self._to_child = os.pipe()
    self._from_child, from_child_w = os.pipe()
    env = dict(os.environ)
    # The child must import what the parent can (rewards defined in tests,
    # or in a package on a path added at run time).
    env["PYTHONPATH"] = os.pathsep.join(
        os.path.abspath(p or ".") for p in sys.path if os.path.isdir(p or "."))
    # `-c`, not `-m`: the package __init__ already imports _worker.
    cmd = [sys.executable, "-c",
           "import sys; from jaxrl_ent.rewards import _worker; "
           "_worker.main(sys.argv)",
           str(to_child_r), str(from_child_w), str(progress_fd)]
    if warm:
      cmd.append("--warm")
    child_fds = (to_child_r, from_child_w, progress_fd)
    self.proc = subprocess.Popen(cmd, pass_fds=child_fds, env=env,
                                 stdin=subprocess.DEVNULL)
    for fd in child_fds:
      os.close(fd)
    self.chunk = None  # (chunk_id, indices) while busy.

  def fileno(self):
    return self._from_child

  def send(self, msg):
    _worker.send(self._to_child, msg)

  def recv(self):
    return _worker.recv(self._from_child)

  def progress(self) -> tuple[int, int]:
    return struct.unpack_from(_worker.PROGRESS_FMT, self._progress, 0)

  def close(self, kill: bool = False):
    if self.proc.poll() is None and not kill:
      try:
        self.send(("stop",))
        self.proc.wait(timeout=1.0)
      except (OSError, subprocess.TimeoutExpired):
        pass
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    for fd in (self._to_child, self._from_child):
      try:
        os.close(fd)
      except OSError:
        pass
    self._progress.close()


class WorkerPool:
  """`num_workers` reward worker processes, started lazily, replaced on hangs.

  Args:
    num_workers: processes.
    warm: workers import math-verify at start (its ~1 s first import then
      never lands inside an item's timeout).
    grace_s: seconds past `timeout_s` before a stuck worker is killed.
  """

  def __init__(self, num_workers: int, warm: bool = True,
               grace_s: float = 1.0):
    self.num_workers, self.warm, self.grace_s = num_workers, warm, grace_s
    self._workers = []
    self._chunk_ids = 0

  def _spawn(self) -> _Worker:
    return _Worker(self.warm)

  def _ensure_workers(self):
    while len(self._workers) < self.num_workers:
      self._workers.append(self._spawn())

  def _replace(self, w: _Worker) -> _Worker:
    w.close(kill=True)
    new = self._spawn()
    self._workers[self._workers.index(w)] = new
    return new

  def run(self, fn_bytes: bytes, items, timeout_s: float, calls: Calls, *,
          deadline: float | None = None) -> bool:
    """Fills `calls`; False if a worker could not unpickle `fn`.

    `deadline` (`time.monotonic()` seconds): when reached, busy workers are
    killed and replaced and the call returns with their items unscored.
    """
    self._ensure_workers()
    n = len(items)
    size = max(1, math.ceil(n / (4 * self.num_workers)))
    queue = collections.deque(
        list(range(s, min(n, s + size))) for s in range(0, n, size))
    tries = collections.Counter()  # Crashes per first index, to stop loops.
    hard_ns = int((timeout_s + self.grace_s) * 1e9)
    poll_s = min(0.05, (timeout_s + self.grace_s) / 8)
    busy = []

    def requeue_after_failure(w, status, err):
      _, idx = w.chunk
      j, start_ns = w.progress()
      rest = idx
      if start_ns and 0 <= j < len(idx):
        calls.put(idx[j], status, 0.0, err)
        rest = idx[:j] + idx[j + 1:]
      elif tries[idx[0]] >= 2:  # Crashes outside any item, repeatedly.
        for i in idx:
          calls.put(i, ERROR, 0.0, err)
        rest = []
      tries[idx[0]] += 1
      if rest:
        queue.appendleft(rest)
      busy.remove(w)
      calls.restarts += 1
      self._replace(w)

    while queue or busy:
      if deadline is not None and time.monotonic() >= deadline:
        for w in busy:
          w.proc.kill()
          w.proc.wait()
          w.chunk = None
          calls.restarts += 1
          self._replace(w)
        return True
      for w in list(self._workers):
        if not queue:
          break
        if w in busy:
          continue
        idx = queue.popleft()
        self._chunk_ids += 1
        msg = ("run", self._chunk_ids, fn_bytes, [items[i] for i in idx],
               timeout_s)
        try:
          w.send(msg)
        except OSError:  # Died while idle (e.g. OOM-killed): replace, retry.
          w = self._replace(w)
          w.send(msg)
        w.chunk = (self._chunk_ids, idx)
        busy.append(w)
      wait_s = poll_s
      if deadline is not None:
        wait_s = max(0.0, min(poll_s, deadline - time.monotonic()))
      for w in multiprocessing.connection.wait(busy, timeout=wait_s):
        try:
          msg = w.recv()
        except (EOFError, OSError):
          code = w.proc.wait()
          requeue_after_failure(w, ERROR, f"worker died (exit code {code})")
          continue
        busy.remove(w)
        _, idx = w.chunk
        w.chunk = None
        if msg[0] == "fn_error":
          # Drain the others, then let the caller fall back to threads.
          for other in busy:
            other.recv()
            other.chunk = None
          calls.errors.append(msg[2])
          return False
        _, _, results, errors = msg
        for i, (status, value) in zip(idx, results):
          calls.put(i, status, value)
        for e in errors:
          if len(calls.errors) < MAX_ERRORS:
            calls.errors.append(e)
      now = time.monotonic_ns()
      for w in list(busy):
        _, start_ns = w.progress()
        if start_ns and now - start_ns > hard_ns:
          w.proc.kill()
          w.proc.wait()
          requeue_after_failure(w, TIMEOUT, None)
    return True

  def close(self):
    """Stops the workers (new ones start on the next `run`)."""
    for w in self._workers:
      w.close()
    self._workers = []
