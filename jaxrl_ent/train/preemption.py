"""SIGTERM (a TPU preemption notice) as a flag polled between steps."""

import signal
import threading


class SigtermFlag:
  """SIGTERM sets `is_set` (and calls `on_signal`); the caller finishes its
  unit of work, saves, and returns. `restore()` puts the previous handler
  back. Signal handlers can only be installed from the main thread;
  elsewhere the flag stays unset.
  """

  def __init__(self, on_signal=None):
    self.is_set = False
    self._on_signal = on_signal
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del signum, frame
    self.is_set = True
    if self._on_signal is not None:
      self._on_signal()

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
