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


if __name__ == "__main__":
  absltest.main()
