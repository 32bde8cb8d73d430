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

import pathlib
import random
import re
import signal
import sys

import fsspec

from jaxrl_ent import storage

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "train"))
# Only the helpers: importing the test class would collect it twice.
from kill_relaunch_test import (  # pylint: disable=g-import-not-at-top,wrong-import-position
    _STEPS, _env, kill_when, rows, run_to_end, state_checksums)

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


def test_sigkill_then_relaunch_from_the_bucket_is_bit_identical(gcs,
                                                                tmp_path):
  del gcs  # Its environment is in os.environ, which the subprocess inherits.
  env = _env(tmp_path / "jax_cache")
  kill_after = random.Random(20261202).randint(2, _STEPS - 3)
  rc = kill_when(_RUN, env, tmp_path / "killed.log",
                 lambda: max(_committed_steps(_RUN), default=-1) >= kill_after,
                 600, poll=0.05)
  assert rc == -signal.SIGKILL
  assert not (storage.path(_RUN) / "summary.json").exists()
  left = {s: state_checksums(_RUN, s) for s in _committed_steps(_RUN)}
  assert max(left) < _STEPS

  log = run_to_end(_RUN, env, tmp_path / "relaunch.log", 600)
  resumed = re.search(r"resumed from \S+ at step (\d+)", log)
  assert resumed, log[-3000:]
  assert int(resumed.group(1)) == max(left)  # The newest good checkpoint.

  reference = tmp_path / "reference"
  run_to_end(str(reference), env, tmp_path / "reference.log", 600)
  got = rows(_RUN)
  assert [r["step"] for r in got] == list(range(_STEPS + 1))
  assert got == rows(str(reference))
  assert (state_checksums(_RUN, _STEPS)
          == state_checksums(str(reference), _STEPS))
