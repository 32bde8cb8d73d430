"""Expands a study config (`configs/compare_*.py`) into one config per run."""

import dataclasses
import pathlib

import ml_collections


class StudyConfigError(ValueError):
  """A study config names an unknown method, a bad seed or field."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
  method: str
  seed: int
  run_dir: pathlib.Path
  config: ml_collections.ConfigDict


def split_list(value, field: str) -> list[str]:
  """`"a,b"` or a sequence → ["a", "b"]; empty entries are an error."""
  items = (value.split(",") if isinstance(value, str) else
           [str(v) for v in value])
  items = [s.strip() for s in items]
  if not items or any(not s for s in items):
    raise StudyConfigError(f"{field}={value!r}: expected a non-empty "
                           "comma-separated list.")
  if len(set(items)) != len(items):
    raise StudyConfigError(f"{field}={value!r} lists an entry twice.")
  return items


def merge(base: ml_collections.ConfigDict, partial, path: str):
  """Writes `partial` (nested dict) into `base`; every key must exist."""
  for key, value in partial.items():
    where = f"{path}.{key}"
    if key not in base:
      raise StudyConfigError(f"{where}: the base config has no such field.")
    if isinstance(base[key], ml_collections.ConfigDict):
      if not hasattr(value, "items"):
        raise StudyConfigError(f"{where}: expected a block, got {value!r}.")
      merge(base[key], value, where)
    else:
      base[key] = value


def expand(config, workdir) -> list[RunSpec]:
  """Method × seed runs, each with its own copy of the base config."""
  s = config.study
  methods = split_list(s.methods, "study.methods")
  unknown = [m for m in methods if m not in config.variants]
  if unknown:
    raise StudyConfigError(f"study.methods names {unknown}; known variants: "
                           f"{sorted(config.variants)}.")
  try:
    seeds = [int(x) for x in split_list(s.seeds, "study.seeds")]
  except ValueError as e:
    raise StudyConfigError(f"study.seeds={s.seeds!r}: expected integers."
                           ) from e
  if not isinstance(s.get("vectorize", False), bool):
    raise StudyConfigError(f"study.vectorize={s.vectorize!r}: must be True "
                           "or False.")
  if int(s.workers) < 0:
    raise StudyConfigError(f"study.workers={s.workers}: must be ≥ 0 "
                           "(0 runs sequentially in-process).")
  if not 0 < float(s.final_fraction) <= 1:
    raise StudyConfigError(f"study.final_fraction={s.final_fraction}: must "
                           "be in (0, 1].")
  runs = []
  for method in methods:
    for seed in seeds:
      cfg = ml_collections.ConfigDict(config.base.to_dict())
      merge(cfg, config.variants[method].to_dict(), f"variants.{method}")
      cfg.seed = seed
      runs.append(RunSpec(method, seed,
                          pathlib.Path(workdir) / "runs" / method /
                          f"seed{seed}", cfg))
  return runs
