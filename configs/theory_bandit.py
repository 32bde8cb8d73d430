r"""Theory lab: softmax bandits and tabular MDPs with exact gradients (T1–T5).

  python launch/theory.py --config=configs/theory_bandit.py \
      --workdir=/tmp/theory

Variants, passed after a colon: `:tiny` (alias `:runlocal`) shrinks seeds and
steps so the whole lab runs in seconds; the tests use it.

  python launch/theory.py --config=configs/theory_bandit.py:tiny \
      --workdir=/tmp/theory_tiny

Claims checked (entropy_methods.md §1): T1 first/second-order entropy-change
error orders; T2 PG / NPG first-order predictions and the ER entropy push;
T3 ER fixed point softmax(r/α) and its gap (bandit and finite-horizon MDP);
T4 constant vs annealed ER / Clip-Cov / KL-Cov and dense vs sparse bias;
T5 Clip-Cov's fixed-point shift for constant vs annealed selection fraction.
"""

import ml_collections

EXPERIMENTS = ("T1", "T2", "T3", "T4", "T5")


def _parse_arg(arg):
  """Parses `"tiny"`, `"runlocal"` or `"size=tiny"` into a dict."""
  out = {"tiny": False}
  for part in filter(None, (arg or "").split(",")):
    key, _, value = part.partition("=")
    if key in ("tiny", "runlocal"):
      out["tiny"] = value.lower() not in ("0", "false")
    elif key == "size":
      out["tiny"] = value == "tiny"
    else:
      raise ValueError(f"unknown config argument {part!r}")
  return out


def get_config(arg=None):
  """Returns the theory-lab config; see the module docstring."""
  tiny = _parse_arg(arg)["tiny"]
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.experiments = EXPERIMENTS
  config.plots = True

  config.t1 = ml_collections.ConfigDict(dict(
      num_seeds=4 if tiny else 16, num_actions=8, logit_scale=2.0,
      eta_min=1e-4, eta_max=3e-3, num_etas=5 if tiny else 9, slope_tol=0.1))
  config.t2 = ml_collections.ConfigDict(dict(
      num_seeds=8 if tiny else 64, num_actions=8, logit_scale=2.0, eta=1e-2,
      alpha=0.1, eta_min=1e-4, eta_max=3e-3, num_etas=3 if tiny else 5,
      rel_tol=0.05, slope_tol=0.1))
  config.t3 = ml_collections.ConfigDict(dict(
      num_seeds=2 if tiny else 8, num_actions=10,
      alphas=(0.1, 0.3, 1.0) if tiny else (0.05, 0.1, 0.2, 0.5, 1.0),
      lr_scale=1.0, num_steps=800 if tiny else 4000, two_action_gap=0.5,
      mdp_states=3 if tiny else 4, mdp_actions=3,
      mdp_horizon=3 if tiny else 5,
      mdp_alphas=(0.2, 1.0) if tiny else (0.1, 0.2, 0.5, 1.0),
      mdp_lr_scale=2.0, mdp_steps=800 if tiny else 6000,
      tol=1e-2 if tiny else 2e-3))
  # Annealing schedule shared by T4 and T5: coef_t = coef0 (1 + t/τ)^−p.
  config.t4 = ml_collections.ConfigDict(dict(
      num_seeds=2 if tiny else 8, num_actions=10,
      num_steps=600 if tiny else 3000, num_inner=4, lr=1.0, er_alpha=0.1,
      clip_cov_rho=0.1, clip_cov_band=(0.0, float("inf")), kl_cov_frac=0.05,
      kl_cov_beta=1.0, tau=10.0, power=1.0, tol=1e-2 if tiny else 1e-3))
  config.t5 = ml_collections.ConfigDict(dict(
      num_seeds=2 if tiny else 8, num_actions=10,
      num_steps=600 if tiny else 3000, lr=1.0, anchor=0.2,
      rhos=(0.02, 0.05, 0.1) if tiny else (0.01, 0.02, 0.05, 0.1, 0.2),
      tau=10.0, power=1.0, kl_cov_frac=0.05, kl_cov_beta=1.0, kl_inner=4,
      tol=1e-2 if tiny else 1e-3, edge_margin=1e-6))
  return config
