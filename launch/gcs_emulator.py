r"""A local Cloud Storage emulator, for trying gs:// workdirs without GCS.

  python launch/gcs_emulator.py --port=9023 --buckets=bucket &
  export STORAGE_EMULATOR_HOST=http://127.0.0.1:9023 \
      TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:9023 \
      GOOGLE_AUTH_TOKEN_FOR_TESTING=emulator FSSPEC_GCS_TOKEN=anon \
      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
  python launch/train.py --config=configs/grpo_tiny.py:runlocal \
      --workdir=gs://bucket/run

Serves in memory on 127.0.0.1 (everything is gone when it stops), prints the
`export` line for its port, and runs until interrupted. The variables are
explained in jaxrl_ent/storage_emulator.py.
"""

import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxrl_ent import launch_flags  # One-line answers for bad flags.
from jaxrl_ent import storage_emulator
# pylint: enable=g-import-not-at-top,wrong-import-position

_PORT = flags.DEFINE_integer("port", 9023, "Port on 127.0.0.1 (0: a free "
                             "one).")
_BUCKETS = flags.DEFINE_list("buckets", ["bucket"], "Buckets to create.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  emulator = storage_emulator.start(_BUCKETS.value, port=_PORT.value)
  print("export " + " ".join(f"{k}={v}" for k, v in emulator.env().items()),
        flush=True)
  print(f"serving buckets {', '.join(_BUCKETS.value)} at {emulator.url}; "
        "Ctrl-C stops it.", file=sys.stderr, flush=True)
  try:
    while True:
      time.sleep(3600)
  except KeyboardInterrupt:
    pass
  finally:
    emulator.stop()


if __name__ == "__main__":
  launch_flags.run(main)
