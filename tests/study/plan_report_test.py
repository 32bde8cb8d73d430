"""Study planning (config → runs) and the claim checks on hand-made rows."""

import math
import sys
import os

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

from configs import compare_tiny  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxrl_ent.study import plan  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxrl_ent.study import report  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_expand_merges_each_variant_onto_its_own_copy(tmp_path):
  c = compare_tiny.get_config("seeds=2")
  c.study.methods = "grpo,clip_higher,kl_cov_annealed"
  runs = plan.expand(c, tmp_path)
  assert [(r.method, r.seed) for r in runs] == [
      ("grpo", 0), ("grpo", 1), ("clip_higher", 0), ("clip_higher", 1),
      ("kl_cov_annealed", 0), ("kl_cov_annealed", 1)]
  by = {(r.method, r.seed): r.config for r in runs}
  assert by[("grpo", 0)].loss.clip_eps_high == 0.2
  assert by[("clip_higher", 1)].loss.clip_eps_high == 0.28
  assert by[("kl_cov_annealed", 0)].entropy.method == "kl_cov"
  assert by[("kl_cov_annealed", 0)].entropy.anneal == "inverse_power"
  assert by[("kl_cov_annealed", 0)].entropy.anneal_tau == 60.0
  assert by[("grpo", 1)].seed == 1 and by[("grpo", 0)].seed == 0
  # The base config itself is untouched.
  assert c.base.loss.clip_eps_high == 0.2 and c.base.entropy.method == "none"
  assert runs[3].run_dir == tmp_path / "runs" / "clip_higher" / "seed1"


@pytest.mark.parametrize("field,value,match", [
    ("methods", "grpo,nope", r"study\.methods names \['nope'\]"),
    ("methods", "grpo,,kl_cov", r"study\.methods=.*non-empty"),
    ("methods", "grpo,grpo", r"study\.methods=.*twice"),
    ("seeds", "0,x", r"study\.seeds=.*integers"),
    ("workers", -1, r"study\.workers=-1"),
    ("final_fraction", 0.0, r"study\.final_fraction=0\.0"),
])
def test_bad_study_fields_name_the_field(tmp_path, field, value, match):
  c = compare_tiny.get_config()
  c.study[field] = value
  with pytest.raises(plan.StudyConfigError, match=match):
    plan.expand(c, tmp_path)


def test_variant_with_an_unknown_field_names_its_path(tmp_path):
  c = compare_tiny.get_config()
  c.variants.grpo.loss = {"clip_eps_hihg": 0.3}
  with pytest.raises(plan.StudyConfigError,
                     match=r"variants\.grpo\.loss\.clip_eps_hihg"):
    plan.expand(c, tmp_path)


def _row(method, acc, h, corr=0.5, agree=0.8):
  return {"method": method, "final_acc": acc, "final_entropy": h,
          "dH_corr": corr, "dH_sign_agree": agree}


def test_bias_claim_held_when_accuracy_falls_with_alpha():
  rows = ([_row("grpo", a, 0.5) for a in (0.30, 0.32, 0.31)] +
          [_row("entropy_bonus_1e-3", a, 0.6) for a in (0.29, 0.30, 0.28)] +
          [_row("entropy_bonus_3e-2", a, 5.0) for a in (0.0, 0.01, 0.0)])
  claim = report.check_claims(rows)[0]
  assert claim["verdict"] == "held"
  # Spearman by hand, ties averaged: α ranks 2,2,2,5,5,5,8,8,8; accuracy
  # ranks of (0.30, 0.32, 0.31, 0.29, 0.30, 0.28, 0.0, 0.01, 0.0).
  rx = np.array([2, 2, 2, 5, 5, 5, 8, 8, 8], float)
  ry = np.array([6.5, 9, 8, 5, 6.5, 4, 1.5, 3, 1.5])
  expected = np.corrcoef(rx, ry)[0, 1]
  assert f"ρ(α, acc) = {expected:.2f}" in claim["evidence"]


def test_bias_claim_not_observed_within_noise():
  rows = ([_row("grpo", a, 0.5) for a in (0.30, 0.20, 0.25)] +
          [_row("entropy_bonus_1e-2", a, 0.7) for a in (0.26, 0.31, 0.19)])
  assert report.check_claims(rows)[0]["verdict"] == "not observed"


def test_annealed_claims_and_prediction_correlation():
  rows = ([_row("grpo", a, h, corr=c) for a, h, c in
           ((0.30, 0.40, 0.6), (0.31, 0.42, 0.7), (0.29, 0.41, 0.5))] +
          [_row("clip_cov_annealed", a, h) for a, h in
           ((0.30, 0.80), (0.32, 0.85), (0.29, 0.82))] +
          [_row("kl_cov_annealed", a, h) for a, h in
           ((0.20, 0.80), (0.21, 0.85), (0.19, 0.82))])
  claims = report.check_claims(rows)
  assert claims[0]["verdict"].startswith("not testable")
  assert claims[1]["verdict"] == "held"
  assert claims[2]["verdict"] == "not observed: accuracy lower"
  # Median of the 9 per-run correlations: six 0.5 and 0.6, 0.7, 0.5 → 0.5.
  assert claims[3]["verdict"] == "held"
  assert "median 0.50" in claims[3]["evidence"]


def test_aggregate_is_mean_and_sample_std():
  rows = [dict(_row("m", a, h), best_acc=a, final_pass=a, law_a=1.0,
               law_b=2.0, law_ceiling=1.0, law_r2=0.5, touched=math.nan,
               seconds=10.0 * i)
          for i, (a, h) in enumerate(((0.1, 1.0), (0.3, 2.0), (0.5, 6.0)))]
  agg = report.aggregate(rows)["m"]
  assert agg["seeds"] == 3
  assert agg["final_acc"] == pytest.approx((0.3, 0.2))
  assert agg["final_entropy"] == pytest.approx((3.0, np.std([1, 2, 6],
                                                            ddof=1)))
  assert math.isnan(agg["touched"][0])
  table = report.markdown_table({"m": agg})
  assert "| m | 3 | 0.300 ± 0.200 |" in table


def test_qwen_study_config_expands_and_every_controller_builds(tmp_path):
  """The TPU study config: every variant merges onto the base and its
  entropy block builds a controller (no model or checkpoint needed)."""
  from configs import compare_qwen2_5_0_5b  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.train import factories  # pylint: disable=g-import-not-at-top
  c = compare_qwen2_5_0_5b.get_config()
  runs = plan.expand(c, tmp_path)
  assert len(runs) == len(compare_qwen2_5_0_5b.VARIANTS) * 3
  for run in runs[::3]:
    factories.make_controller(run.config.entropy).init(None)
    # And the whole update's structure and hyperparameters.
    factories.update_spec(run.config)
    factories.initial_hparams(run.config)
    assert run.config.loss.clip_eps_high == (
        0.28 if run.method == "clip_higher" else 0.2)
  by = {r.method: r.config for r in runs}
  assert by["kl_cov"].entropy.ratio == 2e-3
  assert by["clip_cov_annealed"].entropy.anneal == "inverse_power"
  assert by["clip_cov_annealed"].entropy.ratio == 2e-4


def test_every_tiny_study_run_config_passes_validation(tmp_path):
  from jaxrl_ent.train import validate  # pylint: disable=g-import-not-at-top
  for run in plan.expand(compare_tiny.get_config("seeds=1"), tmp_path):
    validate.validate_config(run.config, num_devices=1, num_processes=1)
