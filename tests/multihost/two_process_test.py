"""Two processes (one CPU device each) train exactly like one process with
two devices: same global batch, same mesh shape, same final parameters.

The processes join through JAX's distributed runtime with a coordinator on
127.0.0.1 (`jax.distributed.initialize`), read disjoint blocks of every
prompt batch, and assemble global arrays from them; the reference run is one
process with two fake CPU devices (XLA_FLAGS). Both run
tests/multihost/train_driver.py (the tiny config, 3 GRPO steps) as
subprocesses, all three at once. Run from tests/run.sh in its own pytest
process, like tests/multidevice.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest

_DRIVER = pathlib.Path(__file__).with_name("train_driver.py")
_ROOT = _DRIVER.parents[2]
_STEPS = 3
_TIMEOUT_S = 300
# Wall-clock values differ between runs; everything else must be identical.
_TIMING = ("perf/", "reward/score_seconds")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                              "JAX_PROCESS_ID", "XLA_FLAGS"))}
  env.update(JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=str(_ROOT))
  return env


def _checksums(workdir, step) -> dict[str, str]:
  """Per-leaf fingerprints of the saved train state (exact bits, whatever
  the sharding; see train/checkpoint.py)."""
  path = pathlib.Path(workdir) / "ckpt" / str(step) / "integrity" / "metadata"
  return {leaf["path"]: leaf["fp"]
          for leaf in json.loads(path.read_text())["state"]}


def _metrics(workdir) -> list[dict]:
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(l).items() if not k.startswith(_TIMING)}
          for l in lines if l]


class TwoProcessTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix="multihost_test_")
    cls.multi = os.path.join(cls.tmp, "two_processes")
    cls.single = os.path.join(cls.tmp, "one_process")
    port = _free_port()
    jobs = {}
    for pid in range(2):
      jobs[f"process {pid}"] = ([
          str(_DRIVER), cls.multi, str(_STEPS),
          f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
          f"--process_id={pid}"], _env(1))
    jobs["one process"] = ([str(_DRIVER), cls.single, str(_STEPS)], _env(2))
    procs, logs = {}, {}
    for name, (args, env) in jobs.items():
      logs[name] = open(os.path.join(cls.tmp, name.replace(" ", "_") + ".log"),
                        "w+")
      procs[name] = subprocess.Popen([sys.executable, *args], env=env,
                                     stdout=logs[name],
                                     stderr=subprocess.STDOUT, cwd=_ROOT)
    deadline = time.monotonic() + _TIMEOUT_S
    failed = []
    for name, proc in procs.items():
      try:
        rc = proc.wait(timeout=max(deadline - time.monotonic(), 1))
      except subprocess.TimeoutExpired:
        rc = "timeout"
      if rc != 0:
        failed.append((name, rc))
    for name, proc in procs.items():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    if failed:
      tails = []
      for name, rc in failed:
        logs[name].seek(0)
        tails.append(f"--- {name} (exit {rc}):\n{logs[name].read()[-3000:]}")
      raise AssertionError("driver failed:\n" + "\n".join(tails))
    for log in logs.values():
      log.close()

  def test_same_final_parameters_bitwise(self):
    # Bitwise, not approximately: the two layouts run the same SPMD program
    # on the same per-device shards; the only collectives are 2-way sums
    # (exact in either order) and gathers.
    want = _checksums(self.single, _STEPS)
    got = _checksums(self.multi, _STEPS)
    self.assertGreater(len(want), 10)
    self.assertEqual(got, want)
    # ... and the training did move the parameters after step 1.
    params = lambda c: {k: v for k, v in c.items() if ".params" in k}
    self.assertNotEqual(params(want), params(_checksums(self.single, 1)))

  def test_process_zero_writes_the_same_metrics(self):
    single, multi = _metrics(self.single), _metrics(self.multi)
    # One line per step: only process 0 writes (both share the workdir).
    self.assertEqual([r["step"] for r in multi], list(range(_STEPS + 1)))
    self.assertEqual(multi, single)
    # The rewards really varied (the length reward), and the held-out eval
    # covered all 8 prompts although each process evaluated 4.
    self.assertGreater(single[1]["critic/score/max"],
                       single[1]["critic/score/min"])
    self.assertEqual(multi[0]["val/num_prompts"], 8.0)
    summary = json.loads(
        (pathlib.Path(self.multi) / "summary.json").read_text())
    self.assertEqual(summary["steps"], _STEPS)

  def test_each_process_saved_its_iterator_state(self):
    path = (pathlib.Path(self.multi) / "ckpt" / str(_STEPS) / "data" /
            "metadata")
    states = json.loads(path.read_text())["per_process"]
    self.assertLen(states, 2)
    single = (pathlib.Path(self.single) / "ckpt" / str(_STEPS) / "data" /
              "metadata")
    # Each process walked the same global batches as the single process.
    self.assertEqual(states, [json.loads(single.read_text())] * 2)


if __name__ == "__main__":
  absltest.main()
