r"""Scaling: train-step and rollout throughput vs sequence length and batch.

One model, built once (a random Qwen2 checkpoint, loaded by both sides):
  * train step (forward + backward + AdamW, GRPO PPO-clip token-mean loss
    over the completion, 1/8 of each row is prompt) vs sequence length at a
    fixed number of rows, and vs rows at a fixed length; this stack's jitted
    step next to transformers + torch eager on the same batch;
  * rollout tokens/s vs batch size (sampling, no early stop): our sampler
    next to transformers' `generate`; on a GPU also the achieved memory
    bandwidth of decoding (weights + KV cache read per step / step time).

Each point prints ours, the reference and their ratio; per-token cost
relative to the smallest point shows where scaling stops being linear.

  python benchmarks/scaling.py --out=benchmarks/results/scaling.json
  python benchmarks/scaling.py --size=0.5B --dtype=bfloat16 \
      --rows=8 --seq_lens=256,512,1024,2048,4096 --batches=1,2,4,8,16 \
      --gen_batches=1,8,32,128      # the GPU run (benchmarks/gpu.sh)
  python benchmarks/scaling.py --tiny   # seconds-long smoke run
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step as ts_bench  # pylint: disable=g-import-not-at-top,wrong-import-position


def _ints(s):
  return [int(x) for x in s.split(",") if x]


def peak_bandwidth() -> tuple[float, str]:
  """(peak HBM bytes/s, source) of the GPU; NaN on CPU.

  NVIDIA datasheets: H100 SXM 3.35 TB/s, H100 PCIe 2.0 TB/s, H200 4.8 TB/s.
  """
  import torch  # pylint: disable=g-import-not-at-top
  if not torch.cuda.is_available():
    return float("nan"), "no GPU"
  name = torch.cuda.get_device_name()
  for key, bw in (("H100 PCIe", 2.0e12), ("H100", 3.35e12),
                  ("H200", 4.8e12)):
    if key in name:
      return bw, f"{name} datasheet"
  return float("nan"), f"{name}: peak unknown"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", default="5M",
                  help=f"one of {list(ts_bench.SIZES)} "
                  f"{list(ts_bench.SIZES_LARGE)}")
  ap.add_argument("--dtype", default="float32",
                  choices=["float32", "bfloat16"])
  ap.add_argument("--rows", type=int, default=2,
                  help="rows of the sequence-length sweep")
  ap.add_argument("--seq_lens", default="256,512,1024,2048,4096")
  ap.add_argument("--batches", default="1,2,4,8,16",
                  help="rows of the batch sweep (at --batch_seq_len)")
  ap.add_argument("--batch_seq_len", type=int, default=256)
  ap.add_argument("--gen_batches", default="1,4,16,64")
  ap.add_argument("--gen_prompt_len", type=int, default=32)
  ap.add_argument("--gen_new_tokens", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--remat", action="store_true",
                  help="recompute each layer in the backward pass (both)")
  ap.add_argument("--no_reference", action="store_true",
                  help="time only this stack")
  ap.add_argument("--tiny", action="store_true")
  ap.add_argument("--out", default="benchmarks/results/scaling.json")
  args = ap.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from jaxrl_ent import rollout  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.rl import train_step as ts  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.rl import state as state_lib  # pylint: disable=g-import-not-at-top

  known = {**ts_bench.SIZES, **ts_bench.SIZES_LARGE, **ts_bench.TINY}
  if args.tiny:
    args.size, args.rows, args.seq_lens, args.batches = "tiny", 1, "16,32", \
        "1,2"
    args.batch_seq_len, args.gen_batches = 16, "1,2"
    args.gen_prompt_len, args.gen_new_tokens, args.repeats = 4, 4, 1
  if args.size not in known:
    sys.exit(f"--size={args.size!r}: known sizes {list(known)}")
  dims = {k: v for k, v in known[args.size].items() if k != "tie"}
  seq_lens, batches = _ints(args.seq_lens), _ints(args.batches)
  gen_batches = _ints(args.gen_batches)
  max_len = max(seq_lens + [args.batch_seq_len,
                            args.gen_prompt_len + args.gen_new_tokens])
  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.set_num_threads(os.cpu_count())
  model, ref = ts_bench.build_pair(known[args.size], max_len=max_len,
                                   dtype=args.dtype, remat=args.remat,
                                   device=dev)
  n_params = model.cfg.num_params()
  graphdef, params, rest = state_lib.split_model(model)
  optimizer = optax.adamw(1e-5, weight_decay=0.01)
  loss_cfg = ts.LossConfig(policy_loss="ppo_clip", agg_mode="token-mean",
                           policy_loss_kwargs=(("clip_ratio_c", 10.0),
                                               ("eps_high", 0.28),
                                               ("eps_low", 0.2)))
  step = ts.make_train_step(graphdef, rest, optimizer, optax.identity(),
                            loss_cfg, donate=True)
  holder = {"state": jax.jit(
      lambda q: state_lib.create(q, optimizer, optax.identity()))(params)}
  torch_opt = torch.optim.AdamW(ref.parameters(), lr=1e-5, weight_decay=0.01)
  rng = np.random.default_rng(0)
  peak, peak_src = ts_bench.peak_flops(args.dtype)

  def train_point(rows, seq):
    p = max(1, seq // 8)
    c = seq - p
    tokens = rng.integers(1, dims["vocab_size"], (rows, seq))
    cmask = np.ones((rows, c), np.float32)
    adv = rng.normal(size=(rows, 1)).astype(np.float32) * cmask
    old = (-rng.uniform(0.5, 6, (rows, c)) * cmask).astype(np.float32)
    batch = ts.RLBatch(
        tokens=jnp.asarray(tokens, jnp.int32),
        positions=jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32),
                                   (rows, seq)),
        attention_mask=jnp.ones((rows, seq), jnp.int32),
        completion_mask=jnp.asarray(cmask, jnp.int32),
        old_logp=jnp.asarray(old), advantages=jnp.asarray(adv),
        ref_logp=jnp.zeros((rows, c), jnp.float32))
    key = jax.random.key(0)

    def ours():
      holder["state"], m = step(holder["state"], batch, key)
      jax.block_until_ready(m)

    start = time.perf_counter()
    ours()
    compile_s = time.perf_counter() - start
    ours_s = min(common.timeit(ours, args.repeats))
    out = {"rows": rows, "seq_len": seq, "tokens": rows * seq,
           "ours_s": ours_s, "ours_compile_s": compile_s,
           "ours_tokens_per_s": rows * seq / ours_s,
           "ours_mfu": ts_bench.step_flops(dims, rows, seq, c) / ours_s / peak}
    if not args.no_reference:
      tt = torch.from_numpy(tokens).to(dev)
      kw = dict(input_ids=tt, attention_mask=torch.ones_like(tt),
                position_ids=torch.arange(seq, device=dev)[None].expand(
                    rows, seq), use_cache=False, logits_to_keep=c + 1)
      old_t = torch.from_numpy(old).to(dev)
      adv_t = torch.from_numpy(np.broadcast_to(adv, (rows, c)).copy()).to(dev)
      mask_t = torch.from_numpy(cmask).to(dev)

      def theirs():
        torch_opt.zero_grad(set_to_none=True)
        logits = ref(**kw).logits[:, :-1]
        loss = ts_bench.torch_grpo_loss(torch, logits, tt[:, p:], old_t,
                                        adv_t, mask_t)
        loss.backward()
        torch_opt.step()
        loss.item()

      theirs()  # Warm-up.
      ref_s = min(common.timeit(theirs, args.repeats))
      out.update(ref_s=ref_s, ref_tokens_per_s=rows * seq / ref_s,
                 ratio=ref_s / ours_s)
    return out

  def gen_point(batch):
    prompts = rng.integers(1, dims["vocab_size"],
                           (batch, args.gen_prompt_len))
    n = args.gen_new_tokens

    def ours(seed):
      o = rollout.generate(model, [list(p) for p in prompts],
                           jax.random.key(seed), max_new_tokens=n,
                           temperature=1.0,
                           prompt_buckets=(args.gen_prompt_len,))
      jax.block_until_ready(o.tokens)

    start = time.perf_counter()
    ours(0)
    compile_s = time.perf_counter() - start
    seeds = iter(range(1, 1000))
    ours_s = min(common.timeit(lambda: ours(next(seeds)), args.repeats))
    # Bytes read per decode step: every weight once (shared by the batch)
    # plus the KV cache (on average half the final length is filled).
    itemsize = 2 if args.dtype == "bfloat16" else 4
    h = dims["hidden_size"] // dims["num_attention_heads"]
    kv = (2 * dims["num_hidden_layers"] * dims["num_key_value_heads"] * h *
          (args.gen_prompt_len + n / 2) * batch * itemsize)
    bytes_per_step = n_params * itemsize + kv
    out = {"batch": batch, "new_tokens": n, "ours_s": ours_s,
           "ours_compile_s": compile_s,
           "ours_tokens_per_s": batch * n / ours_s,
           "ours_decode_bytes_per_s": bytes_per_step * n / ours_s}
    if not args.no_reference:
      ids = torch.from_numpy(prompts).to(dev)

      def theirs():
        with torch.no_grad():
          o = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                           do_sample=True, temperature=1.0, top_p=1.0,
                           top_k=0, max_new_tokens=n, min_new_tokens=n,
                           pad_token_id=0)
        assert o.shape[1] == args.gen_prompt_len + n

      theirs()
      ref_s = min(common.timeit(theirs, args.repeats))
      out.update(ref_s=ref_s, ref_tokens_per_s=batch * n / ref_s,
                 ref_decode_bytes_per_s=bytes_per_step * n / ref_s,
                 ratio=ref_s / ours_s)
    return out

  seq_rows = [train_point(args.rows, s) for s in seq_lens]
  batch_rows = [train_point(b, args.batch_seq_len) for b in batches]
  gen_rows = [gen_point(b) for b in gen_batches]

  def table(points, key, title):
    if not points:  # that sweep was not asked for (e.g. --seq_lens=)
      return
    base = points[0]["ours_s"] / points[0]["tokens"]
    rows = []
    for pt in points:
      rows.append({
          key: pt[key], "tokens": pt["tokens"],
          "ours tok/s": f"{pt['ours_tokens_per_s']:,.0f}",
          "ours s/token vs first": f"{pt['ours_s'] / pt['tokens'] / base:.2f}",
          "ref tok/s": (f"{pt['ref_tokens_per_s']:,.0f}"
                        if "ref_s" in pt else "-"),
          "ratio": f"{pt['ratio']:.2f}x" if "ratio" in pt else "-",
          "MFU ours": (f"{pt['ours_mfu']:.1%}" if pt["ours_mfu"] ==
                       pt["ours_mfu"] else "-")})
    print(f"\n{title}")
    common.print_table(rows, [key, "tokens", "ours tok/s",
                              "ours s/token vs first", "ref tok/s", "ratio",
                              "MFU ours"])

  print(f"\nscaling: {args.size} Qwen2 ({n_params / 1e6:.1f}M params), "
        f"{args.dtype}, jax on {jax.default_backend()}, torch on {dev}; "
        f"times are the best of {args.repeats} after a compile/warm-up "
        "call")
  table(seq_rows, "seq_len", f"train step vs sequence length ({args.rows} "
        "rows; 'ours s/token vs first' > 1 = superlinear)")
  table(batch_rows, "rows", f"train step vs rows (seq_len "
        f"{args.batch_seq_len})")
  bw, bw_src = peak_bandwidth()
  grows = []
  for pt in gen_rows:
    grows.append({
        "batch": pt["batch"],
        "ours tok/s": f"{pt['ours_tokens_per_s']:,.0f}",
        "ref tok/s": (f"{pt['ref_tokens_per_s']:,.0f}" if "ref_s" in pt
                      else "-"),
        "ratio": f"{pt['ratio']:.2f}x" if "ratio" in pt else "-",
        "ours decode GB/s": f"{pt['ours_decode_bytes_per_s'] / 1e9:,.1f}",
        "of peak": (f"{pt['ours_decode_bytes_per_s'] / bw:.1%}"
                    if bw == bw else "-")})
  print(f"\nrollout vs batch (prompt {args.gen_prompt_len}, "
        f"{args.gen_new_tokens} new tokens, sampling)"
        + (f"; peak bandwidth {bw / 1e12:.2f} TB/s ({bw_src})"
           if bw == bw else ""))
  common.print_table(grows, ["batch", "ours tok/s", "ref tok/s", "ratio",
                             "ours decode GB/s", "of peak"])
  if peak == peak:
    print(f"MFU against {peak / 1e12:.0f} TFLOP/s ({peak_src})")
  common.write_json(args.out, {
      "benchmark": "scaling", "machine": common.machine(),
      "size": args.size, "params": n_params, "dtype": args.dtype,
      "torch_device": str(dev), "remat": args.remat, "peak_flops": peak, "peak_bandwidth": bw,
      "seq_sweep": seq_rows, "batch_sweep": batch_rows,
      "rollout_sweep": gen_rows})


if __name__ == "__main__":
  main()
