"""A tiny run with --workdir=gs://bucket/run, end to end, on the emulator.

It trains and checkpoints to the bucket, stops at step 2, resumes from the
bucket to step 4 bit-identically to an uninterrupted local run, is evaluated
and exported to the bucket; another run reads its prompts (a glob) and its
HF checkpoint (`model_path`) from the bucket. See conftest.py.
"""

import gzip
import json
import os
import sys

import pytest

from configs import grpo_tiny
from jaxrl_ent import rewards
from jaxrl_ent import storage
from jaxrl_ent.train import metrics as metrics_lib
from jaxrl_ent.train import rl_loop

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "launch"))
import launcher_testlib  # pylint: disable=g-import-not-at-top,wrong-import-position

_TIMING = ("perf/", "reward/score_seconds")
_RUN = "gs://bucket/run"


def _config(steps):
  config = grpo_tiny.get_config("runlocal")
  config.reward.backend = "inline"
  config.reward.spec = launcher_testlib.LENGTH_REWARD
  config.train.steps = steps
  config.checkpoint.every = 1
  config.eval.every = 2
  # Compile less: no warm start (a random policy; the plumbing is tested)
  # and no entropy-dynamics measurement steps.
  config.sft.steps = 0
  config.train.measure_every = 0
  return config


def _fingerprints(workdir, step):
  path = storage.path(workdir) / "ckpt" / str(step) / "integrity" / "metadata"
  return {l["path"]: l["fp"] for l in json.loads(path.read_text())["state"]}


def _strip(row):
  return {k: v for k, v in row.items() if not k.startswith(_TIMING)}


@pytest.fixture(scope="module")
def runs(gcs, tmp_path_factory):
  del gcs
  launcher_testlib.register_length_reward()
  full = str(tmp_path_factory.mktemp("full"))
  rl_loop.train_and_evaluate(_config(4), full)
  rl_loop.train_and_evaluate(_config(2), _RUN)  # Stops at step 2 ...
  summary = rl_loop.train_and_evaluate(_config(4), _RUN)  # ... resumes.
  return full, summary


def test_resume_from_the_bucket_is_bit_identical(runs):
  full, summary = runs
  assert summary["workdir"] == _RUN and summary["steps"] == 4
  assert _fingerprints(_RUN, 4) == _fingerprints(full, 4)
  assert _fingerprints(_RUN, 2) != _fingerprints(_RUN, 4)
  rows_gcs = metrics_lib.read_jsonl(_RUN)
  assert [r["step"] for r in rows_gcs] == [0, 1, 2, 3, 4]
  assert ([_strip(r) for r in rows_gcs] ==
          [_strip(r) for r in metrics_lib.read_jsonl(full)])
  run = storage.path(_RUN)
  assert json.loads((run / "summary.json").read_text())["steps"] == 4
  assert "gs://bucket/run/ckpt" in (run / "summary.txt").read_text()
  assert [p.name for p in (run / "tb").iterdir()]  # TensorBoard events.
  assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["2", "3", "4"]


def test_evaluate_and_export_to_the_bucket(runs):
  del runs
  with launcher_testlib.launcher("evaluate") as evaluate:
    record = evaluate.run(_config(4), _RUN)
  assert record["output"] == f"{_RUN}/eval.json"
  assert record["step"] == 4
  saved = json.loads(storage.read_text(f"{_RUN}/eval.json"))
  last = metrics_lib.read_jsonl(_RUN)[-1]
  assert saved["metrics"] == {k: v for k, v in last.items()
                              if k.startswith("val/")}
  with launcher_testlib.launcher("export") as export:
    info = export.run(_config(4), _RUN)  # Reads it back bit-exact.
  assert info["output_dir"] == f"{_RUN}/export/step_4" and info["verified"]
  names = {p.name for p in storage.path(info["output_dir"]).iterdir()}
  assert {"config.json", "model.safetensors", "generation_config.json",
          "jaxrl_ent_export.json", "tokenizer.json"} <= names


def test_prompts_and_hf_checkpoint_read_from_the_bucket(runs):
  # After the export test (pytest keeps the file's order): its folder is
  # the checkpoint read here.
  del runs
  data = storage.path("gs://bucket/data")
  rows = [{"id": f"p{i}", "prompt": f"{i} {i + 1} {i + 2}",
           "answer": f"{i + 2} {i + 1} {i}"} for i in range(12)]
  lines = lambda rs: "".join(json.dumps(r) + "\n" for r in rs)
  storage.write_text(data / "train-0.jsonl", lines(rows[:6]))
  storage.write_bytes(data / "train-1.jsonl.gz",
                      gzip.compress(lines(rows[6:]).encode()))
  storage.write_text(data / "test.jsonl", lines(rows[:8]))
  config = _config(1)
  config.model_path = f"{_RUN}/export/step_4"  # An HF folder in the bucket.
  config.data.task = ""
  config.data.train_paths = "gs://bucket/data/train-*"
  config.data.eval_paths = "gs://bucket/data/test.jsonl"
  workdir = "gs://bucket/run_hf"
  summary = rl_loop.train_and_evaluate(config, workdir)
  assert summary["steps"] == 1
  rows = metrics_lib.read_jsonl(workdir)
  assert [r["step"] for r in rows] == [0, 1]
  assert rows[0]["val/num_prompts"] == 8.0
