"""benchmarks/long_context.py still runs (tiny sizes; no timing is asserted)."""

import json
import subprocess
import sys

from absl.testing import absltest


class LongContextSmokeTest(absltest.TestCase):

  def test_runs_and_writes_json(self):
    out = self.create_tempdir().full_path + "/long_context.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/long_context.py", "--tiny",
         f"--out={out}"], capture_output=True, text=True, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn("train step ours/torch at S=32:", proc.stdout)
    self.assertIn("temp memory blockwise: S=128/S=64", proc.stdout)
    with open(out) as f:
      result = json.load(f)
    self.assertEqual({r["impl"] for r in result["memory"]},
                     {"blockwise", "xla_naive"})
    self.assertGreater(result["speed"][0]["ratio"], 0)
    self.assertIn("attention block matmul [4, 512, 8] @ [4, 8, 256]",
                  proc.stdout)
    self.assertIn("MLP matmul [2048, 32] @ [32, 64]", proc.stdout)
    self.assertTrue(all(r["xla_gflops"] > 0 for r in result["gemm"]))
    self.assertIn("packing at S=64: 4 rows -> ", proc.stdout)
    (pack,) = result["packing"]
    self.assertLess(pack["padding_after"], pack["padding_before"])
    self.assertLess(pack["logp_diff"], 1e-4)


if __name__ == "__main__":
  absltest.main()
