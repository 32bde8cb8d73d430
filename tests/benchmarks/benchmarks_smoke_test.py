"""Each benchmark script still runs (tiny sizes; no timing is asserted)."""

import json
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized


class BenchmarkSmokeTest(parameterized.TestCase):

  def _run(self, name, *flags):
    """(stdout, the JSON it wrote) of `benchmarks/<name>.py <flags>`."""
    out = self.create_tempdir().full_path + f"/{name}.json"
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{name}.py", *flags, f"--out={out}"],
        capture_output=True, text=True, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    with open(out) as f:
      return proc.stdout, json.load(f)

  @parameterized.parameters(("rollout",), ("controllers",), ("train_step",),
                            ("token_stats_memory",))
  def test_runs_and_writes_json(self, name):
    stdout, result = self._run(name, "--tiny")
    self.assertIn("ratio", stdout)
    self.assertGreater(result["ratio"], 0)

  def test_seed_sweep_rollout_only(self):
    # The full sweep trains 2 x S runs (minutes); its rollout part is quick.
    stdout, result = self._run("seed_sweep", "--rollout_only", "--seeds=2",
                               "--repeats=1")
    self.assertIn("rollout sequential / vmap shared test:", stdout)
    self.assertEqual(result["seeds"], 2)
    self.assertLen(result["rollout_median_s"], 3)
    self.assertTrue(all(v > 0 for v in result["rollout_median_s"].values()))


if __name__ == "__main__":
  absltest.main()
