"""Replicas: a sweep of seeds × coefficients in one program equals the
separate runs, replica by replica (metrics and final weights), through a
resume."""

import json

import jax
import numpy as np
from absl.testing import absltest

from configs import grpo_tiny
from jaxrl_ent import sharding
from jaxrl_ent.train import metrics as metrics_lib
from jaxrl_ent.train import replicas
from jaxrl_ent.train import rl_loop
from jaxrl_ent.train import run_policy
from jaxrl_ent.train import validate

SEEDS, COEFS = (0, 1), (0.0, 0.01)


def _config(steps):
  config = grpo_tiny.get_config("runlocal,entropy=entropy_bonus")
  config.train.steps = steps
  config.eval.every = 1  # The same rows whether or not a launch ends early.
  config.checkpoint.async_save = False
  return config


def _numbers(row):
  # Wall-clock metrics differ between any two runs.
  return {k: v for k, v in row.items()
          if not k.startswith("perf/") and not k.endswith("_seconds")}


class ReplicasTest(absltest.TestCase):

  def test_plan_and_errors(self):
    config = _config(2)
    self.assertIsNone(replicas.plan(config))
    config.sweep.seeds = "0:3"
    config.sweep.grid = "entropy.coef=0,1e-3; optim.lr=1e-4"
    names = [r.name for r in replicas.plan(config)]
    self.assertLen(names, 6)
    self.assertEqual(names[1], "seed0-entropy.coef=0.001-optim.lr=0.0001")
    config.sweep.grid = "entropy.ratio=0.1"  # Not read by entropy_bonus.
    with self.assertRaisesRegex(ValueError, r"sweep\.grid.*entropy\.coef"):
      replicas.plan(config)
    # Validation names the field before anything is built.
    with self.assertRaisesRegex(validate.ConfigError, r"- sweep\.grid: "):
      validate.validate_config(config, num_devices=1, num_processes=1)
    config.sweep.grid = ""
    config.sweep.seeds = "1,1"
    with self.assertRaisesRegex(ValueError, "sweep.seeds"):
      replicas.plan(config)

  def test_sweep_equals_separate_runs(self):
    root = self.create_tempdir().full_path
    singles = {}
    for seed in SEEDS:
      for coef in COEFS:
        config = _config(2)
        config.seed = seed
        config.entropy.coef = coef
        workdir = f"{root}/single_{seed}_{coef}"
        rl_loop.train_and_evaluate(config, workdir)
        singles[(seed, coef)] = (config, workdir)

    sweep = _config(1)
    sweep.sweep.seeds = ",".join(map(str, SEEDS))
    sweep.sweep.grid = "entropy.coef=" + ",".join(map(str, COEFS))
    rl_loop.train_and_evaluate(sweep, f"{root}/sweep")
    sweep.train.steps = 2  # The second launch resumes every replica at 1.
    summary = rl_loop.train_and_evaluate(sweep, f"{root}/sweep")
    self.assertLen(summary["replicas"], 4)

    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    for (seed, coef), (config, workdir) in singles.items():
      name = f"seed{seed}-entropy.coef={coef:g}"
      rdir = f"{root}/sweep/replicas/{name}"
      got = metrics_lib.read_jsonl(rdir)
      want = metrics_lib.read_jsonl(workdir)
      self.assertEqual([r["step"] for r in got], [r["step"] for r in want])
      for g, w in zip(got, want):
        g, w = _numbers(g), _numbers(w)
        self.assertEqual(sorted(g), sorted(w))
        for k in w:
          np.testing.assert_allclose(g[k], w[k], rtol=1e-5, atol=1e-5,
                                     err_msg=f"{name} step {w['step']} {k}")
      # The replica's own checkpoint restores as a single run's would.
      saved = json.loads(open(f"{rdir}/summary.json").read())
      self.assertEqual(saved["final_eval"],
                       json.loads(open(f"{workdir}/summary.json").read())[
                           "final_eval"])
      a, *_ = run_policy.restore_policy(config, f"{rdir}/ckpt", mesh)
      b, *_ = run_policy.restore_policy(config, f"{workdir}/ckpt", mesh)
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5,
                                   rtol=1e-5)
    # α = 0 really runs without a bonus, α = 0.01 with one.
    rows = {c: metrics_lib.read_jsonl(
        f"{root}/sweep/replicas/seed0-entropy.coef={c:g}")[-1] for c in COEFS}
    self.assertEqual(rows[0.0]["entropy/dH_pred_tabular/entropy_bonus"], 0.0)
    self.assertGreater(rows[0.01]["entropy/dH_pred_tabular/entropy_bonus"], 0.0)


if __name__ == "__main__":
  absltest.main()
