"""kill -9 a run whose workdir is a bucket, relaunch it: nothing is lost.

`launch/train.py --workdir=gs://bucket/killed` in a subprocess (it inherits
the emulator's environment from the `gcs` fixture) is SIGKILLed once the
bucket holds its checkpoint of a step drawn from a seeded RNG, so the kill
lands in the next step or its checkpoint upload. The same command is
relaunched; it must resume from the newest good checkpoint in the bucket
and end bit-identical to an uninterrupted local run (metrics rows and every
state leaf's checksum), as `tests/train/kill_relaunch_test.py` checks for a
local workdir.
"""

import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import fsspec

from jaxrl_ent import storage

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "train"))
# Only the helpers: importing the test class would collect it twice.
from kill_relaunch_test import _ROOT, _STEPS, _TIMING, _command, _env  # pylint: disable=g-import-not-at-top,wrong-import-position

_RUN = "gs://bucket/killed"


def _committed_steps(workdir) -> list[int]:
  # Listed through a fresh view of the bucket: gcsfs caches listings per
  # process, and another process is writing.
  fs = fsspec.filesystem("gs")
  fs.invalidate_cache()
  # A bucket has no atomic rename: a step is committed once orbax wrote its
  # top-level commit_success.txt (and our integrity record is there too); a
  # kill can leave a step with only some of its files.
  root = workdir.removeprefix("gs://") + "/ckpt/"
  files = {f[len(root):] for f in fs.find(root)}
  return sorted(int(f.split("/")[0]) for f in files
                if f.split("/")[0].isdigit() and f.count("/") == 1
                and f.endswith("/commit_success.txt")
                and f"{f.split('/')[0]}/integrity/metadata" in files)


def _checksums(workdir, step):
  path = storage.path(workdir) / "ckpt" / str(step) / "integrity" / "metadata"
  return {leaf["path"]: leaf["fp"]
          for leaf in json.loads(path.read_text())["state"]}


def _rows(workdir):
  text = (storage.path(workdir) / "metrics.jsonl").read_text()
  return [{k: v for k, v in json.loads(line).items()
           if not k.startswith(_TIMING)} for line in text.split("\n") if line]


def _run(workdir, env, log):
  with open(log, "w") as out:
    proc = subprocess.run(_command(workdir), cwd=_ROOT, env=env, stdout=out,
                          stderr=subprocess.STDOUT, timeout=600, check=False)
  text = pathlib.Path(log).read_text()
  assert proc.returncode == 0, text[-3000:]
  return text


def test_sigkill_then_relaunch_from_the_bucket_is_bit_identical(gcs,
                                                                tmp_path):
  del gcs  # Its environment is in os.environ, which the subprocess inherits.
  env = _env(tmp_path / "jax_cache")
  kill_after = random.Random(20261202).randint(2, _STEPS - 3)
  with open(tmp_path / "killed.log", "w") as out:
    proc = subprocess.Popen(_command(_RUN), cwd=_ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT)
    try:
      deadline = time.monotonic() + 600
      while max(_committed_steps(_RUN), default=-1) < kill_after:
        assert proc.poll() is None, "the run ended before the kill"
        assert time.monotonic() < deadline
        time.sleep(0.05)
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait(timeout=60)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (storage.path(_RUN) / "summary.json").exists()
  left = {s: _checksums(_RUN, s) for s in _committed_steps(_RUN)}
  assert max(left) < _STEPS

  log = _run(_RUN, env, tmp_path / "relaunch.log")
  resumed = re.search(r"resumed from \S+ at step (\d+)", log)
  assert resumed, log[-3000:]
  assert int(resumed.group(1)) == max(left)  # The newest good checkpoint.

  reference = tmp_path / "reference"
  _run(str(reference), env, tmp_path / "reference.log")
  rows = _rows(_RUN)
  assert [r["step"] for r in rows] == list(range(_STEPS + 1))
  assert rows == _rows(str(reference))
  assert _checksums(_RUN, _STEPS) == _checksums(str(reference), _STEPS)
