r"""GRPO on GSM8K-format JSONL with Qwen2.5-0.5B-Instruct (or Qwen3-0.6B).

  python launch/train.py --config=configs/grpo_qwen2_5_0_5b.py \
      --config.model_path=/ckpt/Qwen2.5-0.5B-Instruct \
      --config.data.train_paths=/data/gsm8k/train.jsonl \
      --config.data.eval_paths=/data/gsm8k/test.jsonl \
      --config.entropy.method=kl_cov --workdir=/runs/qwen05_klcov

Each JSONL line is `{"question": ..., "answer": "... #### 42"}` (the GSM8K
layout; `answer` may also be the bare final answer). Prompts go through the
checkpoint's chat template with a system prompt asking for `\boxed{}`; the
`math` verifier accepts `\boxed{}`, `#### x` and `<answer>` formats. Nothing
is downloaded: the checkpoint folder and the data are local.

Recipe follows Cui et al. / DAPO where it applies (entropy_methods.md §2.4):
token-mean loss, clip 0.2/0.28, dual clip 10, no KL, constant lr 1e-6,
grad clip 1; 8 samples per prompt. Variants: `:entropy=<preset>` as in
`configs/grpo_tiny.py`, `:runlocal` (CPU-sized, used by the tests).

Memory (one 0.5B policy, bf16 params + f32 Adam moments ≈ 0.5e9 × (2+8) B =
5 GB, + f32 grads 2 GB): fits one 16 GB v5e chip with fsdp over the slice;
on v5e-8 use mesh fsdp=8 and 8 micro-batches of 64 rows × (512 + 512).
"""

import ml_collections

from configs import common
from configs import grpo_tiny

SYSTEM_PROMPT = ("Please reason step by step, and put your final answer "
                 "within \\boxed{}.")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, entropy="none", runlocal=False, steps=0, seed=0)
  c = grpo_tiny.get_config(f"entropy={a.entropy},seed={a.seed}")
  c.model_path = ""  # Required: a local HF folder.
  c.model.dtype = "bfloat16"
  c.model.remat = True
  c.sft.steps = 0
  c.data.task = ""
  c.data.task_kwargs = {}
  c.data.train_paths = ""
  c.data.eval_paths = ""
  c.data.prompt_field = "question"
  c.data.answer_field = "answer"
  c.data.id_field = ""
  c.data.chat_template = True
  c.data.system_prompt = SYSTEM_PROMPT
  c.data.max_prompt_length = 512
  c.rollout.max_new_tokens = 512
  c.rollout.n_samples = 8
  # 512-token budgets with a long tail of lengths: continuous batching over
  # a quarter of the rows as decode slots refills a slot as soon as its row
  # stops (same completions as the static batch for the same keys).
  c.rollout.continuous = True
  c.reward.spec = "math"
  c.loss.num_micro_batches = 8
  c.loss.vocab_chunk = 8192
  c.optim.lr = 1e-6
  c.train.steps = 500
  c.train.prompts_per_step = 64
  c.train.num_mini_batches = 4
  c.eval.every = 50
  c.eval.num_examples = 512
  c.eval.batch_size = 64
  c.eval.pass_k = 4
  c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
  if a.runlocal:
    c.model.dtype = "float32"
    c.model.remat = False
    c.data.max_prompt_length = 128
    c.rollout.max_new_tokens = 8
    c.rollout.n_samples = 2
    c.rollout.continuous = False
    c.loss.num_micro_batches = 2
    c.loss.vocab_chunk = None
    c.train.steps = 2
    c.train.prompts_per_step = 2
    c.train.num_mini_batches = 1
    c.eval.num_examples = 4
    c.eval.batch_size = 4
    c.eval.pass_k = 2
    c.eval.every = 2
    c.reward.backend = "inline"
    c.tensorboard = False
  if a.steps:
    c.train.steps = a.steps
  return c
