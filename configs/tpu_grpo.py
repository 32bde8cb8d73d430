r"""GRPO on TPU pod slices: Qwen2.5-0.5B/1.5B/7B and Qwen3-8B, sized per slice.

  python launch/aot_check.py --config=configs/tpu_grpo.py:job=qwen2_5_0_5b_v5e8
  python launch/train.py --config=configs/tpu_grpo.py:job=qwen2_5_7b_v5p_16 \
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
    # 1.5B on v4-8 (4 chips × 32 GiB, 1 host). N = 1.544e9: 10N = 15.4 GB /
    # 4 = 3.9 GB per chip. FSDP over the 4 chips (12 heads / 2 KV heads leave
    # no even tensor split worth having at this size). 64 prompts × 8 = 512
    # rows of 512 + 512. Rollout KV cache 2 (k, v) × 28 layers × 2 KV heads ×
    # 128 × 2 B = 28.7 kB/token × 512 × 1024 = 15.0 GB / 4 = 3.8 GB per chip.
    # Log-prob pass, 128 rows per chip, one layer live at a time: f32 scores
    # 128 × 12 heads × 1024² × 4 B = 6.4 GB (+ bf16 probs 3.2 GB). Train: 4
    # calls of 128 rows, 4 micro-batches of 32 (8 per chip); with remat the
    # saved layer inputs are 28 × 8 × 1024 × 1536 × 2 B = 0.7 GB.
    # aot_check: peak 10.79 GiB (log-prob pass) of 32 GiB; prefill 5.13,
    # decode 7.82, train 7.70. Fit as first sized: 32 GiB chips and FSDP over
    # all 4 leave 3× headroom. The log-prob pass runs all 512 rows at once
    # (no micro-batching), so its per-layer attention scores, not the
    # optimizer state, are what grows with prompts_per_step.
    "qwen2_5_1_5b_v4_8": dict(
        model="qwen2_5_1_5b", topology="v4:2x2x1",
        mesh={"data": 1, "fsdp": 4, "tensor": 1},
        prompts=64, n=8, mini=4, micro=4, P=512, C=512, remat=True),
    # 7B on v5p-16 (16 chips × 95 GiB, 4 hosts). N = 7.616e9: 10N = 76 GB /
    # 16 = 4.8 GB per chip. FSDP 4 × tensor 4 (28 heads, 4 KV heads, 18944
    # MLP, 152064 vocab all split by 4): the decode step, which is memory
    # bound, reads 1/4 of the weights per chip instead of all of them.
    # 64 prompts × 8 = 512 rows of 512 + 1024. KV cache 57.3 kB/token × 512 ×
    # 1536 = 45 GB / 16 = 2.8 GB per chip (rows over fsdp, KV heads over
    # tensor). Log-prob pass: 128 rows per chip × 7 heads × 1536² × 4 B =
    # 8.5 GB of f32 scores per layer. Train: 4 calls of 128 rows, 2 micro-
    # batches of 64 (16 per fsdp shard); saved layer inputs 28 × 16 × 1536 ×
    # 3584 × 2 B = 4.9 GB.
    # aot_check: peak 17.64 GiB (train) of 95 GiB; log-prob 15.07, prefill
    # 4.36, decode 7.38. Fit as first sized; what keeps every program small
    # is tensor = 4 (weights, KV heads and vocabulary split 4 ways, so
    # per-chip activations are rows/4 × heads/4) plus remat. Room remains to
    # double prompts_per_step. (AdamW moments are kept in the params' bf16;
    # f32 moments would add 4N / 16 = 1.9 GB per chip.) The embedding and LM
    # head are never whole on a chip: 1/16 each in the compiled train step's
    # arguments, gathered at most to [V/4, D] (README).
    "qwen2_5_7b_v5p_16": dict(
        model="qwen2_5_7b", topology="v5p:2x2x4",
        mesh={"data": 1, "fsdp": 4, "tensor": 4},
        prompts=64, n=8, mini=4, micro=2, P=512, C=1024, remat=True),
    # Qwen3-8B on v5p-64 (64 chips × 95 GiB, 16 hosts). N = 8.191e9: 10N =
    # 82 GB / 64 = 1.3 GB per chip. FSDP 16 × tensor 4 (32 heads, 8 KV heads,
    # 12288 MLP, 151936 vocab split by 4). 128 prompts × 8 = 1024 rows of
    # 512 + 1536 (thinking-length completions). KV cache 2 × 36 × 8 × 128 ×
    # 2 B = 147 kB/token × 1024 × 2048 = 309 GB / 64 = 4.8 GB per chip.
    # Log-prob pass: 64 rows per chip × 8 heads × 2048² × 4 B = 8.6 GB of f32
    # scores per layer. Train: 4 calls of 256 rows, 4 micro-batches of 64 (4
    # per fsdp shard); saved layer inputs 36 × 4 × 2048 × 4096 × 2 B = 2.4 GB.
    # aot_check: peak 21.53 GiB (log-prob pass) of 95 GiB; decode 8.82,
    # prefill 5.55, train 7.08. Fit as first sized: 64 chips leave 0.72 GiB
    # of params + moments per chip, tensor = 4 splits the 8 KV heads of the cache and
    # the attention scores, and remat keeps the train step's activations to
    # layer inputs. Decode is most of the step (1536 × 5.08 ms), which is
    # why the batch is large.
    "qwen3_8b_v5p_64": dict(
        model="qwen3_8b", topology="v5p:4x4x4",
        mesh={"data": 1, "fsdp": 16, "tensor": 4},
        prompts=128, n=8, mini=4, micro=4, P=512, C=1536, remat=True),
    # ---- Reasoning-length jobs (issue 18). The training forward's attention
    # is Pallas splash attention on TPU (`model.attention_impl="auto"`):
    # causal + segment ids, fused backward, [T, S] never in HBM, so what
    # grows with the length is linear: activations R × S × D and the KV
    # cache. (Before it, 512 rows of 1k + 8k needed 313 GiB of log-prob
    # temporaries per chip: the f32 [rows, heads, S, S] scores of a layer.)
    #
    # 7B on v5p-16 at 1k prompt + 8k completion: S = 9216. Mesh as above
    # (FSDP 4 × tensor 4). 32 prompts × 8 = 256 rows (half the 1.5k job's
    # rows for 6× the tokens per row: 2.4M tokens a step). Per chip:
    # params + moments + grads 10N / 16 = 4.8 GB. KV cache 57.3 kB/token ×
    # 256 × 9216 = 135 GB / 16 = 8.5 GB. Log-prob pass, all 256 rows, 64 per
    # fsdp shard: layer carry 64 × 9216 × 3584 × 2 B = 4.2 GB, MLP gate/up
    # 2 × 64 × 9216 × 4736 (18944 / 4) × 2 B = 11.2 GB, attention q/k/v/out
    # ~1.6 GB, no scores. Train: 4 calls of 64 rows, 4 micro-batches of 16
    # (4 rows per fsdp shard); full remat keeps the layer inputs, 28 × 4 ×
    # 9216 × 3584 × 2 B = 7.4 GB, + one layer's recompute (~1.5 GB).
    # aot_check: peak 35.47 GiB (log-prob pass) of 95 GiB; train 20.03,
    # decode 12.65, prefill 9.60; splash kernels in the logp (1) and train
    # (3) programs; roofline 136 s a step, decode 106 s of it.
    "qwen2_5_7b_v5p_16_8k": dict(
        model="qwen2_5_7b", topology="v5p:2x2x4",
        mesh={"data": 1, "fsdp": 4, "tensor": 4},
        prompts=32, n=8, mini=4, micro=4, P=1024, C=8192, remat=True),
    # Qwen3-8B on v5p-64 at 1k + 16k: S = 17408. FSDP 16 × tensor 4. 64
    # prompts × 8 = 512 rows (8.9M tokens a step). Per chip: 10N / 64 =
    # 1.3 GB. KV cache 147 kB/token × 512 × 17408 = 1.31 TB / 64 = 20.5 GB.
    # Log-prob pass, 32 rows per fsdp shard: carry 32 × 17408 × 4096 × 2 B
    # = 4.6 GB, MLP gate/up 2 × 32 × 17408 × 3072 × 2 B = 6.8 GB. Train:
    # 4 calls of 128 rows, 8 micro-batches of 16 (1 row per fsdp shard);
    # saved layer inputs 36 × 1 × 17408 × 4096 × 2 B = 5.1 GB.
    # aot_check: peak 33.90 GiB (log-prob pass) of 95 GiB; decode 23.36,
    # prefill 19.99, train 11.01; splash in logp (1) and train (3);
    # roofline 185 s a step, decode 148 s of it.
    "qwen3_8b_v5p_64_16k": dict(
        model="qwen3_8b", topology="v5p:4x4x4",
        mesh={"data": 1, "fsdp": 16, "tensor": 4},
        prompts=64, n=8, mini=4, micro=8, P=1024, C=16384, remat=True),
    # ---- PPO with a learned critic (issue 21; jaxrl_ent/rl/critic.py).
    # The 0.5B job with GAE and a separate critic model (`critic.kind=
    # "model"`: the policy's decoder from the same checkpoint, f32, plus a
    # value head). Critic params 4N + f32 AdamW moments 8N = 12N = 5.9 GB
    # global, / 8 chips = 0.74 GB per chip on top of the policy's 10N / 8;
    # its update (forward + backward of the f32 trunk per micro-batch, bf16
    # compute) is the `critic_train` program, its value pass over all 512
    # rows `critic_values`.
    "qwen2_5_0_5b_v5e8_ppo": dict(
        model="qwen2_5_0_5b", topology="v5e:2x4",
        mesh={"data": 1, "fsdp": 8, "tensor": 1},
        prompts=64, n=8, mini=4, micro=8, P=512, C=512, remat=True,
        algo="ppo", critic="model"),
    # ---- LoRA / QLoRA on 16 GiB chips (issue 24; jaxrl_ent/models/lora.py).
    # Rank-16 adapters on all seven projections are the only trainable
    # parameters; the base is frozen in bf16 (LoRA) or NF4 (QLoRA), so the
    # 10N bytes of full training become 2N (or ~0.56N) of base + ~10 bytes
    # per adapter parameter. The rollout still holds one merged bf16 copy
    # of the weights (`DecodeWeights`, made once per rollout), which is
    # what bounds the model size per chip under QLoRA.
    #
    # Qwen2.5-1.5B on v5e-1 (Colab-sized: one 16 GiB chip). Base 3.1 GB
    # bf16 (0.9 GB NF4 + 0.47 GB bf16 embedding) + merged decode copy
    # 3.1 GB. 16 prompts × 8 = 128 rows of 256 + 512: KV cache 28.7 kB/token
    # × 128 × 768 = 2.8 GB. Train: 4 calls of 32 rows, 4 micro-batches of 8.
    "qwen2_5_1_5b_lora_v5e1": dict(
        model="qwen2_5_1_5b", topology="v5e:1x1",
        mesh={"data": 1, "fsdp": 1, "tensor": 1},
        prompts=16, n=8, mini=4, micro=4, P=256, C=512, remat=True,
        lora=dict(rank=16, alpha=32.0, quant="none")),
    "qwen2_5_1_5b_qlora_v5e1": dict(
        model="qwen2_5_1_5b", topology="v5e:1x1",
        mesh={"data": 1, "fsdp": 1, "tensor": 1},
        prompts=16, n=8, mini=4, micro=4, P=256, C=512, remat=True,
        lora=dict(rank=16, alpha=32.0, quant="nf4")),
    # Qwen3-8B on v5e-4 (4 × 16 GiB). tensor = 4, not FSDP: the merged
    # decode weights are whole along `embed` (see `DecodeWeights`), so only
    # a tensor split keeps them at 16.4 GB / 4 = 4.1 GB per chip; the bf16
    # base is another 4.1 GB per chip (1.2 GB under NF4). 8 prompts × 8 =
    # 64 rows of 256 + 512: KV cache 147 kB/token × 64 × 768 = 7.2 GB / 4 =
    # 1.8 GB per chip. Train: 4 calls of 16 rows, 2 micro-batches of 8.
    "qwen3_8b_lora_v5e4": dict(
        model="qwen3_8b", topology="v5e:2x2",
        mesh={"data": 1, "fsdp": 1, "tensor": 4},
        prompts=8, n=8, mini=4, micro=2, P=256, C=512, remat=True,
        lora=dict(rank=16, alpha=32.0, quant="none")),
    "qwen3_8b_qlora_v5e4": dict(
        model="qwen3_8b", topology="v5e:2x2",
        mesh={"data": 1, "fsdp": 1, "tensor": 4},
        prompts=8, n=8, mini=4, micro=2, P=256, C=512, remat=True,
        lora=dict(rank=16, alpha=32.0, quant="nf4")),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, job="qwen2_5_0_5b_v5e8", entropy="kl_cov",
                       runlocal=False, algo="")
  if a.job not in JOBS:
    raise ValueError(f"config argument job={a.job!r}; known: {sorted(JOBS)}.")
  job = JOBS[a.job]
  c = grpo_qwen2_5_0_5b.get_config()
  c.job = a.job
  c.topology = job["topology"]
  c.model = ml_collections.ConfigDict(dict(
      MODELS[job["model"]], dtype="bfloat16", param_dtype="bfloat16",
      remat=job["remat"], remat_policy="", attention_impl="auto",
      scan_unroll=1))
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
  # :algo=ppo (or a job's own `algo`): GAE with a learned critic, verl's
  # critic defaults (lr 1e-5, cliprange_value 0.5, no warm-up).
  algo = a.algo or job.get("algo", "grpo")
  if algo not in grpo_tiny.ALGOS:
    raise ValueError(f"config argument algo={algo!r}; known: "
                     f"{grpo_tiny.ALGOS}.")
  if algo == "ppo":
    c.advantage.estimator = "gae"
    c.critic = grpo_tiny.critic_config(kind=job.get("critic", "model"),
                                       lr=1e-5, warmup_steps=0)
  c.lora = common.lora_config(enabled="lora" in job, **job.get("lora", {}))
  if "lora" in job:
    # Adapters start at the base and move only a low-rank subspace: they
    # take a larger learning rate than full fine-tuning's 1e-6.
    c.optim.lr = 1e-5
  if a.runlocal:
    raise ValueError("tpu_grpo configs are for TPU slices; use "
                     "configs/grpo_qwen2_5_0_5b.py:runlocal on CPU.")
  return c
