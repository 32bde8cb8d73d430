r"""Long sequences: train-step memory vs length, and CPU speed vs PyTorch.

(a) --memory: XLA's compiled memory analysis (nothing runs) of the RL train
    step (`rl.train_step.make_train_step`: forward, one backward, AdamW) at
    Qwen2.5-0.5B dims, one row of S = 2k, 8k, 32k tokens, bf16, full remat,
    with the blockwise kernel (what `attention_impl="auto"` picks off
    TPU/GPU) and the naive [T, S] attention beside it. Compiled for the CPU
    backend of this machine (the TPU path is splash; see the AOT table).
    Goal: temporaries grow at most linearly, temp(32k) / temp(8k) <= 4.5.
(b) --speed: CPU train step, ours vs transformers + torch eager (SDPA), the
    5M Qwen2 of benchmarks/train_step.py (model pair from its `build_pair`),
    2 rows × S = 256, 1024, 4096 (1/8 prompt). Rounds alternate ours/theirs
    (each side's timed call after one untimed call);
    prints `train step ours/torch at S=<S>: <x>x` (median over calls) and
    the cores other processes used meanwhile (/proc/stat; ~0 = quiet).

(c) --packing: the train step (5M Qwen2, ours only) on a rollout-shaped
    batch, R = 16 rows of S = 64 + C tokens, prompts of 16-64 tokens and
    completion lengths geometric with mean C/8 capped at C (the long tail
    of reasoning RL), unpacked vs packed (`train.pack_fraction` = the rows
    first-fit needs / R, rows of S tokens). Prints the padding fraction
    before/after and `packing at S=<S>: train step unpacked/packed = <x>x`.

(d) --gemm: the step's two main matmul shapes alone (the blockwise kernel's
    block-pair product and the MLP's), XLA vs torch GFLOP/s: what bounds
    (b) on this CPU.

  python benchmarks/long_context.py --memory --speed --packing --gemm \
      --out=benchmarks/results/long_context.json
  python benchmarks/long_context.py --tiny   # seconds-long smoke run
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step as ts_bench  # pylint: disable=g-import-not-at-top,wrong-import-position

GiB = 1024**3


def _state_lib():
  try:
    from jaxrl_ent.rl import state  # pylint: disable=g-import-not-at-top
  except ImportError:
    from jaxrl_ent.train import state  # pylint: disable=g-import-not-at-top
  return state


def _loss_cfg(ts):
  return ts.LossConfig(policy_loss="ppo_clip", agg_mode="token-mean",
                       policy_loss_kwargs=(("clip_ratio_c", ts_bench.CLIP_C),
                                           ("eps_high", ts_bench.EPS_HIGH),
                                           ("eps_low", ts_bench.EPS_LOW)),
                       token_chunk=1024)


def _batch(ts, rows, seq, abstract, rng=None, vocab=4096):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  c = seq - max(1, seq // 8)
  shapes = dict(tokens=((rows, seq), jnp.int32),
                positions=((rows, seq), jnp.int32),
                attention_mask=((rows, seq), jnp.int32),
                completion_mask=((rows, c), jnp.int32),
                old_logp=((rows, c), jnp.float32),
                advantages=((rows, c), jnp.float32),
                ref_logp=((rows, c), jnp.float32))
  if abstract:
    return ts.RLBatch(**{k: jax.ShapeDtypeStruct(*v)
                         for k, v in shapes.items()})
  cmask = np.ones((rows, c), np.int32)
  return ts.RLBatch(
      tokens=jnp.asarray(rng.integers(1, vocab, (rows, seq)), jnp.int32),
      positions=jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32),
                                 (rows, seq)),
      attention_mask=jnp.ones((rows, seq), jnp.int32),
      completion_mask=jnp.asarray(cmask),
      old_logp=jnp.asarray(-rng.uniform(0.5, 6, (rows, c)), jnp.float32),
      advantages=jnp.asarray(rng.normal(size=(rows, 1)) * cmask, jnp.float32),
      ref_logp=jnp.zeros((rows, c), jnp.float32))


def memory(seq_lens, dims_name, impls):
  """Compiled temp bytes of the train step per (impl, S)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.models import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.models import hf_io  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.rl import train_step as ts  # pylint: disable=g-import-not-at-top
  state_lib = _state_lib()
  d = {**ts_bench.SIZES_LARGE, **ts_bench.SIZES, **ts_bench.TINY}[dims_name]
  out = []
  for impl in impls:
    for seq in seq_lens:
      cfg = config_lib.ModelConfig(
          model_type="qwen2", vocab_size=d["vocab_size"],
          hidden_size=d["hidden_size"], intermediate_size=d[
              "intermediate_size"], num_layers=d["num_hidden_layers"],
          num_heads=d["num_attention_heads"],
          num_kv_heads=d["num_key_value_heads"],
          head_dim=d["hidden_size"] // d["num_attention_heads"],
          qkv_bias=True, tie_word_embeddings=d.get("tie", False),
          max_position_embeddings=max(seq_lens), dtype=jnp.bfloat16,
          param_dtype=jnp.bfloat16, remat=True, attention_impl=impl)
      graphdef, abs_model = hf_io.abstract_model(cfg)
      graphdef, params, rest = state_lib.split_model(nnx.merge(graphdef,
                                                               abs_model))
      optimizer = optax.adamw(1e-6)
      abs_state = jax.eval_shape(
          lambda p: state_lib.create(p, optimizer, optax.identity()), params)
      step = ts.make_train_step(graphdef, rest, optimizer, optax.identity(),
                                _loss_cfg(ts))
      start = time.perf_counter()
      compiled = step.trace(abs_state, _batch(ts, 1, seq, True),
                            jax.eval_shape(lambda: jax.random.key(0))
                            ).lower().compile()
      mem = compiled.memory_analysis()
      row = {"impl": impl, "seq_len": seq,
             "temp_gib": mem.temp_size_in_bytes / GiB,
             "args_gib": mem.argument_size_in_bytes / GiB,
             "compile_s": time.perf_counter() - start}
      print(f"train step memory ({dims_name}, 1 row, bf16, remat, "
            f"{jax.default_backend()} compile) impl={impl} S={seq}: temp "
            f"{row['temp_gib']:.2f} GiB (args {row['args_gib']:.2f} GiB)",
            flush=True)
      out.append(row)
  for impl in impls:
    t = {r["seq_len"]: r["temp_gib"] for r in out if r["impl"] == impl}
    lens = sorted(t)
    for a, b in zip(lens, lens[1:]):
      print(f"temp memory {impl}: S={b}/S={a} = {t[b] / t[a]:.2f}x "
            f"(tokens {b / a:.0f}x)")
  return out


def speed(seq_lens, rows, rounds, size, scan_unroll=1):
  """Train step seconds, ours vs torch, alternating calls."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.rl import train_step as ts  # pylint: disable=g-import-not-at-top
  state_lib = _state_lib()
  torch.set_num_threads(os.cpu_count())
  dims = {**ts_bench.SIZES, **ts_bench.TINY}[size]
  model, ref = ts_bench.build_pair(dims, max_len=max(seq_lens),
                                   dtype="float32", remat=False,
                                   scan_unroll=scan_unroll,
                                   device=torch.device("cpu"))
  graphdef, params, rest = state_lib.split_model(model)
  optimizer = optax.adamw(ts_bench.LR, weight_decay=ts_bench.WEIGHT_DECAY)
  step = ts.make_train_step(graphdef, rest, optimizer, optax.identity(),
                            _loss_cfg(ts), donate=True)
  holder = {"state": jax.jit(
      lambda q: state_lib.create(q, optimizer, optax.identity()))(params)}
  torch_opt = torch.optim.AdamW(ref.parameters(), lr=ts_bench.LR,
                                weight_decay=ts_bench.WEIGHT_DECAY)
  rng = np.random.default_rng(0)
  key = jax.random.key(0)
  out = []
  for seq in seq_lens:
    batch = _batch(ts, rows, seq, False, rng, dims["vocab_size"])
    p = seq - batch.completion_mask.shape[1]
    tt = torch.from_numpy(np.asarray(batch.tokens, np.int64))
    kw = dict(input_ids=tt, attention_mask=torch.ones_like(tt),
              position_ids=torch.arange(seq)[None].expand(rows, seq),
              use_cache=False, logits_to_keep=seq - p + 1)
    old_t = torch.from_numpy(np.asarray(batch.old_logp))
    adv_t = torch.from_numpy(np.asarray(batch.advantages))
    mask_t = torch.from_numpy(np.asarray(batch.completion_mask, np.float32))

    def ours():
      holder["state"], m = step(holder["state"], batch, key)
      jax.block_until_ready(m)

    def theirs():
      torch_opt.zero_grad(set_to_none=True)
      logits = ref(**kw).logits[:, :-1]
      loss = ts_bench.torch_grpo_loss(torch, logits, tt[:, p:], old_t, adv_t,
                                      mask_t)
      loss.backward()
      torch_opt.step()

    ours()
    theirs()  # compile / warm up
    ours_s, ref_s, load = [], [], []
    for _ in range(rounds):
      meter = ts_bench.OtherLoad()
      # One untimed call after each switch: the first XLA call after a torch
      # step page-faults in the memory torch just freed (measured: 4-8 s of
      # system time against 0.6 s, our step 2x slower), which a job that
      # runs only one framework never pays.
      ours()
      ours_s += common.timeit(ours, 1)
      theirs()
      ref_s += common.timeit(theirs, 1)
      load.append(meter.cores())
    ratio = common.median(ref_s) / common.median(ours_s)
    row = {"seq_len": seq, "rows": rows, "scan_unroll": scan_unroll,
           "ours_s": common.median(ours_s),
           "torch_s": common.median(ref_s), "ratio": ratio,
           "ours_all_s": ours_s, "torch_all_s": ref_s,
           "other_cores": max(load)}
    print(f"train step ours/torch at S={seq}: {ratio:.2f}x  (ours "
          f"{row['ours_s'] * 1e3:.0f} ms, torch {row['torch_s'] * 1e3:.0f} "
          f"ms median of {rounds}; other processes used up to "
          f"{row['other_cores']:.2f} cores)", flush=True)
    out.append(row)
  return out


def gemm_speed(size, rounds, block=256, mlp_tokens=2048, calls=100):
  """GFLOP/s of the train step's two main matmul shapes, XLA vs torch (MKL).

  `attention block`: one block pair's [K·B, bq·G, H] @ [K·B, H, bkv] product
  at the `size` model's heads (B = 2 rows), the shape of the blockwise
  kernel's seven matmuls per block pair; `MLP`: [tokens, D] @ [D, F] at
  2 × 1024 tokens. f32, both frameworks on all cores, alternating rounds.
  The ratios bound what the XLA train step can reach against torch here.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  d = {**ts_bench.SIZES, **ts_bench.TINY}[size]
  kh, g = d["num_key_value_heads"], (d["num_attention_heads"]
                                     // d["num_key_value_heads"])
  h = d["hidden_size"] // d["num_attention_heads"]
  shapes = {"attention block": ((2 * kh, block * g, h), (2 * kh, h, block)),
            "MLP": ((mlp_tokens, d["hidden_size"]),
                    (d["hidden_size"], d["intermediate_size"]))}
  rng = np.random.default_rng(0)
  f = jax.jit(jnp.matmul)
  out = []
  for name, (sa, sb) in shapes.items():
    a = rng.normal(size=sa).astype(np.float32)
    b = rng.normal(size=sb).astype(np.float32)
    flops = 2 * np.prod(sa) * sb[-1]
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)

    def ours(ja=ja, jb=jb):
      for _ in range(calls):
        r = f(ja, jb)
      r.block_until_ready()

    def theirs(ta=ta, tb=tb):
      for _ in range(calls):
        torch.matmul(ta, tb)

    ours()
    theirs()
    ours_s, ref_s = [], []
    for _ in range(rounds):
      ours_s += common.timeit(ours, 1)
      ref_s += common.timeit(theirs, 1)
    row = {"name": name, "shape": f"{list(sa)} @ {list(sb)}",
           "xla_gflops": flops * calls / common.median(ours_s) / 1e9,
           "torch_gflops": flops * calls / common.median(ref_s) / 1e9}
    row["ratio"] = row["xla_gflops"] / row["torch_gflops"]
    print(f"{name} matmul {row['shape']} f32: XLA "
          f"{row['xla_gflops']:.0f} GFLOP/s, torch "
          f"{row['torch_gflops']:.0f} GFLOP/s (XLA/torch "
          f"{row['ratio']:.2f}x)", flush=True)
    out.append(row)
  return out


def packing_speed(seq_lens, rows, rounds, size):
  """Train step seconds, unpacked vs packed, alternating calls."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.models import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.models import decoder  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.models import packing  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.rl import train_step as ts  # pylint: disable=g-import-not-at-top
  state_lib = _state_lib()
  d = {**ts_bench.SIZES, **ts_bench.TINY}[size]
  rng = np.random.default_rng(0)
  out = []
  for seq in seq_lens:
    p = min(64, seq // 2)
    c = seq - p
    cfg = config_lib.ModelConfig(
        model_type="qwen2", vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=d["num_attention_heads"],
        num_kv_heads=d["num_key_value_heads"],
        head_dim=d["hidden_size"] // d["num_attention_heads"],
        qkv_bias=True, max_position_embeddings=seq)
    graphdef, params, rest = state_lib.split_model(decoder.init_model(cfg))
    prompt = rng.integers(max(1, p // 4), p + 1, rows)
    comp = np.minimum(rng.geometric(min(1.0, 8 / c), rows), c)
    mask = np.zeros((rows, seq), np.int32)
    for r in range(rows):
      mask[r, p - prompt[r]:p + comp[r]] = 1
    tokens = rng.integers(1, d["vocab_size"], (rows, seq)) * mask
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    cmask = mask[:, p:]
    batch = ts.RLBatch(
        tokens=jnp.asarray(tokens, jnp.int32),
        positions=jnp.asarray(positions, jnp.int32),
        attention_mask=jnp.asarray(mask), completion_mask=jnp.asarray(cmask),
        old_logp=jnp.asarray(-rng.uniform(0.5, 6, (rows, c)) * cmask,
                             jnp.float32),
        advantages=jnp.asarray(rng.normal(size=(rows, 1)) * cmask,
                               jnp.float32),
        ref_logp=jnp.zeros((rows, c), jnp.float32))
    need = packing.pack(tokens, positions, mask, c, row_len=seq).tokens.shape[0]
    fraction = need / rows
    optimizer = optax.adamw(ts_bench.LR, weight_decay=ts_bench.WEIGHT_DECAY)
    steps, states, losses, times = {}, {}, {}, {}
    for name, f in (("unpacked", 0.0), ("packed", fraction)):
      cfg_loss = dataclasses.replace(_loss_cfg(ts), pack_fraction=f)
      steps[name] = ts.make_train_step(graphdef, rest, optimizer,
                                       optax.identity(), cfg_loss)
      states[name] = jax.jit(lambda q: state_lib.create(
          q, optimizer, optax.identity()))(params)
      times[name] = []
    key = jax.random.key(0)

    def call(name):
      states[name], m = steps[name](states[name], batch, key)
      jax.block_until_ready(m)
      return m

    for name in steps:  # compile; step 1's log-probs from the same weights
      m = call(name)
      # The mean log-prob, not the loss (with these random old log-probs
      # every ratio is clipped and the loss does not depend on the forward)
      # nor the entropy (flat in the logits near a random init's uniform).
      losses[name] = float(m["actor/logp_mean"])
      fits = float(m.get("perf/pack_fits", 1.0))
      pad = float(m.get("perf/padding_fraction_packed",
                        m["perf/padding_fraction"]))
      losses[name + "_pad"] = pad
    assert fits == 1.0, "the packed rows were sized to fit"
    for _ in range(rounds):
      for name in steps:
        times[name] += common.timeit(lambda name=name: call(name), 1)
    ratio = common.median(times["unpacked"]) / common.median(times["packed"])
    row = {"seq_len": seq, "rows": rows, "packed_rows": need,
           "padding_before": losses["unpacked_pad"],
           "padding_after": losses["packed_pad"],
           "unpacked_s": common.median(times["unpacked"]),
           "packed_s": common.median(times["packed"]), "ratio": ratio,
           "logp_diff": abs(losses["packed"] - losses["unpacked"])}
    print(f"packing at S={seq}: {rows} rows -> {need}, padding "
          f"{row['padding_before']:.2f} -> {row['padding_after']:.2f}; "
          f"train step unpacked/packed = {ratio:.2f}x ("
          f"{row['unpacked_s'] * 1e3:.0f} vs {row['packed_s'] * 1e3:.0f} ms "
          f"median of {rounds}; |mean log-prob diff| step 1 "
          f"{row['logp_diff']:.1e})", flush=True)
    out.append(row)
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--memory", action="store_true")
  ap.add_argument("--speed", action="store_true")
  ap.add_argument("--packing", action="store_true")
  ap.add_argument("--gemm", action="store_true",
                  help="the attention block's and the MLP's matmul, XLA vs "
                  "torch GFLOP/s")
  ap.add_argument("--pack_seq_lens", default="1024,4096")
  ap.add_argument("--pack_rows", type=int, default=16)
  ap.add_argument("--mem_seq_lens", default="2048,8192,32768")
  ap.add_argument("--mem_size", default="0.5B")
  ap.add_argument("--impls", default="blockwise,xla_naive")
  ap.add_argument("--seq_lens", default="256,1024,4096")
  ap.add_argument("--rows", type=int, default=2)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--size", default="5M")
  ap.add_argument("--scan_unroll", type=int, default=1,
                  help="--speed: layers per scan iteration of our model "
                  "(1 = the library default; the layer count unrolls all)")
  ap.add_argument("--tiny", action="store_true")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  if args.tiny:
    args.memory = args.speed = args.packing = args.gemm = True
    args.mem_seq_lens, args.mem_size, args.seq_lens = "64,128", "tiny", "32"
    args.pack_seq_lens, args.pack_rows = "64", 4
    args.size, args.rounds, args.rows = "tiny", 1, 1
  ints = lambda s: [int(x) for x in s.split(",") if x]
  result = {"machine": common.machine(), "load_before": os.getloadavg()}
  if args.memory:
    result["memory"] = memory(ints(args.mem_seq_lens), args.mem_size,
                              args.impls.split(","))
  if args.speed:
    result["speed"] = speed(ints(args.seq_lens), args.rows, args.rounds,
                            args.size, args.scan_unroll)
  if args.gemm:
    result["gemm"] = gemm_speed(args.size, args.rounds)
  if args.packing:
    result["packing"] = packing_speed(ints(args.pack_seq_lens),
                                      args.pack_rows, args.rounds, args.size)
  result["load_after"] = os.getloadavg()
  print(f"load average before {result['load_before']}, after "
        f"{result['load_after']}")
  if args.out:
    common.write_json(args.out, result)


if __name__ == "__main__":
  main()
