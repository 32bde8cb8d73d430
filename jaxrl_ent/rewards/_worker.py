"""Reward worker process for `scoring.RewardScorer` (and its wire format).

Started by the scorer as `python -c "...; _worker.main(sys.argv)" READ_FD
WRITE_FD PROGRESS_FD [--warm]`. It reads
`("run", chunk_id, fn_pickle, items, timeout_s)` messages and answers
`("done", chunk_id, results, errors)`.

Each item runs under a SIGALRM interval timer (we are the main thread of our
own process, so signals work): a pure-Python hang such as `time.sleep` or a
runaway sympy simplification is interrupted here, cheaply. Before each item
the worker writes `(item index, start time)` into a 16-byte shared mmap (an
anonymous memfd); the parent reads it to kill a worker stuck in C code
(which no signal interrupts) and to know which item was to blame.

Only the standard library is imported here, so the worker starts fast.
"""

import math
import mmap
import numbers
import os
import pickle
import signal
import struct
import threading
import time

OK, ERROR, TIMEOUT, NONFINITE, INVALID = 0, 1, 2, 3, 4
STATUS_NAMES = ("ok", "errors", "timeouts", "nonfinite", "invalid")
PROGRESS_FMT = "<qq"  # (item index in chunk, start time in ns or 0 = idle)
PROGRESS_BYTES = struct.calcsize(PROGRESS_FMT)
_HEADER = struct.Struct("<Q")
MAX_ERROR_CHARS = 300


def send(fd: int, obj) -> None:
  """Writes one length-prefixed pickle to a pipe."""
  data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
  view = memoryview(_HEADER.pack(len(data)) + data)
  while view:
    view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int) -> bytes:
  parts = []
  while n:
    part = os.read(fd, min(n, 1 << 20))
    if not part:
      raise EOFError("pipe closed")
    parts.append(part)
    n -= len(part)
  return b"".join(parts)


def recv(fd: int):
  """Reads one length-prefixed pickle from a pipe; EOFError when closed."""
  (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
  return pickle.loads(_read_exact(fd, n))


def check_value(value) -> tuple[int, float]:
  """(status, reward) for what a reward function returned."""
  if isinstance(value, numbers.Real):  # Includes bool and numpy floats.
    try:
      x = float(value)
    except (TypeError, ValueError, OverflowError):
      return INVALID, 0.0
    return (OK, x) if math.isfinite(x) else (NONFINITE, 0.0)
  return INVALID, 0.0


class ItemTimeout(BaseException):
  """Raised by SIGALRM; a BaseException so `except Exception` can't eat it."""


def on_alarm(signum, frame):
  del signum, frame
  raise ItemTimeout()


def call_one(fn, completion, reference, timeout_s, use_alarm):
  """Runs one reward call; returns (status, reward, error message or None)."""
  try:
    try:
      if use_alarm:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
      value = fn(completion, reference)
    finally:
      if use_alarm:
        signal.setitimer(signal.ITIMER_REAL, 0)
  except ItemTimeout:
    return TIMEOUT, 0.0, None
  except BaseException as e:  # pylint: disable=broad-except
    return ERROR, 0.0, f"{type(e).__name__}: {e}"[:MAX_ERROR_CHARS]
  status, x = check_value(value)
  err = None
  if status == INVALID:
    err = f"returned {type(value).__name__}, not a number"
  return status, x, err


def _watch_parent(ppid: int) -> None:
  # A worker stuck in a reward must not outlive a parent that died.
  while True:
    time.sleep(1.0)
    if os.getppid() != ppid:
      os._exit(0)  # pylint: disable=protected-access


def _warm_math_verify() -> None:
  # pylint: disable-next=g-import-not-at-top
  from jaxrl_ent.rewards import math_answers
  if math_answers.math_verify_available():
    math_answers.answers_equal("\\sqrt{4}", "2")


def main(argv) -> None:
  rfd, wfd, progress_fd = int(argv[1]), int(argv[2]), int(argv[3])
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's job.
  signal.signal(signal.SIGALRM, on_alarm)
  threading.Thread(target=_watch_parent, args=(os.getppid(),),
                   daemon=True).start()
  progress = mmap.mmap(progress_fd, PROGRESS_BYTES)
  os.close(progress_fd)
  if "--warm" in argv:
    try:
      _warm_math_verify()
    except Exception:  # pylint: disable=broad-except
      pass  # The reward itself will report the problem per item.
  fn_bytes, fn = None, None
  while True:
    try:
      msg = recv(rfd)
    except EOFError:
      return
    if msg[0] == "stop":
      return
    _, chunk_id, new_fn_bytes, items, timeout_s = msg
    if new_fn_bytes != fn_bytes:
      try:
        fn, fn_bytes = pickle.loads(new_fn_bytes), new_fn_bytes
      except BaseException as e:  # pylint: disable=broad-except
        fn_bytes = None
        send(wfd, ("fn_error", chunk_id, f"{type(e).__name__}: {e}"))
        continue
    results, errors = [], []
    for j, (completion, reference) in enumerate(items):
      struct.pack_into(PROGRESS_FMT, progress, 0, j, time.monotonic_ns())
      status, x, err = call_one(fn, completion, reference, timeout_s, True)
      struct.pack_into(PROGRESS_FMT, progress, 0, j, 0)
      results.append((status, x))
      if err is not None and len(errors) < 3:
        errors.append(err)
    send(wfd, ("done", chunk_id, results, errors))

