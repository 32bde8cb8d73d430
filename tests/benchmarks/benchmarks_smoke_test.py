"""Each benchmark script still runs (tiny sizes; no timing is asserted)."""

import json
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized


class BenchmarkSmokeTest(parameterized.TestCase):

  @parameterized.parameters(("rollout",), ("controllers",), ("train_step",),
                            ("token_stats_memory",))
  def test_runs_and_writes_json(self, name):
    out = self.create_tempdir().full_path + f"/{name}.json"
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{name}.py", "--tiny", f"--out={out}"],
        capture_output=True, text=True, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn("ratio", proc.stdout)
    with open(out) as f:
      result = json.load(f)
    self.assertGreater(result["ratio"], 0)

  def test_seed_sweep_rollout_only(self):
    # The full sweep trains 2 x S runs (minutes); its rollout part is quick.
    out = self.create_tempdir().full_path + "/seed_sweep.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/seed_sweep.py", "--rollout_only",
         "--seeds=2", "--repeats=1", f"--out={out}"],
        capture_output=True, text=True, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn("rollout sequential / vmap shared test:", proc.stdout)
    with open(out) as f:
      result = json.load(f)
    self.assertEqual(result["seeds"], 2)
    self.assertLen(result["rollout_median_s"], 3)
    self.assertTrue(all(v > 0 for v in result["rollout_median_s"].values()))


if __name__ == "__main__":
  absltest.main()
