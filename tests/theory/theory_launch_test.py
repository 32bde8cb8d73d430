"""End-to-end test of launch/theory.py with the `tiny` config variant."""

import importlib.util
import os

from absl import flags
from absl.testing import absltest
import jax

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _load_launcher():
  spec = importlib.util.spec_from_file_location(
      "theory_launcher", os.path.join(_ROOT, "launch", "theory.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class TheoryLaunchTest(absltest.TestCase):

  def test_tiny_run_writes_table_and_plots_and_all_claims_hold(self):
    launcher = _load_launcher()
    workdir = self.create_tempdir().full_path
    config = os.path.join(_ROOT, "configs", "theory_bandit.py")
    flags.FLAGS([
        "theory", f"--config={config}:tiny", f"--workdir={workdir}"])
    try:
      launcher.main(["theory"])
    finally:
      flags.FLAGS.unparse_flags()
    # Launching configures nothing globally.
    self.assertFalse(jax.config.jax_enable_x64)
    with open(os.path.join(workdir, launcher.TABLE_FILE)) as f:
      table = f.read()
    self.assertIn("| # | claim | measured | closed form / expected | holds? |",
                  table)
    for name in ("t1_error_orders", "t2_pg_npg", "t3_er_gap", "t4_annealing",
                 "t5_fixed_point"):
      path = os.path.join(workdir, name + ".png")
      self.assertTrue(os.path.exists(path), path)
      self.assertGreater(os.path.getsize(path), 1000)
    rows = [line for line in table.splitlines() if line.startswith("| T")]
    self.assertEqual({row.split("|")[1].strip() for row in rows},
                     {"T1", "T2", "T3", "T4", "T5"})
    failed = [row for row in rows if not row.endswith("| yes |")]
    self.assertEmpty(failed, msg="\n".join(failed))


if __name__ == "__main__":
  absltest.main()
