"""Two short real runs (two entropy methods) → launch/analyze.py → PNGs, table."""

import pathlib
import subprocess
import sys

import jax
from absl.testing import absltest

from configs import grpo_tiny
from jaxrl_ent import rewards
from jaxrl_ent.analysis import plots
from jaxrl_ent.analysis import report
from jaxrl_ent.analysis import runs as runs_lib
from jaxrl_ent.train import rl_loop

_REPO = pathlib.Path(__file__).resolve().parents[2]


def _length_reward(completion, reference):
  # The random policy never solves `digits`: a constant 0 reward would make
  # the entropy-law fit degenerate. Completion length varies per sample.
  del reference
  return float(len(completion))


class AnalyzeEndToEndTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    jax.config.update("jax_disable_most_optimizations", True)
    rewards.register("analysis_e2e_length", _length_reward, overwrite=True)

  def test_two_runs_give_plots_fit_and_table(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    for method in ("none", "clip_cov"):
      config = grpo_tiny.get_config(f"runlocal,entropy={method},steps=3")
      config.reward.backend = "inline"
      config.reward.spec = "analysis_e2e_length"
      config.sft.steps = 0
      config.tensorboard = False
      rl_loop.train_and_evaluate(config, root / f"run_{method}")

    out = root / "analysis"
    proc = subprocess.run(
        [sys.executable, "launch/analyze.py",
         f"--workdirs={root}/run_none,{root}/run_clip_*", f"--out={out}"],
        cwd=_REPO, capture_output=True, text=True, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])

    for name in list(plots.PLOT_FILES.values()) + ["overview.png"]:
      path = out / name
      self.assertTrue(path.is_file(), (name, proc.stdout))
      data = path.read_bytes()
      self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n", name)
      # A blank canvas of these sizes encodes to a few KB; curves, markers
      # and legends put real plots well above that.
      self.assertGreater(len(data), 15_000, name)

    table = (out / "summary.md").read_text()
    self.assertIn(table.splitlines()[0], proc.stdout)
    self.assertIn("| run_none | none | 3 |", table)
    self.assertIn("| run_clip_cov | clip_cov | 3 |", table)

    for method in ("none", "clip_cov"):
      run = runs_lib.load_run(root / f"run_{method}")
      self.assertEqual((run.method, run.method_source), (method, "config"))
      summary = report.summarize_run(run)
      self.assertTrue(summary.fit.ok, summary.fit.reason)
      self.assertEqual(summary.fit.n, 3)
      # 3 logged steps with measured ΔH on every step (measure_every=1).
      self.assertEqual(summary.dh_n, 3)
      touched = runs_lib.touched_series(run)
      self.assertIsNotNone(touched)
      if method == "none":
        self.assertEqual(summary.mean_touched, 0.0)
      else:
        self.assertEqual(touched.key, "entropy/clip_cov/frac_selected")


if __name__ == "__main__":
  absltest.main()
