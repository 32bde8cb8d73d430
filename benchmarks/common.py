"""Shared helpers for the side-by-side benchmarks: timing, tables, JSON."""

import json
import os
import pathlib
import platform
import statistics
import time


def machine() -> dict:
  """What the numbers were measured on."""
  import jax  # pylint: disable=g-import-not-at-top
  return {"platform": platform.platform(), "processor": platform.processor(),
          "cpus": os.cpu_count(), "jax_backend": jax.default_backend(),
          "jax_devices": jax.device_count(), "jax": jax.__version__}


def timeit(fn, repeats: int) -> list[float]:
  """Wall seconds of `repeats` calls of `fn` (which must block)."""
  out = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    out.append(time.perf_counter() - start)
  return out


def median(xs):
  return statistics.median(xs)


def print_table(rows: list[dict], columns: list[str]):
  # `max(len(c), *lengths)` alone fails on an empty sweep (`--gen_batches=`).
  widths = [max([len(c)] + [len(f"{r.get(c, '')}") for r in rows])
            for c in columns]
  line = " | ".join(c.ljust(w) for c, w in zip(columns, widths))
  print(line)
  print("-|-".join("-" * w for w in widths))
  for r in rows:
    print(" | ".join(f"{r.get(c, '')}".ljust(w) for c, w in zip(columns,
                                                                 widths)))


def write_json(path, payload: dict):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(payload, indent=2))
  print(f"wrote {path}")
