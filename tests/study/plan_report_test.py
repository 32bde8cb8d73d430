"""Study planning (config → runs) and the statistics and claim checks of
the report on hand-made rows."""

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


def _rows(method, acc, h=0.5, **cols):
  """One row per seed: `acc` (and every column in `cols`) a list by seed."""
  out = []
  for seed, a in enumerate(acc):
    row = {"method": method, "seed": seed, "final_acc": a,
           "final_entropy": h[seed] if isinstance(h, (list, tuple)) else h}
    row.update({k: v[seed] for k, v in cols.items()})
    out.append(row)
  return out


_NOISE = np.random.default_rng(0).normal(0.0, 0.01, 16)
_BASE_ACC = list(0.30 + 3 * _NOISE)


def test_paired_difference_uses_shared_seeds_in_seed_order():
  x = _rows("a", [0.5, 0.4, 0.9])
  y = _rows("b", [0.1, 0.3])  # Seed 2 missing: not paired.
  d = report.paired_diff(x, y, "final_acc")
  assert d["n"] == 2
  assert d["diff"] == pytest.approx(((0.5 - 0.1) + (0.4 - 0.3)) / 2)
  assert d["ci"][0] <= d["diff"] <= d["ci"][1]


def test_aggregate_is_iqm_with_interval_and_poi_over_baseline():
  rows = (_rows("grpo", [0.0, 1, 2, 3, 4, 5, 6, 7]) +
          _rows("m", [10.0, 11, 12, 13, 14, 15, 16, 17]))
  agg = report.aggregate(rows)
  # Of 8 scores the IQM drops floor(8/4) = 2 at each end: mean(2, 3, 4, 5).
  assert agg["grpo"]["final_acc"]["iqm"] == pytest.approx(3.5)
  lo, hi = agg["grpo"]["final_acc"]["ci"]
  assert 0.0 <= lo < 3.5 < hi <= 7.0
  assert agg["grpo"]["seeds"] == 8 and "poi_final_acc" not in agg["grpo"]
  # Every seed of m beats every seed of grpo: P(m > grpo) = 1, interval too.
  assert agg["m"]["poi_final_acc"]["poi"] == 1.0
  assert agg["m"]["poi_final_acc"]["ci"] == [1.0, 1.0]
  table = report.markdown_table(agg)
  assert "| grpo | 8 | 3.500 [" in table
  assert "| m | 8 | 13.500 [" in table and "1.00 [1.00, 1.00]" in table


def test_bias_claim_held_when_accuracy_falls_with_alpha_on_every_seed():
  rows = (_rows("grpo", _BASE_ACC) +
          _rows("entropy_bonus_1e-3", [a - 0.01 for a in _BASE_ACC]) +
          _rows("entropy_bonus_3e-2", [a - 0.2 + n for a, n in
                                       zip(_BASE_ACC, _NOISE)]))
  claim = report.check_claims(rows)[0]
  assert claim["verdict"] == "held", claim
  # The mean paired difference at the largest α, by hand.
  assert f"{np.mean(_NOISE) - 0.2:+.3f}" in claim["evidence"]


def test_bias_claim_undecided_within_noise_and_contradicted_when_higher():
  up = _rows("entropy_bonus_1e-2", [a + n for a, n in zip(_BASE_ACC,
                                                          _NOISE[::-1])])
  rows = _rows("grpo", _BASE_ACC) + up
  assert report.check_claims(rows)[0]["verdict"] == "undecided"
  rows = _rows("grpo", _BASE_ACC) + _rows(
      "entropy_bonus_1e-2", [a + 0.1 for a in _BASE_ACC])
  assert report.check_claims(rows)[0]["verdict"] == "contradicted"


def test_annealing_claim_compares_with_the_constant_bonus_at_alpha0():
  rows = (_rows("grpo", _BASE_ACC) +
          _rows("entropy_bonus_3e-3", [a - 0.1 for a in _BASE_ACC]) +
          _rows("entropy_bonus_1e-2", [a + 0.1 for a in _BASE_ACC]) +
          _rows("entropy_bonus_annealed", [a - 0.05 for a in _BASE_ACC]))
  # α₀ = 3e-3: every seed's annealed run beats its constant twin by 0.05.
  claim = report.check_claims(rows, annealed_alpha=3e-3)[1]
  assert claim["verdict"] == "held", claim
  assert "annealed − entropy_bonus_3e-3: acc +0.050" in claim["evidence"]
  # Against the 1e-2 run (the default α₀) it loses on every seed.
  assert report.check_claims(rows)[1]["verdict"] == "contradicted"


def test_annealed_covariance_claim_is_compound():
  n = len(_BASE_ACC)
  base = _rows("grpo", _BASE_ACC, h=[0.4] * n, pass16=[0.3] * n)
  higher_h = [0.6 + x for x in _NOISE]
  good = _rows("clip_cov_annealed", [a - 0.005 for a in _BASE_ACC],
               h=higher_h, pass16=[0.35 + x for x in _NOISE])
  bad = _rows("kl_cov_annealed", [a - 0.1 for a in _BASE_ACC], h=higher_h,
              pass16=[0.35 + x for x in _NOISE])
  claims = report.check_claims(base + good + bad)
  assert claims[0]["verdict"].startswith("not testable")
  assert claims[2]["verdict"] == "held", claims[2]
  # Accuracy 0.1 lower: outside the non-inferiority margin.
  assert claims[3]["verdict"].startswith("contradicted"), claims[3]
  assert "accuracy kept contradicted" in claims[3]["verdict"]


def test_tracking_claim_pools_per_run_r_by_fisher_z():
  rows = _rows("grpo", _BASE_ACC[:4], exact_corr=[0.95, 0.9, 0.97, 0.93],
               exact_n=[40] * 4, tabular_corr=[0.3, 0.2, 0.4, 0.1],
               tabular_n=[40] * 4)
  claim = report.check_claims(rows)[4]
  z = np.arctanh([0.95, 0.9, 0.97, 0.93]).mean()
  half = 1.959963984540054 / np.sqrt(4 * 37)
  assert f"r = {np.tanh(z):.3f} [{np.tanh(z - half):.3f}" in claim["evidence"]
  assert claim["verdict"] == ("held" if np.tanh(z - half) > report.TRACK_R
                              else "undecided")


def test_source_claim_needs_pg_negative_and_largest():
  n = 8
  pg = [-0.05 + x / 10 for x in _NOISE[:n]]
  rows = _rows("grpo", _BASE_ACC[:n], dH_pg=pg,
               dH_momentum=[0.01] * n, dH_weight_decay=[0.0] * n)
  assert report.check_claims(rows)[5]["verdict"] == "held"
  rows = _rows("grpo", _BASE_ACC[:n], dH_pg=pg, dH_momentum=[-0.2] * n)
  assert report.check_claims(rows)[5]["verdict"].startswith(
      "undecided: momentum")


def test_countdown_study_expands_with_one_shared_warm_start(tmp_path):
  from configs import study_countdown  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.train import factories  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.train import policy_setup  # pylint: disable=g-import-not-at-top
  c = study_countdown.get_config()
  c.study.methods = ",".join(study_countdown.VARIANTS)
  runs = plan.expand(c, tmp_path)
  assert len(runs) == len(study_countdown.VARIANTS) * 16
  # Seeds differ, warm start shared: paired seeds (the same seed index has
  # the same rollout keys and data order in every method).
  assert {r.seed for r in runs} == set(range(16))
  assert {policy_setup.warm_start_seed(r.config) for r in runs} == {0}
  for run in runs[::16]:
    factories.make_controller(run.config.entropy).init(None)
    factories.update_spec(run.config)
    factories.initial_hparams(run.config)
    assert run.config.train.num_mini_batches >= 4
  by = {r.method: r.config for r in runs}
  assert by["clip_cov_1e-1"].entropy.clip_cov_lb == 0.1
  assert by["kl_cov_annealed"].entropy.anneal == "inverse_power"
  assert by["entropy_bonus_3e-3"].entropy.coef == 3e-3
  quick = study_countdown.get_config("quick")
  assert quick.study.methods.split(",") == list(study_countdown.QUICK)


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
