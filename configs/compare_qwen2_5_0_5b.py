r"""The comparison study at Qwen2.5-0.5B scale on GSM8K, for a TPU slice.

  python launch/compare.py --config=configs/compare_qwen2_5_0_5b.py \
      --config.base.model_path=/ckpt/Qwen2.5-0.5B-Instruct \
      --config.base.data.train_paths=/data/gsm8k/train.jsonl \
      --config.base.data.eval_paths=/data/gsm8k/test.jsonl \
      --workdir=/runs/compare_qwen05
  # on every worker of a pod slice: launch/tpu_pod.sh --job=compare ...

The base run is `configs/grpo_qwen2_5_0_5b.py` (chat template, `math`
verifier, token-mean loss, dual clip 10, lr 1e-6, 8 samples per prompt, 64
prompts per step, fsdp over the slice; its docstring has the memory
arithmetic: 0.5B in bf16 with f32 Adam moments fits one 16 GB v5e chip with
fsdp=8), 300 steps. Coefficients are the published recipes' (entropy_methods
.md §2.4): Clip-Cov ratio 2e-4 with bounds (1, 5), KL-Cov ratio 2e-3 with
β = 1, the entropy bonus swept over α ∈ {1e-4, 1e-3, 5e-3}, adaptive entropy
with target 0.2. Runs go one after the other in the launching process
(`study.workers=0`): one process holds the TPU, and runs of one method then
reuse its compiled programs. A run that is preempted resumes from its
checkpoint on the next launch; finished runs are skipped.
"""

import ml_collections

from configs import common
from configs import grpo_qwen2_5_0_5b
from configs import grpo_tiny

_ANNEAL = {"anneal": "inverse_power", "anneal_tau": 100.0,
           "anneal_power": 1.0}
_CLIP_COV = {"ratio": 2e-4, "clip_cov_lb": 1.0, "clip_cov_ub": 5.0}
_KL_COV = {"ratio": 2e-3, "coef": 1.0}

# name -> (entropy method, entropy field overrides, loss field overrides).
VARIANTS = {
    "grpo": ("none", {}, {}),
    "clip_higher": ("none", {}, {"clip_eps_high": 0.28}),
    "entropy_bonus_1e-4": ("entropy_bonus", {"coef": 1e-4}, {}),
    "entropy_bonus_1e-3": ("entropy_bonus", {"coef": 1e-3}, {}),
    "entropy_bonus_5e-3": ("entropy_bonus", {"coef": 5e-3}, {}),
    "entropy_bonus_annealed": ("entropy_bonus", {"coef": 5e-3, **_ANNEAL},
                               {}),
    "clip_cov": ("clip_cov", _CLIP_COV, {}),
    "clip_cov_annealed": ("clip_cov", {**_CLIP_COV, **_ANNEAL}, {}),
    "kl_cov": ("kl_cov", _KL_COV, {}),
    "kl_cov_annealed": ("kl_cov", {**_KL_COV, **_ANNEAL}, {}),
    "high_entropy_tokens": ("high_entropy_tokens", {"quantile": 0.2}, {}),
    "adaptive_entropy": ("adaptive_entropy",
                         {"target": 0.2, "rule": "bang_bang", "delta": 1e-4,
                          "coef_max": 5e-3}, {}),
}


def variant(name: str) -> ml_collections.ConfigDict:
  method, entropy_overrides, loss_overrides = VARIANTS[name]
  e = grpo_tiny.entropy_config("none")
  e.method = method
  e.update(entropy_overrides)
  return ml_collections.ConfigDict({"entropy": e.to_dict(),
                                    "loss": dict(loss_overrides)})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, runlocal=False, seeds=3, steps=0)
  base = grpo_qwen2_5_0_5b.get_config("runlocal" if a.runlocal else None)
  base.loss.clip_eps_high = 0.2  # Symmetric for all but clip_higher.
  base.train.steps = a.steps or (base.train.steps if a.runlocal else 300)
  base.checkpoint.every = 25
  base.checkpoint.keep = 2
  c = ml_collections.ConfigDict()
  c.base = base
  c.study = ml_collections.ConfigDict(dict(
      methods="grpo,clip_cov" if a.runlocal else ",".join(VARIANTS),
      seeds=",".join(str(s) for s in range(1 if a.runlocal else a.seeds)),
      workers=0, final_fraction=0.1,
      # One 0.5B run at a time fills a slice; replicas are for small policies.
      vectorize=False))
  c.variants = ml_collections.ConfigDict(
      {name: variant(name) for name in VARIANTS})
  return c
