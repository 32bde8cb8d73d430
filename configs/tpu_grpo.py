r"""GRPO on TPU pod slices: Qwen2.5-0.5B/1.5B/7B and Qwen3-8B, sized per slice.

  python launch/aot_check.py --config=configs/tpu_grpo.py:job=qwen2_5_0_5b_v5e8
  python launch/train.py --config=configs/tpu_grpo.py:job=qwen2_5_7b_v5p16 \
      --config.model_path=/ckpt/Qwen2.5-7B-Instruct \
      --config.data.train_paths=/data/gsm8k/train.jsonl \
      --config.data.eval_paths=/data/gsm8k/test.jsonl --workdir=gs://.../run

`job` picks one of JOBS below (model × topology); `entropy=<method>` picks
the entropy control (`kl_cov` by default, at the Cui et al. ratio 2e-3).
Everything else is `configs/grpo_qwen2_5_0_5b.py` (GSM8K-format JSONL, chat
template, `math` verifier, token-mean PPO clip 0.2/0.28, lr 1e-6).

The model dims are given inline (`config.model`, copied from each
checkpoint's config.json) so `launch/aot_check.py` can compile every program
of the step for the slice without a checkpoint or a TPU; `train.py` still
loads the weights from `model_path` (whose config.json must match).

Memory arithmetic (per chip, N params, bf16 params and AdamW moments, as
`train.py` builds them): params 2N + moments 4N + gradient accumulator 2N +
gradients 2N = 10N bytes, sharded over all chips by FSDP (`embed → fsdp`)
and tensor rules; activations are what the mesh and micro-batch sizes trade.
Every job below passes `aot_check` (the README table holds its numbers);
each entry's comment says what made it fit.
"""

import ml_collections

from configs import common
from configs import grpo_qwen2_5_0_5b
from configs import grpo_tiny

# Dims from the Hugging Face config.json of each checkpoint.
MODELS = {
    "qwen2_5_0_5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=896,
        intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2,
        head_dim=64, tie_word_embeddings=True, rope_theta=1e6,
        max_position_embeddings=32768, rms_norm_eps=1e-6),
    "qwen2_5_1_5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=1536,
        intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2,
        head_dim=128, tie_word_embeddings=True, rope_theta=1e6,
        max_position_embeddings=32768, rms_norm_eps=1e-6),
    "qwen2_5_7b": dict(
        model_type="qwen2", vocab_size=152064, hidden_size=3584,
        intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
        head_dim=128, tie_word_embeddings=False, rope_theta=1e6,
        max_position_embeddings=32768, rms_norm_eps=1e-6),
    "qwen3_8b": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=4096,
        intermediate_size=12288, num_layers=36, num_heads=32, num_kv_heads=8,
        head_dim=128, tie_word_embeddings=False, rope_theta=1e6,
        max_position_embeddings=40960, rms_norm_eps=1e-6),
}

# job -> model, topology, mesh, batch. `prompts` × `n` rows are rolled out
# together; they are split into `mini` train-step calls of `micro`
# micro-batches each. P = prompt bucket, C = completion budget.
JOBS = {
    # 0.5B on v5e-8 (8 × 16 GiB). N = 0.49e9: 10N = 4.9 GB / 8 = 0.6 GB per
    # chip. FSDP over all 8 chips. 64 prompts × 8 = 512 rows of 512 + 512.
    "qwen2_5_0_5b_v5e8": dict(
        model="qwen2_5_0_5b", topology="v5e:2x4",
        mesh={"data": 1, "fsdp": 8, "tensor": 1},
        prompts=64, n=8, mini=4, micro=8, P=512, C=512, remat=True),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, job="qwen2_5_0_5b_v5e8", entropy="kl_cov",
                       runlocal=False)
  if a.job not in JOBS:
    raise ValueError(f"config argument job={a.job!r}; known: {sorted(JOBS)}.")
  job = JOBS[a.job]
  c = grpo_qwen2_5_0_5b.get_config()
  c.job = a.job
  c.topology = job["topology"]
  c.model = ml_collections.ConfigDict(dict(
      MODELS[job["model"]], dtype="bfloat16", param_dtype="bfloat16",
      remat=job["remat"]))
  c.mesh = ml_collections.ConfigDict(job["mesh"])
  c.sharding = ml_collections.ConfigDict({"rules": job.get("rules", {})})
  c.entropy = grpo_tiny.entropy_config("none")
  c.entropy.method = a.entropy
  # Recipe values at scale (entropy_methods.md §2.4): KL-Cov k = 0.2 %,
  # Clip-Cov ratio 2e-4 with covariance band (1, 5).
  c.entropy.ratio = {"kl_cov": 2e-3, "clip_cov": 2e-4}.get(a.entropy, 2e-4)
  c.entropy.coef = 1.0 if a.entropy == "kl_cov" else 0.0
  c.train.prompts_per_step = job["prompts"]
  c.rollout.n_samples = job["n"]
  c.train.num_mini_batches = job["mini"]
  c.loss.num_micro_batches = job["micro"]
  c.data.max_prompt_length = job["P"]
  c.rollout.max_new_tokens = job["C"]
  c.loss.token_chunk = job.get("token_chunk", 512)
  c.loss.vocab_chunk = job.get("vocab_chunk", 8192)
  if a.runlocal:
    raise ValueError("tpu_grpo configs are for TPU slices; use "
                     "configs/grpo_qwen2_5_0_5b.py:runlocal on CPU.")
  return c
