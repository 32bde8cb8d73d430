"""Metric writers: JSONL (one line per step), TensorBoard event files, and
optionally Weights & Biases (`train/wandb_writer.py`), all with the same
metric names and steps.

Only process 0 writes (multi-host runs call every writer on every process).
Values are fetched from devices once per step with `jax.device_get`.

The run directory may be local or a bucket (`gs://...`, see
`jaxrl_ent/storage.py`). Locally each line is appended to `metrics.jsonl`
as it comes. A bucket object cannot be appended to, so there the lines are
kept in memory and the whole file is uploaded (one atomic object write) at
most every `flush_every_s` seconds, on `flush()` (the host loop calls it
after each checkpoint save, so a relaunched run that truncates to its
checkpoint finds every line up to it) and on `close()`. TensorBoard events
go to a local temporary folder there and are uploaded to `<workdir>/tb` at
the same times (tensorboardX's own gs:// writer re-uploads from its
destructor, after the run, retrying for minutes when the bucket is gone).
"""

import json
import math
import shutil
import tempfile
import time
from collections.abc import Mapping

import jax
import numpy as np

from jaxrl_ent import storage
from jaxrl_ent.train import wandb_writer

FILE = "metrics.jsonl"


def to_python(metrics: Mapping) -> dict[str, float]:
  """Device scalars → Python floats (one transfer for the whole dict)."""
  host = jax.device_get(dict(metrics))
  out = {}
  for k, v in host.items():
    v = np.asarray(v)
    if v.size == 1:
      out[k] = float(v.reshape(()))
  return out


def _line(step: int, metrics: Mapping[str, float]) -> str:
  clean = {k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}
  return json.dumps({"step": int(step), **clean}) + "\n"


class MetricWriter:
  """Writes `metrics.jsonl`, TensorBoard events and (optionally) W&B.

  Args:
    workdir: the run directory (local or `gs://`).
    tensorboard: also write TensorBoard events to `<workdir>/tb`.
    wandb: the `config.wandb` block (None or `enabled=False`: no W&B).
    run_config: the run's config as a dict, attached to the W&B run.
    name, group: W&B run name and group defaults (a sweep's replica).
    flush_every_s: on a bucket, the longest time between uploads of
      `metrics.jsonl`.
  """

  def __init__(self, workdir, *, tensorboard: bool = True, wandb=None,
               run_config: Mapping | None = None, name: str = "",
               group: str = "", flush_every_s: float = 30.0):
    self.active = jax.process_index() == 0
    self.path = storage.path(workdir) / FILE
    self._remote = storage.is_remote(self.path)
    self._lines: list[str] | None = None
    self._dirty = False
    self._flushed_at = time.monotonic()
    self._flush_every_s = flush_every_s
    self._tb = None
    self._tb_local = None
    self._wandb = None
    if not self.active:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if self._remote:
      self._lines = (self.path.read_text().splitlines(keepends=True)
                     if self.path.exists() else [])
    if tensorboard:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      tb_dir = str(self.path.parent / "tb")
      if self._remote:
        self._tb_local = tempfile.mkdtemp(prefix="jaxrl_ent_tb_")
        tb_dir = self._tb_local
      self._tb = tensorboardX.SummaryWriter(tb_dir)
    if wandb_writer.enabled(wandb):
      self._wandb = wandb_writer.WandbWriter(
          wandb, self.path.parent, run_config=run_config, name=name,
          group=group)

  def write(self, step: int, metrics: Mapping[str, float]):
    if not self.active:
      return
    line = _line(step, metrics)
    if self._remote:
      self._lines.append(line)
      self._dirty = True
      if time.monotonic() - self._flushed_at >= self._flush_every_s:
        self.flush()
    else:
      with self.path.open("a") as f:
        f.write(line)
    if self._tb is not None:
      for k, v in metrics.items():
        if math.isfinite(v):
          self._tb.add_scalar(k, v, int(step))
    if self._wandb is not None:
      self._wandb.write(step, metrics)

  def flush(self):
    """Uploads `metrics.jsonl` (bucket) and flushes TensorBoard."""
    if not self.active:
      return
    if self._remote and self._dirty:
      storage.write_text(self.path, "".join(self._lines))
      self._dirty = False
    self._flushed_at = time.monotonic()
    if self._tb is not None:
      self._tb.flush()
      if self._tb_local is not None:
        storage.upload_dir(self._tb_local, self.path.parent / "tb")

  def truncate_after(self, step: int):
    """Drops lines past `step` (a resumed run rewrites them identically)."""
    if not self.active:
      return
    if self._remote:
      self._lines = [l for l in self._lines
                     if l.strip() and json.loads(l)["step"] <= step]
      self._dirty = True
      self.flush()
      return
    if not self.path.exists():
      return
    lines = [l for l in self.path.read_text().splitlines()
             if l and json.loads(l)["step"] <= step]
    storage.write_text(self.path, "".join(l + "\n" for l in lines))

  def close(self):
    if not self.active:
      return
    self.flush()
    if self._tb is not None:
      self._tb.close()
      self._tb = None
      if self._tb_local is not None:
        shutil.rmtree(self._tb_local, ignore_errors=True)
        self._tb_local = None
    if self._wandb is not None:
      self._wandb.close()
      self._wandb = None


def read_jsonl(path) -> list[dict]:
  """The rows of `metrics.jsonl` (`path`: the file or its run directory)."""
  path = storage.path(path)
  if path.is_dir():
    path = path / FILE
  return [json.loads(l) for l in path.read_text().splitlines() if l]
