"""The optional W&B writer (train/wandb_writer.py), in offline mode.

Reads the offline run's transaction log back: the metric names, values and
steps equal the JSONL's, the run config is attached; a relaunch continues
the same run id.
"""

import json
import os
import time
import zlib
from unittest import mock

from absl.testing import absltest
import ml_collections

from configs import common
from configs import grpo_tiny
from jaxrl_ent.train import metrics as metrics_lib
from jaxrl_ent.train import validate
from jaxrl_ent.train import wandb_writer


def _log_records(path):
  """The protobuf records of one W&B transaction log (`run-<id>.wandb`):
  a 7-byte file header, then LevelDB-style records (crc32, length, type)
  in 32 KiB blocks. A record that fails its checksum (half-written) raises
  ValueError."""
  data = open(path, "rb").read()
  assert data[:4] == b":W&B", path
  block, pos, pending = 32768, 7, b""
  while pos + 7 <= len(data):
    left = block - pos % block
    if left < 7:  # The rest of a block too small for a header is padding.
      pos += left
      continue
    crc = int.from_bytes(data[pos:pos + 4], "little")
    length = int.from_bytes(data[pos + 4:pos + 6], "little")
    kind = data[pos + 6]
    chunk = data[pos + 7:pos + 7 + length]
    # The checksum covers the type byte, then the data (zlib's crc32).
    if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
      raise ValueError(f"{path}: record at byte {pos} fails its checksum")
    pos += 7 + length
    if kind == 1:  # FULL
      yield chunk
    elif kind == 2:  # FIRST
      pending = chunk
    elif kind == 3:  # MIDDLE
      pending += chunk
    elif kind == 4:  # LAST
      yield pending + chunk


def _records(path):
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  for data in _log_records(path):
    rec = wandb_internal_pb2.Record()
    rec.ParseFromString(data)
    yield rec


def _has_exit(path):
  from google.protobuf import message  # pylint: disable=g-import-not-at-top
  try:
    return any(r.WhichOneof("record_type") == "exit" for r in _records(path))
  except (AssertionError, ValueError, message.DecodeError):
    return False  # Header or last record not written yet.


def _offline_rows(wandb_dir, timeout=120.0):
  """(config, [history rows], files) of the offline runs under `wandb_dir`.

  `run.finish()` returns once W&B's service has the run's exit, while the
  service may still be writing the transaction log (seen under a loaded CI
  machine: the log read back had no config yet). Wait for every log's
  closing `exit` record before reading, so the test checks what `wandb sync`
  would upload, not a half-written file.
  """
  deadline = time.monotonic() + timeout
  while True:
    runs = sorted(os.path.join(d, f) for d, _, fs in os.walk(wandb_dir)
                  for f in fs if f.endswith(".wandb"))
    done = [_has_exit(p) for p in runs]
    if runs and all(done):
      break
    if time.monotonic() > deadline:
      raise AssertionError(
          f"W&B offline logs under {wandb_dir} still have no exit record "
          f"after {timeout:.0f} s: {dict(zip(runs, done))}")
    time.sleep(0.5)
  rows, config, kinds = [], {}, []
  for path in runs:
    for rec in _records(path):
      kind = rec.WhichOneof("record_type")
      kinds.append(kind)
      if kind == "history":
        rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in rec.history.item})
      elif kind in ("config", "run"):
        updates = (rec.config if kind == "config" else rec.run.config).update
        for item in updates:
          config[item.key] = json.loads(item.value_json)
  return config, rows, runs, kinds


class WandbWriterTest(absltest.TestCase):

  def test_offline_run_has_the_jsonl_metrics_and_the_config(self):
    workdir = self.create_tempdir("run").full_path
    wandb_dir = self.create_tempdir("wandb").full_path
    block = common.wandb_config(enabled=True, project="p", mode="offline")
    block.dir = wandb_dir
    block.tags = ("a", "b")
    run_config = {"seed": 3, "optim": {"lr": 1e-3}}
    with mock.patch.dict(os.environ, {"WANDB_SILENT": "true"}):
      w = metrics_lib.MetricWriter(workdir, tensorboard=False, wandb=block,
                                   run_config=run_config)
      w.write(0, {"val/greedy_acc": 0.25})
      w.write(1, {"actor/entropy": 1.5, "critic/score/mean": 0.5})
      w.close()
      run_id = json.loads(open(os.path.join(
          workdir, wandb_writer.RUN_FILE)).read())["id"]
      config, rows, files, kinds = _offline_rows(wandb_dir)
      # A relaunch of the same run directory continues the same W&B run.
      w = metrics_lib.MetricWriter(workdir, tensorboard=False, wandb=block,
                                   run_config=run_config)
      self.assertEqual(json.loads(open(os.path.join(
          workdir, wandb_writer.RUN_FILE)).read())["id"], run_id)
      w.close()
    self.assertTrue(files and all(run_id in f for f in files), files)
    # The records read back name what was there if the config is not.
    self.assertEqual(config.get("seed"), 3, (config, kinds))
    self.assertEqual(config.get("optim"), {"lr": 1e-3}, (config, kinds))
    jsonl = metrics_lib.read_jsonl(workdir)
    got = [{k: v for k, v in r.items() if not k.startswith("_")}
           for r in rows]
    want = [{k: v for k, v in r.items() if k != "step"} for r in jsonl]
    self.assertEqual(got, want)
    self.assertEqual([r["_step"] for r in rows], [r["step"] for r in jsonl])

  def test_off_by_default_and_validated(self):
    config = grpo_tiny.get_config("runlocal")
    self.assertFalse(config.wandb.enabled)
    self.assertFalse(wandb_writer.enabled(config.wandb))
    validate.validate_config(config)
    config.wandb.enabled = True
    config.wandb.project = ""
    config.wandb.mode = "sometimes"
    config.wandb.tags = ("ok", 3)
    with self.assertRaises(validate.ConfigError) as e:
      validate.validate_config(config)
    for field in ("wandb.project", "wandb.mode", "wandb.tags"):
      self.assertIn(field, str(e.exception))

  def test_not_imported_when_disabled(self):
    block = ml_collections.ConfigDict(dict(enabled=False))
    with mock.patch.dict("sys.modules", {"wandb": None}):
      w = metrics_lib.MetricWriter(self.create_tempdir().full_path,
                                   tensorboard=False, wandb=block)
      w.write(0, {"a": 1.0})
      w.close()


if __name__ == "__main__":
  absltest.main()
