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


def _rows(workdir):
  rows = []
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().split(
      "\n"):
    if line:
      rows.append({k: v for k, v in json.loads(line).items()
                   if not k.startswith(_TIMING)})
  return rows


def _state_checksums(workdir, step):
  path = pathlib.Path(workdir) / "ckpt" / str(step) / "integrity" / "metadata"
  return {leaf["path"]: leaf["fp"]
          for leaf in json.loads(path.read_text())["state"]}


class KillRelaunchTest(absltest.TestCase):

  def _run(self, workdir, env, log):
    with open(log, "w") as out:
      proc = subprocess.run(_command(workdir), cwd=_ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT,
                            timeout=300, check=False)
    text = pathlib.Path(log).read_text()
    self.assertEqual(proc.returncode, 0, text[-3000:])
    return text

  def test_sigkill_at_a_random_step_then_relaunch_completes_identically(self):
    tmp = pathlib.Path(self.create_tempdir().full_path)
    env = _env(tmp / "jax_cache")
    killed = tmp / "killed"
    kill_after = random.Random(20240607).randint(2, _STEPS - 3)

    with open(tmp / "killed.log", "w") as out:
      proc = subprocess.Popen(_command(killed), cwd=_ROOT, env=env,
                              stdout=out, stderr=subprocess.STDOUT)
      try:
        deadline = time.monotonic() + 300
        while max(_metric_steps(killed), default=-1) < kill_after:
          self.assertIsNone(proc.poll(), "the run ended before the kill")
          self.assertLess(time.monotonic(), deadline)
          time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
      finally:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
    self.assertEqual(proc.returncode, -signal.SIGKILL)
    self.assertFalse((killed / "summary.json").exists())
    self.assertLess(max(_metric_steps(killed)), _STEPS)
    # What the killed run left committed (a save it was in is not there).
    left = {}
    for step_dir in (killed / "ckpt").iterdir():
      if step_dir.name.isdigit() and (step_dir / "integrity").exists():
        left[int(step_dir.name)] = _state_checksums(killed, step_dir.name)

    log = self._run(killed, env, tmp / "relaunch.log")
    resumed = re.search(r"resumed from \S+ at step (\d+)", log)
    self.assertIsNotNone(resumed, log[-3000:])
    resumed_at = int(resumed.group(1))
    self.assertBetween(resumed_at, 1, _STEPS - 1)
    self.assertEqual(resumed_at, max(left))  # The newest good checkpoint.

    reference = tmp / "reference"
    self._run(reference, env, tmp / "reference.log")

    # Metrics of every step (incl. the held-out evals) are those of the
    # uninterrupted run: rows the killed run wrote past its last checkpoint
    # were dropped and recomputed identically.
    rows = _rows(killed)
    self.assertEqual([r["step"] for r in rows], list(range(_STEPS + 1)))
    self.assertEqual(rows, _rows(reference))
    final = _state_checksums(killed, _STEPS)
    self.assertEqual(final, _state_checksums(reference, _STEPS))
    params = lambda c: {k: v for k, v in c.items() if ".params" in k}
    self.assertNotEqual(params(final), params(left[resumed_at]))
    summary = lambda w: json.loads((w / "summary.json").read_text())
    self.assertEqual(summary(killed)["final_eval"],
                     summary(reference)["final_eval"])


if __name__ == "__main__":
  absltest.main()
