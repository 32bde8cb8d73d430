r"""The comparison study on the tiny task: every entropy control, 3 seeds.

  python launch/compare.py --config=configs/compare_tiny.py \
      --workdir=/tmp/compare_tiny
  python launch/compare.py --config=configs/compare_tiny.py:runlocal \
      --workdir=/tmp/compare_smoke       # 2 methods × 1 seed × 2 steps

The base run is the README's main job (`configs/grpo_tiny.py`: a ~0.4M
parameter policy, `digits` reversal), cut to fit the budget of a 2-core CPU
(14 variants × 3 seeds, two runs at a time: ~35 min on a quiet machine,
see the README): 16 prompts × 8 samples per step, one mini-batch, 120
steps. Over that span GRPO's entropy falls from ~1.3 to ~0.5 nats, the
collapse the controls are meant to slow. All methods share a symmetric PPO
clip (0.2/0.2); only the `clip_higher` variants raise the upper clip to
0.28 (DAPO).

Each variant is a partial config merged onto the base (`entropy` and `loss`
blocks). `entropy_bonus_*` sweeps the constant coefficient α, the check of
entropy_methods.md §1.5 (a constant bonus biases the optimum, so greedy
accuracy should fall as α grows). The annealed variants decay their
coefficient as c₀/(1 + t/τ) (τ = 60 steps), the unbiased-in-the-limit form
of §1.6.
"""

import ml_collections

from configs import common
from configs import grpo_tiny

# c_t = c_0 / (1 + t/τ): a third of c_0 at the last of 120 steps. (The
# main job's τ = 10 decays too fast for this budget: a pilot run showed the
# annealed covariance controls already negligible by step 40.)
_ANNEAL = {"anneal_tau": 60.0, "anneal_power": 1.0}

# With one mini-batch per step the single update is on-policy (the old
# log-probs are recomputed, so every ratio is exactly 1) and no clip ever
# binds: clip-higher is then GRPO bit for bit. The `_2mb` pair splits each
# step into two mini-batches, so the second update is off-policy and the
# upper clip can matter.
_TWO_MB = {"train": {"num_mini_batches": 2}}

# name -> (entropy preset of grpo_tiny, entropy field overrides, loss
# field overrides[, other blocks' overrides]).
VARIANTS = {
    "grpo": ("none", {}, {}),
    "clip_higher": ("none", {}, {"clip_eps_high": 0.28}),
    "entropy_bonus_1e-3": ("entropy_bonus", {"coef": 1e-3}, {}),
    "entropy_bonus_1e-2": ("entropy_bonus", {"coef": 1e-2}, {}),
    "entropy_bonus_3e-2": ("entropy_bonus", {"coef": 3e-2}, {}),
    "entropy_bonus_annealed": ("entropy_bonus_annealed", _ANNEAL, {}),
    "clip_cov": ("clip_cov", {}, {}),
    "clip_cov_annealed": ("clip_cov_annealed", _ANNEAL, {}),
    "kl_cov": ("kl_cov", {}, {}),
    "kl_cov_annealed": ("kl_cov_annealed", _ANNEAL, {}),
    "high_entropy_tokens": ("high_entropy_tokens", {}, {}),
    "adaptive_entropy": ("adaptive_entropy", {}, {}),
    "grpo_2mb": ("none", {}, {}, _TWO_MB),
    "clip_higher_2mb": ("none", {}, {"clip_eps_high": 0.28}, _TWO_MB),
}


def variant(name: str) -> ml_collections.ConfigDict:
  preset, entropy_overrides, loss_overrides, *other = VARIANTS[name]
  e = grpo_tiny.entropy_config(preset)
  e.update(entropy_overrides)
  return ml_collections.ConfigDict({"entropy": e.to_dict(),
                                    "loss": dict(loss_overrides),
                                    **(other[0] if other else {})})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, runlocal=False, seeds=3, steps=0, workers=2)
  base = grpo_tiny.get_config("runlocal" if a.runlocal else None)
  base.loss.clip_eps_high = 0.2
  base.checkpoint.every = 40
  base.checkpoint.keep = 1
  base.tensorboard = False
  if not a.runlocal:
    # The study's warm start stays the one its README numbers were measured
    # with (60 steps on right answers only), not the main job's imperfect
    # demonstrator (issue #20); the study's redesign (#17) may revisit it.
    base.sft.steps = 60
    base.sft.demo_accuracy = 1.0
    base.train.steps = 120
    base.train.prompts_per_step = 16
    base.train.num_mini_batches = 1
    base.eval.every = 20
    base.eval.num_examples = 256
  if a.steps:
    base.train.steps = a.steps

  c = ml_collections.ConfigDict()
  c.base = base
  c.study = ml_collections.ConfigDict()
  # Comma-separated, so `--config.study.methods=grpo,clip_cov` selects.
  c.study.methods = ("grpo,clip_cov" if a.runlocal
                     else ",".join(VARIANTS))
  c.study.seeds = ",".join(str(s) for s in range(1 if a.runlocal
                                                 else a.seeds))
  # Runs that differ only in seed and hyperparameters (one method's seeds,
  # GRPO and clip-higher, the α values of one bonus) run as replicas of one
  # program (jaxrl_ent/train/replicas.py); False = one run at a time.
  c.study.vectorize = True
  # Without vectorize: runs in parallel subprocesses (0 = sequentially in
  # this process).
  c.study.workers = 0 if a.runlocal else a.workers
  # The share of steps at the end over which "final entropy" is averaged.
  c.study.final_fraction = 0.1
  c.variants = ml_collections.ConfigDict(
      {name: variant(name) for name in VARIANTS})
  return c
