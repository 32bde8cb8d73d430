"""One study run in its own process: `python -m jaxrl_ent.study.worker DIR`.

Reads `DIR/run_config.json` (written by `runner`), trains, adds its wall time
to `DIR/wall_time.json`. The compilation cache directory comes from
`JAX_COMPILATION_CACHE_DIR`, set by the runner.
"""

import json
import logging
import os
import pathlib
import sys
import time

import ml_collections


def main(argv) -> int:
  if len(argv) != 2:
    print("usage: python -m jaxrl_ent.study.worker RUN_DIR", file=sys.stderr)
    return 2
  run_dir = pathlib.Path(argv[1])
  from jaxrl_ent.study import runner  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(
      json.loads((run_dir / runner.CONFIG_FILE).read_text()))
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    runner.enable_compilation_cache(os.environ["JAX_COMPILATION_CACHE_DIR"])
  logging.basicConfig(level=logging.WARNING)
  from jaxrl_ent.train import rl_loop  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  try:
    rl_loop.train_and_evaluate(config, run_dir)
  finally:
    runner.add_wall_time(run_dir, time.perf_counter() - start)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
