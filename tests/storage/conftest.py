"""The Cloud Storage emulator the tests in this folder run against.

`gcs` (session-scoped) starts `jaxrl_ent.storage_emulator` in this process
on 127.0.0.1 at a free port (in memory, no network), points gcsfs,
google-cloud-storage and tensorstore at it through the environment, and
stops it and restores the environment at the end of the session. One
emulator per process: gcsfs and tensorstore keep the endpoint they first
saw.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jaxrl_ent import storage_emulator  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def gcs():
  emulator = storage_emulator.start(("bucket",))
  old = storage_emulator.apply_env(emulator)
  try:
    yield emulator
  finally:
    emulator.stop()
    storage_emulator.restore_env(old)
