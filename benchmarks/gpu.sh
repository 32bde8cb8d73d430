#!/usr/bin/env bash
# The accelerator run: the side-by-side benchmarks at Qwen2.5-0.5B sizes on
# one NVIDIA GPU, in about 5 minutes. The train steps rematerialise each
# layer on both sides (--remat): without it our scan keeps every layer's
# [rows, heads, S, S] attention scores for the backward pass (42 GiB at 8 x
# 1024 tokens, more than the card has beside torch's copy of the model).
#
#   bash benchmarks/gpu.sh [OUT_DIR]     # default benchmarks/results/gpu
#   bash benchmarks/gpu.sh /tmp/g --smoke   # every step at --tiny sizes (CPU)
#
# Needs on that machine: JAX with CUDA, PyTorch with CUDA, transformers, flax,
# optax, chex and ml_collections (no internet needed; nothing is downloaded:
# every checkpoint is a random one written in-process). Runs from the
# repository root without installing the package (PYTHONPATH).
#
#  1. train step, bf16, 8 rows x 1024 tokens: ours vs transformers + torch
#     eager, tokens/s, ratio and MFU against the card's bf16 peak;
#  2. token-statistics memory at 0.5B dims (XLA's compiled memory analysis
#     on this GPU backend), chunked vs naive;
#  3. controller overhead at 0.5B, bf16;
#  4. scaling: train step vs sequence length and rows, rollout tokens/s vs
#     batch with the achieved decode memory bandwidth against the peak.
# Each step has its own time limit, so one slow part cannot sink the others.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/gpu}
smoke=()
if [ "${2:-}" = "--smoke" ]; then smoke=(--tiny); fi
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# JAX and torch share the GPU in one process: XLA must not preallocate 75%.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export TOKENIZERS_PARALLELISM=false
log="$out/gpu_log.txt"
: >"$log"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
    --format=csv
  "$py" - <<'PY'
import flax, jax, torch, transformers
print("jax", jax.__version__, jax.devices())
print("torch", torch.__version__, torch.cuda.get_device_name()
      if torch.cuda.is_available() else "no CUDA")
print("transformers", transformers.__version__, "flax", flax.__version__)
PY
} 2>&1 | tee -a "$log"

step() {
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $py $*" | tee -a "$log"
  local t0=$SECONDS
  timeout "$limit" "$py" "$@" "${smoke[@]}" 2>&1 | grep --line-buffered -v \
    "Writing model shards\|Loading weights" | tee -a "$log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" \
    | tee -a "$log"
}

step train_step 100 benchmarks/train_step.py --sizes=0.5B --dtype=bfloat16 \
  --remat --rows=8 --seq_len=1024 --prompt_len=128 --rounds=2 --repeats=3 \
  --out="$out/train_step_gpu.json"
step token_stats_memory 40 benchmarks/token_stats_memory.py \
  --out="$out/token_stats_memory_gpu.json"
step controllers 120 benchmarks/controllers.py --size=0.5B --dtype=bfloat16 \
  --rows=4 --prompt_len=128 --completion_len=896 \
  --methods=none,entropy_bonus,clip_cov,kl_cov --repeats=5 --rounds=2 \
  --out="$out/controllers_gpu.json"
step scaling 160 benchmarks/scaling.py --size=0.5B --dtype=bfloat16 \
  --remat --rows=2 --seq_lens=256,1024,4096 --batches=1,4,16 \
  --batch_seq_len=512 \
  --gen_batches=1,16,64 --gen_new_tokens=128 --repeats=1 \
  --out="$out/scaling_gpu.json"
echo "total $SECONDS s" | tee -a "$log"
