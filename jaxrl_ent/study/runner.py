"""Runs a study's method × seed runs; a finished run is never rerun.

Every run is an ordinary `train_and_evaluate` run in its own workdir
(`<study>/runs/<method>/seed<k>`), so an interrupted run resumes from its
own checkpoint and a finished one (its `summary.json` records all steps) is
skipped. Runs of one seed share one supervised warm start
(`<study>/sft/seed<k>`), built once here, so methods differ only in the RL
phase.

Compiled programs are shared through JAX's persistent compilation cache in
`<study>/jax_cache`: every method's rollout, evaluation and statistics
programs have the same shapes, and seeds of one method share the train
step, so after the first run most programs load instead of compiling.

With `study.vectorize`, runs that share structure (they differ only in seed
and hyperparameters: one method's seeds, GRPO and clip-higher, α values of
one bonus) run as replicas of one program (`train/replicas.py`: stacked
states, one vmapped rollout and update per step), each writing its own run
directory as above; the groups run one after another in this process.

Otherwise, with `study.workers > 0` runs go to that many subprocesses
(`python -m jaxrl_ent.study.worker <run_dir>`, output in `<run_dir>/log.txt`):
a failed run is reported and the others go on. SIGTERM stops launching,
forwards the signal (each run saves a checkpoint and exits) and returns.
"""

import dataclasses
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import tqdm

from jaxrl_ent.study import plan
from jaxrl_ent.train import preemption

_LOG = logging.getLogger(__name__)
CONFIG_FILE = "run_config.json"
WALL_FILE = "wall_time.json"


@dataclasses.dataclass
class RunResult:
  spec: plan.RunSpec
  status: str  # "done" | "skipped" (finished earlier) | "failed" | "stopped"
  seconds: float = 0.0
  error: str = ""


_CACHE_OPTIONS = {"jax_compilation_cache_dir": None,
                  "jax_persistent_cache_min_compile_time_secs": 0.0,
                  "jax_persistent_cache_min_entry_size_bytes": -1}


def enable_compilation_cache(directory) -> dict:
  """Caches every compiled program on disk (no size/time threshold).

  Returns the previous settings, for `restore_compilation_cache`.
  """
  previous = {k: getattr(jax.config, k) for k in _CACHE_OPTIONS}
  for k, v in dict(_CACHE_OPTIONS, jax_compilation_cache_dir=str(
      directory)).items():
    jax.config.update(k, v)
  return previous


def restore_compilation_cache(previous: dict) -> None:
  """Undoes `enable_compilation_cache` in this process (a study run
  in-process must not leave later compilations writing to its cache)."""
  for k, v in previous.items():
    jax.config.update(k, v)
  try:  # The cache object keeps its directory once initialised.
    from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
    compilation_cache.reset_cache()
  except (ImportError, AttributeError):
    pass


def is_finished(run_dir, steps: int) -> bool:
  path = pathlib.Path(run_dir) / "summary.json"
  if not path.exists():
    return False
  summary = json.loads(path.read_text())
  return summary.get("steps") == steps and "preempted_at" not in summary


def wall_time(run_dir) -> float:
  """Seconds spent in the run, summed over launches (resumes)."""
  path = pathlib.Path(run_dir) / WALL_FILE
  return json.loads(path.read_text())["seconds"] if path.exists() else 0.0


def add_wall_time(run_dir, seconds: float) -> None:
  path = pathlib.Path(run_dir) / WALL_FILE
  path.write_text(json.dumps({"seconds": wall_time(run_dir) + seconds}))


def prepare_warm_starts(specs, workdir) -> None:
  """Builds each seed's warm-started policy once; runs link to it."""
  from jaxrl_ent import sharding  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.train import policy_setup  # pylint: disable=g-import-not-at-top
  by_seed = {}
  for spec in specs:
    by_seed.setdefault(policy_setup.warm_start_seed(spec.config), spec)
  for seed, spec in by_seed.items():
    if spec.config.model_path or spec.config.sft.steps <= 0:
      continue
    shared = pathlib.Path(workdir) / "sft" / f"seed{seed}"
    if not (shared / "sft_policy" / "config.json").exists():
      _LOG.info("supervised warm start for seed %d", seed)
      mesh = sharding.make_mesh(dict(spec.config.mesh))
      policy_setup.build_policy(spec.config, mesh, shared)
  for spec in specs:
    if spec.config.model_path or spec.config.sft.steps <= 0:
      continue
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    link = spec.run_dir / "sft_policy"
    if not link.exists():
      target = (pathlib.Path(workdir).resolve() / "sft" /
                f"seed{policy_setup.warm_start_seed(spec.config)}")
      link.symlink_to(target / "sft_policy", target_is_directory=True)


def _write_config(spec: plan.RunSpec) -> None:
  spec.run_dir.mkdir(parents=True, exist_ok=True)
  (spec.run_dir / CONFIG_FILE).write_text(
      json.dumps(spec.config.to_dict(), indent=1))


def _run_in_process(spec: plan.RunSpec) -> RunResult:
  from jaxrl_ent.train import rl_loop  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  try:
    summary = rl_loop.train_and_evaluate(spec.config, spec.run_dir)
  except Exception as e:  # pylint: disable=broad-except
    add_wall_time(spec.run_dir, time.perf_counter() - start)
    _LOG.exception("run %s/seed%d failed", spec.method, spec.seed)
    return RunResult(spec, "failed", wall_time(spec.run_dir),
                     f"{type(e).__name__}: {e}")
  add_wall_time(spec.run_dir, time.perf_counter() - start)
  status = "stopped" if "preempted_at" in summary else "done"
  return RunResult(spec, status, wall_time(spec.run_dir))


def groups_of(specs) -> list[list[plan.RunSpec]]:
  """Runs that share structure (differ only in seed and hyperparameters,
  e.g. GRPO and clip-higher, or one method's seeds), in first-seen order."""
  from jaxrl_ent.train import replicas  # pylint: disable=g-import-not-at-top
  groups = {}
  for spec in specs:
    groups.setdefault(replicas.structure_key(spec.config), []).append(spec)
  return list(groups.values())


def _run_group_in_process(specs, workdir, index: int) -> list[RunResult]:
  """One program for a group of runs: each a replica writing its own
  `run_dir`, as the separate run would (`train/replicas.py`)."""
  from jaxrl_ent.train import replicas  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.train import rl_loop  # pylint: disable=g-import-not-at-top
  if len(specs) == 1:
    return [_run_in_process(specs[0])]
  base = specs[0].config
  from jaxrl_ent.train import policy_setup  # pylint: disable=g-import-not-at-top
  warm = [(pathlib.Path(workdir) / "sft" /
           f"seed{policy_setup.warm_start_seed(s.config)}"
           if not s.config.model_path and s.config.sft.steps > 0 else None)
          for s in specs]
  reps = replicas.as_replicas(
      base, [s.config for s in specs],
      [f"{s.method}/seed{s.seed}" for s in specs],
      [s.run_dir for s in specs], warm)
  for spec in specs:
    _write_config(spec)
  start = time.perf_counter()
  try:
    summary = rl_loop.train_and_evaluate(
        base, pathlib.Path(workdir) / "groups" / str(index), replicas=reps)
  except Exception as e:  # pylint: disable=broad-except
    _LOG.exception("group %s failed", [r.name for r in reps])
    share = (time.perf_counter() - start) / len(specs)
    for spec in specs:
      add_wall_time(spec.run_dir, share)
    return [RunResult(s, "failed", wall_time(s.run_dir),
                      f"{type(e).__name__}: {e}") for s in specs]
  # One program ran them all: each run is charged an equal share.
  share = (time.perf_counter() - start) / len(specs)
  out = []
  for spec, rep in zip(specs, reps):
    add_wall_time(spec.run_dir, share)
    status = ("stopped" if "preempted_at" in summary["replicas"][rep.name]
              else "done")
    out.append(RunResult(spec, status, wall_time(spec.run_dir)))
  return out


def _tail(path, lines: int = 15) -> str:
  try:
    return "\n".join(pathlib.Path(path).read_text(
        errors="replace").splitlines()[-lines:])
  except OSError:
    return ""


class _Stop(preemption.SigtermFlag):
  """SIGTERM → stop launching runs and forward the signal to running ones
  (each saves a checkpoint and exits)."""

  def __init__(self):
    self.children: list[subprocess.Popen] = []
    super().__init__(on_signal=self._forward)

  def _forward(self):
    for p in self.children:
      if p.poll() is None:
        p.send_signal(signal.SIGTERM)


def run_study(config, workdir, *, progress: bool = True) -> list[RunResult]:
  """Runs every unfinished method × seed run of `config`; see module doc."""
  workdir = pathlib.Path(workdir)
  specs = plan.expand(config, workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  cache = workdir / "jax_cache"
  results = {}
  todo = []
  for spec in specs:
    key = (spec.method, spec.seed)
    if is_finished(spec.run_dir, spec.config.train.steps):
      results[key] = RunResult(spec, "skipped", wall_time(spec.run_dir))
    else:
      todo.append(spec)
  previous_cache = enable_compilation_cache(cache)
  bar = tqdm.tqdm(total=len(specs), initial=len(specs) - len(todo),
                  desc="study runs", disable=not progress)
  workers = int(config.study.workers)
  stop = _Stop()
  try:
    if todo:
      prepare_warm_starts(todo, workdir)
    if config.study.get("vectorize", False):
      # Runs that share structure are replicas of one program; the groups
      # run one after another, in this process.
      for i, group in enumerate(groups_of(todo)):
        if stop.is_set:
          break
        bar.set_postfix_str(f"{group[0].method}/seed{group[0].seed} "
                            f"+{len(group) - 1}")
        for result in _run_group_in_process(group, workdir, i):
          results[(result.spec.method, result.spec.seed)] = result
          bar.update()
    elif workers == 0:
      for spec in todo:
        if stop.is_set:
          break
        bar.set_postfix_str(f"{spec.method}/seed{spec.seed}")
        results[(spec.method, spec.seed)] = _run_in_process(spec)
        bar.update()
    else:
      _run_subprocesses(todo, workers, cache, results, bar, stop)
  finally:
    stop.restore()
    bar.close()
    restore_compilation_cache(previous_cache)
  return [results.get((spec.method, spec.seed)) or
          RunResult(spec, "stopped", wall_time(spec.run_dir))
          for spec in specs]


def _run_subprocesses(todo, workers, cache, results, bar, stop):
  pending = list(todo)
  running = {}  # Popen -> (spec, start time, log file)
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache))
  while (pending and not stop.is_set) or running:
    while pending and not stop.is_set and len(running) < workers:
      spec = pending.pop(0)
      _write_config(spec)
      log = open(spec.run_dir / "log.txt", "a")  # pylint: disable=consider-using-with
      proc = subprocess.Popen(
          [sys.executable, "-m", "jaxrl_ent.study.worker", str(spec.run_dir)],
          stdout=log, stderr=subprocess.STDOUT, env=env)
      stop.children.append(proc)
      running[proc] = (spec, time.perf_counter(), log)
    names = ",".join(f"{s.method}/seed{s.seed}" for s, _, _ in
                     running.values())
    if names != bar.postfix:  # Redraw only on change (logs stay short).
      bar.set_postfix_str(names)
    time.sleep(0.5)
    for proc in [p for p in running if p.poll() is not None]:
      spec, _, log = running.pop(proc)
      log.close()
      stop.children.remove(proc)
      if proc.returncode == 0:
        status = ("done" if is_finished(spec.run_dir,
                                        spec.config.train.steps)
                  else "stopped")
        results[(spec.method, spec.seed)] = RunResult(
            spec, status, wall_time(spec.run_dir))
      else:
        err = _tail(spec.run_dir / "log.txt")
        _LOG.error("run %s/seed%d failed (exit %d); end of %s:\n%s",
                   spec.method, spec.seed, proc.returncode,
                   spec.run_dir / "log.txt", err)
        results[(spec.method, spec.seed)] = RunResult(spec, "failed", wall_time(spec.run_dir),
                                  f"exit {proc.returncode}: "
                                  f"{err.splitlines()[-1] if err else ''}")
      bar.update()
