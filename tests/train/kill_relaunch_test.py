"""kill -9 at a random step, relaunch the same command: nothing is lost.

Runs `launch/train.py` on the tiny config in subprocesses: one is SIGKILLed
once its metrics reach a step drawn from a seeded RNG (the kill lands
somewhere in the next step or its asynchronous checkpoint save), then the
same command is relaunched in the same workdir. The relaunch must complete
and end bit-identical to an uninterrupted run of the same command (resume
is bitwise: per-step keys are `fold_in(seed, step)`).
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

from absl.testing import absltest

from jaxrl_ent import storage

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_STEPS = 8
# Timings differ between runs; everything else must be identical.
_TIMING = ("perf/", "reward/score_seconds")


def _command(workdir):
  return [sys.executable, str(_ROOT / "launch" / "train.py"),
          # An entropy bonus moves the policy every step even when the random
          # policy earns no reward, so "identical" is not trivially true.
          "--config=configs/grpo_tiny.py:runlocal,entropy=entropy_bonus",
          f"--workdir={workdir}", f"--config.train.steps={_STEPS}",
          "--config.sft.steps=0", "--config.reward.backend=inline",
          "--config.tensorboard=False", "--config.eval.pass_k=0",
          "--config.checkpoint.keep=2"]


def _env(cache_dir):
  env = dict(os.environ)
  env.update({
      "JAX_PLATFORMS": "cpu",
      # The three launches compile the same programs: share them through
      # JAX's persistent cache (a cached executable computes bit-identical
      # results), and compile fast like the in-process tests do.
      "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
      "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
  })
  return env


def _metric_steps(workdir) -> list[int]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  steps = []
  for line in path.read_text().splitlines():
    try:
      steps.append(json.loads(line)["step"])
    except (ValueError, KeyError):
      pass  # A line being written.
  return steps


def rows(workdir):
  """The run's metrics rows without the timings (local path or gs://)."""
  text = (storage.path(workdir) / "metrics.jsonl").read_text()
  return [{k: v for k, v in json.loads(line).items()
           if not k.startswith(_TIMING)} for line in text.split("\n") if line]


def state_checksums(workdir, step):
  """Every state leaf's checksum in checkpoint `step` (our integrity record)."""
  path = storage.path(workdir) / "ckpt" / str(step) / "integrity" / "metadata"
  return {leaf["path"]: leaf["fp"]
          for leaf in json.loads(path.read_text())["state"]}


def run_to_end(workdir, env, log, timeout):
  """Runs the command in `workdir` to its end; its log (the tail of it in
  the failure when it does not exit 0)."""
  with open(log, "w") as out:
    proc = subprocess.run(_command(workdir), cwd=_ROOT, env=env, stdout=out,
                          stderr=subprocess.STDOUT, timeout=timeout,
                          check=False)
  text = pathlib.Path(log).read_text()
  if proc.returncode != 0:
    raise AssertionError(f"exit {proc.returncode}:\n{text[-3000:]}")
  return text


def kill_when(workdir, env, log, reached, timeout, poll=0.01):
  """Starts the command in `workdir`, SIGKILLs it as soon as `reached()`
  holds; its return code. Fails if it ends first or `timeout` passes."""
  with open(log, "w") as out:
    proc = subprocess.Popen(_command(workdir), cwd=_ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT)
    try:
      deadline = time.monotonic() + timeout
      while not reached():
        if proc.poll() is not None:
          raise AssertionError("the run ended before the kill:\n"
                               + pathlib.Path(log).read_text()[-3000:])
        if time.monotonic() > deadline:
          raise AssertionError(f"not reached after {timeout} s")
        time.sleep(poll)
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait(timeout=60)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return proc.returncode


class KillRelaunchTest(absltest.TestCase):

  def test_sigkill_at_a_random_step_then_relaunch_completes_identically(self):
    tmp = pathlib.Path(self.create_tempdir().full_path)
    env = _env(tmp / "jax_cache")
    killed = tmp / "killed"
    kill_after = random.Random(20240607).randint(2, _STEPS - 3)
    rc = kill_when(
        killed, env, tmp / "killed.log",
        lambda: max(_metric_steps(killed), default=-1) >= kill_after, 300)
    self.assertEqual(rc, -signal.SIGKILL)
    self.assertFalse((killed / "summary.json").exists())
    self.assertLess(max(_metric_steps(killed)), _STEPS)
    # What the killed run left committed (a save it was in is not there).
    left = {}
    for step_dir in (killed / "ckpt").iterdir():
      if step_dir.name.isdigit() and (step_dir / "integrity").exists():
        left[int(step_dir.name)] = state_checksums(killed, step_dir.name)

    log = run_to_end(killed, env, tmp / "relaunch.log", 300)
    resumed = re.search(r"resumed from \S+ at step (\d+)", log)
    self.assertIsNotNone(resumed, log[-3000:])
    resumed_at = int(resumed.group(1))
    self.assertBetween(resumed_at, 1, _STEPS - 1)
    self.assertEqual(resumed_at, max(left))  # The newest good checkpoint.

    reference = tmp / "reference"
    run_to_end(reference, env, tmp / "reference.log", 300)

    # Metrics of every step (incl. the held-out evals) are those of the
    # uninterrupted run: rows the killed run wrote past its last checkpoint
    # were dropped and recomputed identically.
    got = rows(killed)
    self.assertEqual([r["step"] for r in got], list(range(_STEPS + 1)))
    self.assertEqual(got, rows(reference))
    final = state_checksums(killed, _STEPS)
    self.assertEqual(final, state_checksums(reference, _STEPS))
    params = lambda c: {k: v for k, v in c.items() if ".params" in k}
    self.assertNotEqual(params(final), params(left[resumed_at]))
    summary = lambda w: json.loads((w / "summary.json").read_text())
    self.assertEqual(summary(killed)["final_eval"],
                     summary(reference)["final_eval"])


if __name__ == "__main__":
  absltest.main()
