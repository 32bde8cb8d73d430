"""Weights & Biases as an optional metrics writer (`config.wandb`).

Off by default; `wandb` is imported only when `config.wandb.enabled`. The
writer logs exactly the dicts `MetricWriter` writes to `metrics.jsonl` and
TensorBoard (same names, same steps) and attaches the run's config.

The block (`configs/common.py:wandb_config`):

  enabled:  False: no W&B at all (the package need not be installed).
  project, entity, name, group, notes, tags:  as `wandb.init` takes them;
            "" / () = W&B's default (name: the run directory's name, or the
            replica's name in a sweep; group: the sweep's workdir name).
  mode:     "online", "offline" (files only, `wandb sync` later) or
            "disabled".
  dir:      where W&B keeps its local files ("" = $WANDB_DIR or ./wandb;
            W&B needs a local directory even when the workdir is gs://).

A relaunched run continues the same W&B run: the run id is kept in
`<run dir>/wandb_run.json` and passed back with `resume="allow"`. W&B
ignores steps at or below the last one it has, so the steps a resumed run
recomputes after its checkpoint are not logged twice.
"""

import json
import logging
import os
import uuid
from collections.abc import Mapping

from jaxrl_ent import storage

_LOG = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")
RUN_FILE = "wandb_run.json"


def enabled(block) -> bool:
  return bool(block is not None and block.get("enabled", False))


class WandbWriter:
  """One W&B run for one run directory (process 0 only; see MetricWriter)."""

  def __init__(self, block, run_dir, *, run_config: Mapping | None = None,
               name: str = "", group: str = ""):
    import wandb  # pylint: disable=g-import-not-at-top
    run_dir = storage.path(run_dir)
    id_file = run_dir / RUN_FILE
    run_id = (json.loads(id_file.read_text())["id"] if id_file.exists()
              else uuid.uuid4().hex[:12])
    local_dir = block.get("dir", "") or None
    if local_dir:
      os.makedirs(local_dir, exist_ok=True)
    self._run = wandb.init(
        project=block.get("project", "") or None,
        entity=block.get("entity", "") or None,
        name=block.get("name", "") or name or run_dir.name,
        group=block.get("group", "") or group or None,
        notes=block.get("notes", "") or None,
        tags=list(block.get("tags", ()) or ()) or None,
        mode=block.get("mode", "online"),
        dir=local_dir, id=run_id, resume="allow",
        config=dict(run_config or {}), reinit="create_new")
    storage.write_text(id_file, json.dumps(
        {"id": run_id, "project": block.get("project", ""),
         "entity": block.get("entity", ""),
         "mode": block.get("mode", "online")}))
    self._last = self._run.step if self._run.resumed else -1

  def write(self, step: int, metrics: Mapping[str, float]):
    if step <= self._last:
      return  # Already logged before a resume (W&B would drop it anyway).
    self._run.log(dict(metrics), step=int(step))
    self._last = int(step)

  def close(self):
    self._run.finish()
