"""The README's foundation demo runs end to end."""

import subprocess
import sys

from absl.testing import absltest


class DemoTest(absltest.TestCase):

  def test_demo_round_trip_and_generation(self):
    workdir = self.create_tempdir().full_path
    proc = subprocess.run(
        [sys.executable, "launch/demo.py", f"--workdir={workdir}",
         "--max_new_tokens=4"], capture_output=True, text=True, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn("save -> load round trip exact: True", proc.stdout)
    self.assertIn("greedy continuation (4 tokens", proc.stdout)


if __name__ == "__main__":
  absltest.main()
