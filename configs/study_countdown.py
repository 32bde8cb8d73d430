r"""The study redesigned to separate the methods (issue #17): countdown,
four updates per rollout, 16 paired seeds.

  python launch/compare.py --config=configs/study_countdown.py \
      --workdir=/tmp/study_countdown
  python launch/compare.py --config=configs/study_countdown.py:quick \
      --workdir=/tmp/study_quick        # same code path, a few minutes
  python launch/compare.py --config=configs/study_countdown.py:smoke \
      --workdir=/tmp/study_smoke        # the test suite's smoke run

Why this set-up (what the first study, `configs/compare_tiny.py`, lacked):
- Many correct answers. Countdown (reach the target from three numbers
  1–9, each at most once, with + - * / and parentheses) accepts any
  expression that evaluates to the target, so an entropy-preserving policy
  has something to win: after the warm start (300 supervised steps on one
  random solution per prompt) greedy accuracy is ~0.04, pass@1 ~0.03 and
  pass@16 ~0.33 on 512 held-out prompts.
- Off-policy updates. Each rollout is split into four mini-batches, so the
  second to fourth updates see ratios ≠ 1: the clip can bind and KL-Cov's
  `|logp − old_logp|` penalty has a gradient (the report gives the share of
  steps on which each happens).
- Paired seeds. Every run shares one warm-started policy (`sft.seed=0`), so
  seed k differs between methods only in the method: the same rollout keys
  and data order; paired differences cancel the seed's own effect.
- Statistics over ≥ 16 seeds (IQM, stratified bootstrap intervals,
  probability of improvement, paired Wilcoxon; jaxrl_ent/study/report.py).
  All seeds of one method (and methods that differ only in a coefficient,
  e.g. the three bonus α) run as replicas of one compiled program.

Budget: a 2-core CPU cannot run the published regime (several thousand
steps of a 7B model); the variant list, steps and batch are cut so that the
whole study finishes in about an hour there (README, "What the study
shows", gives the measured time). Covariance controls: the ratios are
chosen for this batch size (`RATIOS`), Clip-Cov's band from the logged
score quantiles (`CLIP_COV_BAND`).
"""

import ml_collections

from configs import common
from configs import grpo_tiny

# c_t = c_0 / (1 + t/τ): a fifth of c_0 by the last of 80 steps.
_ANNEAL = {"anneal": "inverse_power", "anneal_tau": 20.0, "anneal_power": 1.0}
# Clip-Cov's open band (lb, ub) on the covariance score. The 7B recipe's
# (1, 5) was set on 8k-token answers; on this task a pilot GRPO run put the
# per-step median score near 0, q99 ≈ 1.0 and the max at 1.4–6.6, so (1, 5)
# would leave almost no token eligible on most steps. (0.1, 5) keeps the
# upper tail (roughly the top 5 %) eligible.
CLIP_COV_BAND = {"clip_cov_lb": 0.1, "clip_cov_ub": 5.0}
# A micro-batch here holds ~80 completion tokens (8 rows of ~10), and the
# controls act on max(1, ⌊ratio · n⌋) tokens: every ratio below 1/80 —
# the recipes' 2e-4 and 2e-3 included — touches exactly one token. So the
# sweep is 2e-2 (that one token) and 1e-1 (about eight).
RATIOS = {"2e-2": 2e-2, "1e-1": 1e-1}

# name -> (entropy preset of grpo_tiny, entropy overrides, loss overrides).
VARIANTS = {
    "grpo": ("none", {}, {}),
    "clip_higher": ("none", {}, {"clip_eps_high": 0.28}),
    "entropy_bonus_1e-3": ("entropy_bonus", {"coef": 1e-3}, {}),
    "entropy_bonus_1e-2": ("entropy_bonus", {"coef": 1e-2}, {}),
    "entropy_bonus_3e-2": ("entropy_bonus", {"coef": 3e-2}, {}),
    "entropy_bonus_annealed": ("entropy_bonus", {"coef": 1e-2, **_ANNEAL},
                               {}),
    **{f"clip_cov_{n}": ("clip_cov", {"ratio": r, **CLIP_COV_BAND}, {})
       for n, r in RATIOS.items()},
    "clip_cov_annealed": ("clip_cov", {"ratio": 1e-1, **CLIP_COV_BAND,
                                       **_ANNEAL}, {}),
    **{f"kl_cov_{n}": ("kl_cov", {"ratio": r, "coef": 1.0}, {})
       for n, r in RATIOS.items()},
    "kl_cov_annealed": ("kl_cov", {"ratio": 1e-1, "coef": 1.0, **_ANNEAL},
                        {}),
    "adaptive_entropy": ("adaptive_entropy", {}, {}),
    "high_entropy_tokens": ("high_entropy_tokens", {}, {}),
}
# What the default study runs within its CPU budget (~1 hour on 2 cores):
# the methods the claims test, each at 16 seeds. The others are one flag
# away (--config.study.methods=...,adaptive_entropy,high_entropy_tokens).
DEFAULT = ("grpo", "clip_higher", "entropy_bonus_1e-3", "entropy_bonus_1e-2",
           "entropy_bonus_3e-2", "entropy_bonus_annealed", "clip_cov_1e-1",
           "clip_cov_annealed", "kl_cov_1e-1", "kl_cov_annealed")
# The :quick variant: the claims' methods only.
QUICK = ("grpo", "entropy_bonus_1e-2", "entropy_bonus_3e-2",
         "entropy_bonus_annealed", "clip_cov_annealed", "kl_cov_annealed")


def variant(name: str) -> ml_collections.ConfigDict:
  preset, entropy_overrides, loss_overrides = VARIANTS[name]
  e = grpo_tiny.entropy_config(preset)
  e.update(entropy_overrides)
  return ml_collections.ConfigDict({"entropy": e.to_dict(),
                                    "loss": dict(loss_overrides)})


def base_config(steps: int) -> ml_collections.ConfigDict:
  """The run every variant is merged onto."""
  base = grpo_tiny.get_config()
  base.data.task = "countdown"
  base.data.task_kwargs = {"num_numbers": 3, "max_number": 9,
                           "max_target": 50}
  base.data.max_prompt_length = 48
  base.model.max_position_embeddings = 80
  base.rollout.max_new_tokens = 16
  base.sft.demo_accuracy = 1.0  # Demonstrations: one right expression each.
  base.sft.seq_len = 64
  base.sft.seed = 0  # One warm start shared by every run: paired seeds.
  base.loss.clip_eps_high = 0.2  # Symmetric; clip_higher raises it.
  # Four updates per rollout: at 5e-4 a pilot's pass@16 fell 0.37 → 0.10
  # in 40 steps; at 1e-4 entropy fell only 0.62 → 0.46 in 80.
  base.optim.lr = 3e-4
  base.train.steps = steps
  base.train.prompts_per_step = 4
  base.train.num_mini_batches = 4
  base.train.measure_every = 10
  base.eval.every = steps  # Held-out numbers at the start and the end.
  base.eval.num_examples = 512
  base.eval.batch_size = 256
  base.eval.num_samples = 16
  base.eval.pass_k = 16
  base.checkpoint.every = 50
  base.checkpoint.keep = 1
  base.tensorboard = False
  return base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, quick=False, smoke=False, seeds=16, steps=0)
  c = ml_collections.ConfigDict()
  if a.smoke:
    base = grpo_tiny.get_config("runlocal")
    base.data.task = "countdown"
    base.data.task_kwargs = {"num_numbers": 3, "max_number": 9,
                             "max_target": 50}
    base.data.max_prompt_length = 48
    base.model.max_position_embeddings = 64
    base.sft.seed = 0
    base.sft.demo_accuracy = 1.0
    base.sft.seq_len = 64
    base.train.num_mini_batches = 2
    base.eval.num_samples = 4
    base.eval.pass_k = 4
    base.tensorboard = False
    methods, seeds = ("grpo", "kl_cov_annealed"), 2
  elif a.quick:
    base = base_config(a.steps or 40)
    base.eval.num_examples = 128
    methods, seeds = QUICK, 4
  else:
    base = base_config(a.steps or 80)
    methods, seeds = DEFAULT, a.seeds
  if a.steps:
    base.train.steps = a.steps
    base.eval.every = a.steps
  c.base = base
  c.study = ml_collections.ConfigDict()
  c.study.methods = ",".join(methods)
  c.study.seeds = ",".join(str(s) for s in range(seeds))
  c.study.vectorize = True
  c.study.workers = 0
  c.study.final_fraction = 0.1
  c.variants = ml_collections.ConfigDict(
      {name: variant(name) for name in VARIANTS})
  return c
