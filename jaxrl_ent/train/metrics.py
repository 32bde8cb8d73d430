"""Metric writers: JSONL (one line per step) and TensorBoard event files.

Only process 0 writes (multi-host runs call every writer on every process).
Values are fetched from devices once per step with `jax.device_get`.
"""

import json
import math
import pathlib
from collections.abc import Mapping

import jax
import numpy as np


def to_python(metrics: Mapping) -> dict[str, float]:
  """Device scalars → Python floats (one transfer for the whole dict)."""
  host = jax.device_get(dict(metrics))
  out = {}
  for k, v in host.items():
    v = np.asarray(v)
    if v.size == 1:
      out[k] = float(v.reshape(()))
  return out


class MetricWriter:
  """Writes `metrics.jsonl` and TensorBoard events under `workdir`."""

  def __init__(self, workdir, *, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if not self.active:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if tensorboard:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tb = tensorboardX.SummaryWriter(str(self.path.parent / "tb"))

  def write(self, step: int, metrics: Mapping[str, float]):
    if not self.active:
      return
    clean = {k: (v if math.isfinite(v) else str(v))
             for k, v in metrics.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **clean}) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        if math.isfinite(v):
          self._tb.add_scalar(k, v, int(step))

  def truncate_after(self, step: int):
    """Drops lines past `step` (a resumed run rewrites them identically)."""
    if not self.active or not self.path.exists():
      return
    lines = [l for l in self.path.read_text().splitlines()
             if l and json.loads(l)["step"] <= step]
    self.path.write_text("".join(l + "\n" for l in lines))

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path) -> list[dict]:
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / "metrics.jsonl"
  return [json.loads(l) for l in path.read_text().splitlines() if l]
