"""`launch/compare.py` end to end (the countdown study's smoke variant):
2 methods × 1 seed × 2 steps, then a rerun that must skip the finished runs
and rebuild the same report."""

import json
import os

from absl.testing import absltest

import launcher_testlib

# The countdown study's smoke variant: its code path, cut to seconds.
_ARGS = (f"--config={launcher_testlib.ROOT}/configs/study_countdown.py:smoke",
         "--config.study.methods=grpo,clip_cov_1e-1",
         "--config.study.seeds=0",
         "--config.base.reward.backend=inline",
         f"--config.base.reward.spec={launcher_testlib.LENGTH_REWARD}",
         "--config.base.sft.steps=0")


class CompareTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    launcher_testlib.register_length_reward()

  def _compare(self, workdir):
    with launcher_testlib.launcher("compare") as launcher:
      launcher_testlib.run_main(launcher, "compare", *_ARGS,
                                f"--workdir={workdir}")

  def test_two_methods_one_seed_then_resume_skips_finished_runs(self):
    import jax  # pylint: disable=g-import-not-at-top
    workdir = self.create_tempdir().full_path
    cache_before = jax.config.jax_compilation_cache_dir
    self._compare(workdir)
    # The study's compilation cache is switched off again afterwards (later
    # compilations in this process must not write into its workdir).
    self.assertEqual(jax.config.jax_compilation_cache_dir, cache_before)
    self.assertNotEmpty(os.listdir(os.path.join(workdir, "jax_cache")))
    study = json.loads(open(os.path.join(workdir, "study.json")).read())
    self.assertEqual([(r["method"], r["seed"], r["steps"])
                      for r in study["runs"]],
                     [("grpo", 0, 2), ("clip_cov_1e-1", 0, 2)])
    self.assertEqual(study["missing"], [])
    for method in ("grpo", "clip_cov_1e-1"):
      run = os.path.join(workdir, "runs", method, "seed0")
      rows = [json.loads(l) for l in open(os.path.join(run,
                                                        "metrics.jsonl"))]
      self.assertEqual([r["step"] for r in rows], [0, 1, 2])
      # The table's final accuracy is the run's last logged evaluation.
      # (One seed: the IQM is that seed's value.)
      self.assertAlmostEqual(study["methods"][method]["final_acc"]["iqm"],
                             rows[-1]["val/greedy_acc"])
      self.assertIn("val/pass_at_4", rows[-1])
      self.assertIn("actor/frac_off_policy", rows[-1])
      self.assertIn("entropy/cov_score/q99", rows[-1])
    table = open(os.path.join(workdir, "study.md")).read()
    self.assertIn("| grpo | 1 |", table)
    self.assertIn("| clip_cov_1e-1 | 1 |", table)
    self.assertIn("## The regime", table)
    for png in ("entropy_curves.png", "accuracy_curves.png",
                "pass_at_4_curves.png", "dH_by_source.png",
                "dH_predicted_vs_measured.png"):
      self.assertGreater(os.path.getsize(os.path.join(workdir, png)), 5000)

    # Rerun: nothing trains again (train_and_evaluate would raise), and the
    # report is rebuilt from the same runs.
    from jaxrl_ent.train import rl_loop  # pylint: disable=g-import-not-at-top

    def no_training(*args, **kwargs):
      raise AssertionError("a finished run was trained again")

    original = rl_loop.train_and_evaluate
    rl_loop.train_and_evaluate = no_training
    try:
      self._compare(workdir)
    finally:
      rl_loop.train_and_evaluate = original
    again = json.loads(open(os.path.join(workdir, "study.json")).read())
    self.assertEqual(again["methods"], study["methods"])

  def test_vectorised_groups_equal_one_run_at_a_time(self):
    """GRPO and clip-higher × 2 seeds share structure: one program of four
    replicas; each run directory matches the run made on its own."""
    from configs import compare_tiny  # pylint: disable=g-import-not-at-top
    from jaxrl_ent.study import runner  # pylint: disable=g-import-not-at-top
    from jaxrl_ent.train import metrics  # pylint: disable=g-import-not-at-top
    root = self.create_tempdir().full_path
    for vectorize in (True, False):
      config = compare_tiny.get_config("runlocal")
      config.study.methods = "grpo,clip_higher"
      config.study.seeds = "0,1"
      config.study.vectorize = vectorize
      config.base.reward.backend = "inline"
      config.base.reward.spec = launcher_testlib.LENGTH_REWARD
      config.base.sft.steps = 0
      results = runner.run_study(config, f"{root}/{vectorize}",
                                 progress=False)
      self.assertEqual([r.status for r in results], ["done"] * 4)
    # Only the vectorised study ran a group program.
    self.assertTrue(os.path.isdir(f"{root}/True/groups/0"))
    self.assertFalse(os.path.exists(f"{root}/False/groups"))
    for method in ("grpo", "clip_higher"):
      for seed in (0, 1):
        got, want = (metrics.read_jsonl(f"{root}/{m}/runs/{method}/seed{seed}")
                     for m in (True, False))
        self.assertEqual([r["step"] for r in got], [0, 1, 2])
        for g, w in zip(got, want):
          self.assertEqual(sorted(g), sorted(w))
          for k, v in w.items():
            if k.startswith("perf/") or k.endswith("_seconds"):
              continue
            self.assertAlmostEqual(g[k], v, delta=1e-5 + 1e-5 * abs(v),
                                   msg=f"{method}/seed{seed} {k}")
    # clip-higher really ran with its own clip range.
    rows = metrics.read_jsonl(f"{root}/True/runs/clip_higher/seed0")
    self.assertIn("actor/pg_clipfrac", rows[-1])

if __name__ == "__main__":
  absltest.main()
