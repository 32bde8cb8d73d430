"""Misbehaving reward functions for scoring_test (module-level: picklable).

Imported by the reward worker processes too, so keep it light.
"""

import math
import signal
import time


def correct(completion, reference):
  return float(completion == reference)


def raising(completion, reference):
  del completion, reference
  raise RuntimeError("verifier bug")


def hangs_on_hang(completion, reference):
  """Sleeps far past any test timeout on "hang" (interruptible by SIGALRM)."""
  del reference
  if completion == "hang":
    time.sleep(60)
  return 1.0


def stubborn_on_hang(completion, reference):
  """On "hang", blocks SIGALRM first: only killing the process stops it."""
  del reference
  if completion == "hang":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(60)
  return 0.5


def nan_on_nan(completion, reference):
  del reference
  return {"nan": math.nan, "inf": math.inf}.get(completion, 1.0)


def text_result(completion, reference):
  del completion, reference
  return "1.0"


def exits_on_exit(completion, reference):
  """On "exit", ends the worker process abruptly (like a segfault would)."""
  del reference
  if completion == "exit":
    import os  # pylint: disable=g-import-not-at-top
    os._exit(3)  # pylint: disable=protected-access
  return 1.0
