"""load_run, the derived series and the report on a hand-written workdir."""

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
from absl.testing import absltest

from jaxrl_ent.analysis import entropy_law
from jaxrl_ent.analysis import plots
from jaxrl_ent.analysis import report
from jaxrl_ent.analysis import runs as runs_lib

_REPO = pathlib.Path(__file__).resolve().parents[2]

# Per training step: (entropy_before_update, score, pred_dH, measured_dH,
# covariance, frac_kept).
_STEPS = {
    1: (1.50, 0.10, -2e-5, -0.030, 0.20, 0.25),
    2: (1.20, 0.20, -1e-5, -0.020, 0.15, 0.20),
    3: (0.90, 0.25, -4e-6, -0.010, 0.10, 0.20),
    4: (0.60, 0.35, 1e-6, 0.002, 0.05, 0.30),
    5: (0.40, 0.40, -3e-6, -0.005, 0.02, 0.20),
}
_EVALS = {0: (0.05, 0.10), 2: (0.15, 0.25), 5: (0.30, 0.40)}


def _write_workdir(root, *, with_config=True):
  """A workdir in rl_loop's layout, with the quirks the reader must handle."""
  root = pathlib.Path(root)
  lines = [json.dumps({"step": 0, "val/greedy_acc": _EVALS[0][0],
                       "val/pass_at_4": _EVALS[0][1]})]
  for step, (h, score, pdh, mdh, cov, kept) in _STEPS.items():
    rec = {"step": step, "actor/entropy_before_update": h,
           "rollout/entropy": h + 0.01, "actor/entropy": h - 0.01,
           "critic/score/mean": score, "entropy/dH_pred_tabular/input": pdh,
           "entropy/dH_pred_tabular/high_entropy_tokens": 0.0,
           "entropy/dH_pred_tabular/total": pdh, "entropy/measured_dH": mdh,
           "entropy/covariance": cov,
           "entropy/high_entropy_tokens/frac_kept": kept,
           "entropy/high_entropy_tokens/threshold": 1.0,
           "actor/loss": "nan" if step == 3 else 0.5}
    if step in _EVALS:
      rec.update({"val/greedy_acc": _EVALS[step][0],
                  "val/pass_at_4": _EVALS[step][1]})
    lines.append(json.dumps(rec))
    if step == 2:
      # A stale duplicate of step 2 written *before* the real one would be
      # earlier in the file; here a later rewrite must win.
      lines.insert(-1, json.dumps({"step": 2, "critic/score/mean": 99.0}))
  text = "\n".join(lines) + "\n" + '{"step": 6, "actor/ent'  # Torn write.
  root.mkdir(parents=True, exist_ok=True)
  (root / "metrics.jsonl").write_text(text)
  (root / "summary.json").write_text(json.dumps({"steps": 5}))
  if with_config:
    for step, method in ((3, "kl_cov"), (5, "high_entropy_tokens")):
      meta = root / "ckpt" / str(step) / "meta"
      meta.mkdir(parents=True)
      (meta / "metadata").write_text(json.dumps(
          {"config": {"entropy": {"method": method,
                                  "anneal": "inverse_power"}}}))
    # An uncommitted orbax temp dir must be ignored.
    (root / "ckpt" / "6.orbax-checkpoint-tmp-1").mkdir()
  return root


class LoadRunTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = _write_workdir(self.create_tempdir("myrun").full_path)
    self.run = runs_lib.load_run(self.workdir)

  def test_records_and_series(self):
    run = self.run
    self.assertEqual(run.name, "myrun")
    self.assertEqual([r["step"] for r in run.records], [0, 1, 2, 3, 4, 5])
    self.assertEqual(run.last_step, 5)
    self.assertEqual(run.summary, {"steps": 5})
    score = run.series("critic/score/mean")
    np.testing.assert_array_equal(score.step, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(score.value, [v[1] for v in _STEPS.values()])
    loss = run.series("actor/loss")
    self.assertTrue(math.isnan(loss.value[2]))  # "nan" string -> NaN.
    self.assertEqual(len(loss.finite()), 4)
    self.assertIsNone(run.get("no/such"))
    with self.assertRaisesRegex(KeyError, "no/such.*metrics.jsonl"):
      run.series("no/such")
    self.assertEqual(runs_lib.pass_at_k_key(run), "val/pass_at_4")
    # entropy_before_update is preferred over rollout/actor entropy.
    self.assertEqual(runs_lib.entropy_series(run).key,
                     "actor/entropy_before_update")

  def test_method_from_newest_checkpoint_config(self):
    self.assertEqual(self.run.method, "high_entropy_tokens")
    self.assertEqual(self.run.method_source, "config")
    self.assertEqual(self.run.method_label,
                     "high_entropy_tokens (inverse_power)")

  def test_method_inferred_from_metric_names_without_config(self):
    wd = _write_workdir(self.create_tempdir().full_path, with_config=False)
    run = runs_lib.load_run(wd, name="custom")
    self.assertEqual(run.name, "custom")
    self.assertIsNone(run.config)
    self.assertEqual(run.method, "high_entropy_tokens")
    self.assertEqual(run.method_source, "metrics")

  def test_eval_pairs_use_entropy_of_evaluated_policy(self):
    steps, h, r = runs_lib.eval_pairs(self.run)
    np.testing.assert_array_equal(steps, [0, 2, 5])
    np.testing.assert_allclose(r, [0.05, 0.15, 0.30])
    # Eval at s scored the policy after s updates: step s+1's pre-update
    # entropy; the last step has none, so H_before(5) + measured ΔH(5).
    np.testing.assert_allclose(h, [1.50, 0.90, 0.40 - 0.005])

  def test_train_pairs_and_smoothing(self):
    steps, h, r = runs_lib.train_pairs(self.run)
    np.testing.assert_array_equal(steps, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(h, [v[0] for v in _STEPS.values()])
    _, hs, rs = runs_lib.train_pairs(self.run, smooth=2)
    np.testing.assert_allclose(hs, [1.5, 1.35, 1.05, 0.75, 0.5])
    np.testing.assert_allclose(rs, [0.1, 0.15, 0.225, 0.3, 0.375])

  def test_tokens_touched_and_dh(self):
    touched = runs_lib.touched_series(self.run)
    np.testing.assert_allclose(touched.value,
                               [1 - v[5] for v in _STEPS.values()])
    _, p, m = runs_lib.dh_pairs(self.run)
    corr, n = runs_lib.pearson(p, m)
    self.assertEqual(n, 5)
    self.assertAlmostEqual(corr, np.corrcoef(p, m)[0, 1], places=12)

  def test_summary_row(self):
    s = report.summarize_run(self.run)
    self.assertEqual(s.steps, 5)
    self.assertEqual((s.final_acc, s.best_acc, s.best_acc_step),
                     (0.30, 0.30, 5))
    self.assertEqual(s.final_pass, 0.40)
    self.assertEqual(s.final_entropy, 0.40)
    self.assertAlmostEqual(s.mean_touched,
                           np.mean([1 - v[5] for v in _STEPS.values()]))
    want = entropy_law.fit_entropy_law([v[0] for v in _STEPS.values()],
                                       [v[1] for v in _STEPS.values()])
    self.assertEqual((s.fit.a, s.fit.b), (want.a, want.b))
    self.assertEqual(s.fits["val"].n, 3)
    table = report.markdown_table([s])
    self.assertIn("| myrun | high_entropy_tokens (inverse_power) | 5 |",
                  table)
    self.assertIn("pass_at_4 final", table)
    self.assertIn(report.fmt(want.ceiling), table)
    val = report.summarize_run(self.run, fit_source="val")
    self.assertEqual(val.fit, s.fits["val"])
    with self.assertRaisesRegex(ValueError, "fit source"):
      report.summarize_run(self.run, fit_source="test")

  def test_exact_and_trapezoid_correlations(self):
    wd = pathlib.Path(self.create_tempdir().full_path)
    measured = [-0.03, -0.02, -0.01, 0.002, -0.005]
    exact = [-0.025, -0.022, -0.004, 0.001, -0.006]
    trap = [-0.029, -0.021, -0.009, 0.002, -0.005]
    (wd / "metrics.jsonl").write_text("".join(json.dumps(
        {"step": i + 1, "actor/entropy_before_update": 1.0 - 0.1 * i,
         "critic/score/mean": 0.1 * i, "entropy/measured_dH": m,
         "entropy/dH_pred_exact/total": e,
         "entropy/dH_pred_trapezoid/total": t}) + "\n"
        for i, (m, e, t) in enumerate(zip(measured, exact, trap))))
    s = report.summarize_run(runs_lib.load_run(wd))
    self.assertEqual((s.exact_n, s.trapezoid_n), (5, 5))
    self.assertAlmostEqual(s.exact_corr, np.corrcoef(exact, measured)[0, 1],
                           places=12)
    self.assertAlmostEqual(s.trapezoid_corr,
                           np.corrcoef(trap, measured)[0, 1], places=12)
    self.assertIn(f"{report.fmt(s.trapezoid_corr, 4)} (n=5)",
                  report.markdown_table([s]))

  def test_plots_skip_missing_metrics(self):
    out = self.create_tempdir().full_path
    # Drop the covariance metric: that plot (only) must be skipped.
    wd = pathlib.Path(self.create_tempdir().full_path)
    lines = [json.loads(l) for l in
             (self.workdir / "metrics.jsonl").read_text().splitlines()[:-1]]
    for rec in lines:
      rec.pop("entropy/covariance", None)
    (wd / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in lines))
    run = runs_lib.load_run(wd)
    logged = []
    result = plots.write_plots([run], out, log=logged.append)
    # These synthetic runs log no exact first-order ΔH either.
    self.assertEqual(set(result.skipped), {"covariance", "entropy_dynamics"})
    self.assertIn("entropy/dH_pred_exact/total",
                  result.skipped["entropy_dynamics"])
    self.assertIn("entropy/covariance", result.skipped["covariance"])
    self.assertTrue(any(l.startswith("skipped covariance") for l in logged))
    for kind, path in result.written.items():
      self.assertEqual(path, os.path.join(out, plots.PLOT_FILES[kind]))
      with open(path, "rb") as f:
        self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


class LoadErrorsTest(absltest.TestCase):

  def test_missing_workdir_names_path(self):
    path = os.path.join(self.create_tempdir().full_path, "absent")
    with self.assertRaisesRegex(FileNotFoundError, f"{path} does not exist"):
      runs_lib.load_run(path)

  def test_workdir_without_metrics_names_path(self):
    path = self.create_tempdir().full_path
    with self.assertRaisesRegex(FileNotFoundError, "has no metrics.jsonl"):
      runs_lib.load_run(path)

  def test_bad_line_names_file_and_line(self):
    wd = pathlib.Path(self.create_tempdir().full_path)
    (wd / "metrics.jsonl").write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with self.assertRaisesRegex(ValueError, r"metrics.jsonl:2: bad metrics"):
      runs_lib.load_run(wd)

  def test_cli_reports_missing_workdir(self):
    missing = os.path.join(self.create_tempdir().full_path, "nope")
    proc = subprocess.run(
        [sys.executable, "launch/analyze.py", f"--workdirs={missing}",
         f"--out={self.create_tempdir().full_path}"],
        cwd=_REPO, capture_output=True, text=True, check=False)
    self.assertEqual(proc.returncode, 1, proc.stderr[-2000:])
    self.assertIn(f"analyze: error: run workdir {missing} does not exist",
                  proc.stderr)


if __name__ == "__main__":
  absltest.main()
