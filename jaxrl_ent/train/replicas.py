"""Replicas: S independent runs carried by one program (`config.sweep`).

`sweep.seeds` (e.g. "0:16" or "0,3,7") and `sweep.grid` (e.g.
"entropy.coef=0,1e-3,1e-2; optim.lr=1e-4,5e-4") expand to the product of
seeds × grid points. Each replica is a run of its own: its own seed (initial
weights and warm start, data order, rollout and update keys), its own
hyperparameters, and its own directory `<workdir>/replicas/<name>/` with
`metrics.jsonl`, TensorBoard events, checkpoints and `summary.json`, laid out
exactly as a single run's workdir (so `launch/analyze.py` and the study read
them as runs). The trainer stacks their states along a leading axis and runs
`jax.vmap(update)` and a vmapped rollout: one compiled program per step for
all of them.

Replicas may differ only in what `rl.hparams` keeps as arrays
(`factories.initial_hparams`); structure (method, shapes, schedule kinds)
is shared, which is what lets them share a program.
"""

import dataclasses
import itertools
import json

import jax
import jax.numpy as jnp

from jaxrl_ent import storage
from jaxrl_ent.train import factories


@dataclasses.dataclass(frozen=True)
class Replica:
  """One run of a sweep: `name`, `seed`, hparam overrides of the base config.

  `dir` / `warm_dir` place its run directory and warm-start cache
  elsewhere than `<workdir>/replicas/<name>` / `<workdir>/warm_start/seed<k>`
  (the study puts runs at `runs/<method>/seed<k>`).
  """
  name: str
  seed: int
  overrides: tuple[tuple[str, float], ...] = ()
  dir: str | None = None
  warm_dir: str | None = None

  def config(self, config):
    """The run's config as a single run would have it."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.seed = self.seed
      if "sweep" in c:
        c.sweep.seeds = ""
        c.sweep.grid = ""
      for key, value in self.overrides:
        block, field = key.split(".", 1)
        c[block][field] = value
    return c


def _parse_seeds(text: str) -> list[int]:
  text = text.strip()
  if not text:
    return []
  try:
    if ":" in text:
      lo, hi = (int(x) for x in text.split(":"))
      seeds = list(range(lo, hi))
    else:
      seeds = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"sweep.seeds={text!r}: expected 'a:b' or a comma-"
                     "separated list of ints.") from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"sweep.seeds={text!r}: needs distinct seeds.")
  return seeds


def _parse_grid(text: str, allowed) -> list[tuple[str, list[float]]]:
  grid = []
  for part in (p.strip() for p in text.split(";")):
    if not part:
      continue
    key, sep, values = part.partition("=")
    key = key.strip()
    if not sep or key not in allowed:
      raise ValueError(
          f"sweep.grid: {part!r}; each entry is '<field>=v1,v2,…' with a "
          f"field this run keeps as a hyperparameter: {sorted(allowed)}.")
    try:
      vals = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
      raise ValueError(f"sweep.grid: values of {key} must be numbers, got "
                       f"{values!r}.") from None
    if not vals:
      raise ValueError(f"sweep.grid: {key} has no values.")
    grid.append((key, vals))
  if len({k for k, _ in grid}) != len(grid):
    raise ValueError("sweep.grid names a field twice.")
  return grid


def plan(config) -> list[Replica] | None:
  """The replicas of `config.sweep`, or None for a plain single run.

  Raises:
    ValueError: naming `sweep.seeds` / `sweep.grid` (bad syntax, a field
      that is not a hyperparameter of this run, a multi-process run).
  """
  sweep = config.get("sweep", None)
  if sweep is None or not (sweep.get("seeds", "") or sweep.get("grid", "")):
    return None
  if jax.process_count() > 1:
    raise ValueError("sweep: replicas run in one process; a multi-process "
                     "run takes one replica (clear sweep.seeds/sweep.grid).")
  seeds = _parse_seeds(sweep.get("seeds", "")) or [int(config.seed)]
  grid = _parse_grid(sweep.get("grid", ""), factories.initial_hparams(config))
  points = list(itertools.product(*[v for _, v in grid])) or [()]
  out = []
  for seed in seeds:
    for point in points:
      overrides = tuple(zip([k for k, _ in grid], point))
      name = "-".join([f"seed{seed}"] + [f"{k}={v:g}" for k, v in overrides])
      out.append(Replica(name=name, seed=seed, overrides=overrides))
  return out


def run_dir(workdir, replica: Replica | None) -> storage.Path:
  workdir = storage.path(workdir)
  if replica is None:
    return workdir
  return (storage.path(replica.dir) if replica.dir
          else workdir / "replicas" / replica.name)


def warm_start_dir(workdir, replica: Replica | None,
                   warm_seed: int | None = None) -> storage.Path:
  """Where a replica's warm start is cached: shared by replicas with one
  warm-start seed (`warm_seed`, default the replica's seed)."""
  workdir = storage.path(workdir)
  if replica is None:
    return workdir
  seed = replica.seed if warm_seed is None else warm_seed
  return (storage.path(replica.warm_dir) if replica.warm_dir
          else workdir / "warm_start" / f"seed{seed}")


def structure_key(config) -> str:
  """Equal for configs that differ only in seed and hyperparameters, i.e.
  that can run as replicas of one program."""
  d = config.to_dict()
  d.pop("seed", None)
  d.pop("sweep", None)
  for key in factories.initial_hparams(config):
    block, field = key.split(".", 1)
    d.get(block, {}).pop(field, None)
  return json.dumps(d, sort_keys=True, default=str)


def as_replicas(base, configs, names, dirs, warm_dirs) -> list[Replica]:
  """Replicas of `base` that reproduce `configs` exactly (same structure).

  Raises:
    ValueError: a config differs from `base` in more than seed and
      hyperparameters.
  """
  base_hp = factories.initial_hparams(base)
  key = structure_key(base)
  out = []
  for config, name, d, w in zip(configs, names, dirs, warm_dirs):
    if structure_key(config) != key:
      raise ValueError(f"{name}: differs from the group's base in more than "
                       "seed and hyperparameters; it cannot be a replica.")
    hp = factories.initial_hparams(config)
    overrides = tuple((k, v) for k, v in sorted(hp.items())
                      if v != base_hp[k])
    out.append(Replica(name=name, seed=int(config.seed), overrides=overrides,
                       dir=str(d), warm_dir=str(w) if w else None))
  return out


def stack(trees):
  """One pytree with a leading replica axis from a list of equal pytrees."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, i: int):
  """Replica `i` of a stacked pytree."""
  return jax.tree.map(lambda x: x[i], tree)
