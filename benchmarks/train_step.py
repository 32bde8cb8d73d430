r"""Training-step throughput: jaxrl_ent's RL train step vs a PyTorch reference.

Same random Qwen2 checkpoint at two sizes (~5M and ~51M params), same batch
(8 rows × 256 tokens: 32 prompt + 224 completion), same GRPO token loss (PPO
clip 0.2/0.28 with dual clip 10, token-mean over the completion mask), forward
+ backward + AdamW update, in one process.

* ours: `rl.train_step.make_train_step` — the production step (jitted; chunked
  token statistics logp/H/m2/m3, one `jax.vjp` backward, AdamW, finiteness
  guard), state donated and threaded through the steps.
* reference: transformers `Qwen2ForCausalLM` in PyTorch eager mode (default
  attention implementation, `logits_to_keep` so only completion logits are
  computed), the same loss from logits (log_softmax, gather, ratio, clip,
  token mean), `loss.backward()`, `torch.optim.AdamW.step()`; torch uses as
  many threads as the machine has cores (XLA's CPU backend uses all cores).

Both compute the loss of the first step on the same parameters and batch;
the script exits non-zero if they differ by more than 1e-4. Timing rounds are
interleaved (ours, ref, ours, ref, …); compile time and the reference's first
(warm-up) step are reported separately. tokens/s (median step; "best" = fastest
step) counts all rows × sequence tokens through forward and backward. Target:
ours >= 1.5× the reference's tokens/s. `--breakdown` also times matching
sub-parts (body forward, body forward+backward, + token stats/loss, AdamW).

Noise: interleaving does not make a shared machine fair. When other processes
hold cores, torch's OpenMP (static work split, spinning barriers) slows down
several times more than XLA's thread pool, which inflates the ratio. The
script measures, per round, how many cores other processes used (/proc/stat)
and warns when it is not ~0; only quiet runs are meaningful.

  python benchmarks/train_step.py --breakdown --out=benchmarks/results/train_step.json
  python benchmarks/train_step.py --tiny   # seconds-long smoke run
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

SIZES = {
    "5M": dict(vocab_size=4096, hidden_size=256, intermediate_size=704,
               num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2),
    "51M": dict(vocab_size=32768, hidden_size=512, intermediate_size=1408,
                num_hidden_layers=6, num_attention_heads=8,
                num_key_value_heads=4),
}
# Qwen2.5-0.5B's dimensions (tied embeddings), for the GPU run (gpu.sh).
SIZES_LARGE = {
    "0.5B": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                 num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie=True),
}
TINY = {"tiny": dict(vocab_size=256, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2)}
EPS_LOW, EPS_HIGH, CLIP_C = 0.2, 0.28, 10.0
LR, WEIGHT_DECAY = 1e-5, 0.01
LOSS_TOL = {"float32": 1e-4, "bfloat16": 3e-2}


def _cpu_busy_s():
  """(all processes' busy CPU seconds, this process's CPU seconds) or None.

  From /proc/stat (Linux); used to measure what *other* processes ran while
  we timed, since XLA's thread pool and torch's OpenMP degrade very
  differently when cores are oversubscribed.
  """
  try:
    with open("/proc/stat") as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
  hz = os.sysconf("SC_CLK_TCK")
  t = os.times()
  return (sum(fields[:8]) - idle) / hz, t.user + t.system


class OtherLoad:
  """Mean number of cores busy with other processes over a block."""

  def __init__(self):
    self.start = _cpu_busy_s()
    self.wall = time.perf_counter()

  def cores(self):
    end = _cpu_busy_s()
    if self.start is None or end is None:
      return float("nan")
    wall = time.perf_counter() - self.wall
    others = (end[0] - self.start[0]) - (end[1] - self.start[1])
    return max(0.0, others / wall)


def torch_grpo_loss(torch, logits, tokens_c, old_logp, adv, mask):
  """PPO-clip (dual clip) token-mean loss from completion logits [R, C, V]."""
  logp_all = torch.log_softmax(logits.float(), dim=-1)
  logp = logp_all.gather(-1, tokens_c[..., None])[..., 0]
  ratio = torch.exp(torch.clamp(logp - old_logp, -20.0, 20.0))
  l1 = -adv * ratio
  l2 = -adv * torch.clamp(ratio, 1.0 - EPS_LOW, 1.0 + EPS_HIGH)
  clipped = torch.maximum(l1, l2)
  loss_bt = torch.where(adv < 0, torch.minimum(-adv * CLIP_C, clipped),
                        clipped)
  return (loss_bt * mask).sum() / mask.sum()


def step_flops(dims, rows, seq_len, completion_len) -> float:
  """Model FLOPs of one forward+backward (the PaLM MFU convention).

  6 × (matmul params of the layers) × tokens, plus the LM head on the
  completion tokens only (both implementations compute only those logits),
  plus attention scores and values 12 × layers × (heads × head_dim) ×
  seq_len × tokens (non-causal count, as is customary).
  """
  d, f, l = dims["hidden_size"], dims["intermediate_size"], \
      dims["num_hidden_layers"]
  n, k = dims["num_attention_heads"], dims["num_key_value_heads"]
  h = d // n
  layer = d * h * (n + 2 * k) + n * h * d + 3 * d * f
  tokens = rows * seq_len
  return (6.0 * l * layer * tokens
          + 6.0 * dims["vocab_size"] * d * rows * completion_len
          + 12.0 * l * n * h * seq_len * tokens)


def peak_flops(dtype: str) -> tuple[float, str]:
  """(peak dense FLOP/s, where the figure comes from) for the GPU, or NaN.

  NVIDIA's datasheets, dense (no sparsity): H100 SXM and H200 989.4 TFLOP/s
  bf16 tensor core and 494.7 TFLOP/s TF32; H100 PCIe 756 / 378.
  """
  import torch  # pylint: disable=g-import-not-at-top
  if not torch.cuda.is_available():
    return float("nan"), "no GPU"
  name = torch.cuda.get_device_name()
  table = {"H100 PCIe": (756e12, 378e12), "H100": (989.4e12, 494.7e12),
           "H200": (989.4e12, 494.7e12)}
  for key, (bf16, tf32) in table.items():
    if key in name:
      return (bf16 if dtype == "bfloat16" else tf32), f"{name} datasheet"
  return float("nan"), f"{name}: peak unknown"


def build_pair(dims, *, max_len, dtype, remat, device, scan_unroll=1):
  """(our model, the transformers model) with the same random weights.

  `dims` are Qwen2 config fields (+ optional `tie`); both sides get
  `dtype` parameters and activations, and with `remat` both recompute each
  layer in the backward pass (the same trade on both sides). `scan_unroll`:
  ours only (`ModelConfig.scan_unroll`, layers per iteration of the scan).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from jaxrl_ent import models  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.models import tiny_hf  # pylint: disable=g-import-not-at-top
  dims = dict(dims)
  tie = dims.pop("tie", False)
  jdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  with tempfile.TemporaryDirectory() as d:
    ref = tiny_hf.write_checkpoint(d, "qwen2", tie=tie,
                                   max_position_embeddings=max_len, **dims)
    model = models.from_pretrained(d, dtype=jdtype, param_dtype=jdtype,
                                   options={"remat": remat,
                                            "scan_unroll": scan_unroll})
  ref = ref.to(device=device, dtype=tdtype)
  if remat:
    ref.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": False})
  return model, ref


def bench_size(name, dims, args, rng):
  """Builds both steps for one model size, checks the loss, times them."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.rl import train_step as ts  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.rl import state as state_lib  # pylint: disable=g-import-not-at-top

  r, s, p = args.rows, args.seq_len, args.prompt_len
  c = s - p
  dev = torch.device(args.torch_device)
  model, ref = build_pair(dims, max_len=s, dtype=args.dtype,
                          remat=args.remat, device=dev)
  dims = {k: v for k, v in dims.items() if k != "tie"}
  n_params = model.cfg.num_params()

  # The batch: random tokens, variable completion lengths, per-row
  # advantages, behaviour log-probs = current ones + noise (so ratios differ
  # from 1 and some tokens clip).
  tokens = rng.integers(1, dims["vocab_size"], (r, s)).astype(np.int64)
  cmask = (np.arange(c)[None] < rng.integers(c // 4, c + 1, (r, 1)))
  cmask = cmask.astype(np.float32)
  adv = (rng.normal(size=(r, 1)) * cmask).astype(np.float32)
  tokens_t = torch.from_numpy(tokens).to(dev)
  positions_t = torch.arange(s, device=dev)[None].expand(r, s)
  ones_t = torch.ones((r, s), dtype=torch.long, device=dev)
  ref.train()  # Qwen2 has no dropout: train() only enables autograd paths.
  with torch.no_grad():
    logits = ref(input_ids=tokens_t, attention_mask=ones_t,
                 position_ids=positions_t, use_cache=False,
                 logits_to_keep=c + 1).logits[:, :-1]
    cur_logp = torch.log_softmax(logits.float(), -1).gather(
        -1, tokens_t[:, p:, None])[..., 0].float().cpu().numpy()
  del logits
  if dev.type == "cuda":
    torch.cuda.empty_cache()  # Leave the GPU memory to the timed steps.
  old = ((cur_logp + 0.3 * rng.normal(size=cur_logp.shape)) * cmask).astype(
      np.float32)

  # --- ours -----------------------------------------------------------------
  batch = ts.RLBatch(
      tokens=jnp.asarray(tokens, jnp.int32),
      positions=jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (r, s)),
      attention_mask=jnp.ones((r, s), jnp.int32),
      completion_mask=jnp.asarray(cmask, jnp.int32),
      old_logp=jnp.asarray(old), advantages=jnp.asarray(adv),
      ref_logp=jnp.zeros((r, c), jnp.float32))
  loss_cfg = ts.LossConfig(policy_loss="ppo_clip", agg_mode="token-mean",
                           policy_loss_kwargs=(("clip_ratio_c", CLIP_C),
                                               ("eps_high", EPS_HIGH),
                                               ("eps_low", EPS_LOW)))
  optimizer = optax.adamw(LR, b1=0.9, b2=0.999, eps=1e-8,
                          weight_decay=WEIGHT_DECAY)
  graphdef, params, rest = state_lib.split_model(model)
  del model
  step = ts.make_train_step(graphdef, rest, optimizer, optax.identity(),
                            loss_cfg, donate=True)
  # As rl_loop does: a jitted create commits every leaf (the scalar counters
  # of a plain `create` are uncommitted, which would make the second call
  # a jit cache miss and compile again).
  holder = {"state": jax.jit(
      lambda q: state_lib.create(q, optimizer, optax.identity()))(params)}
  del params
  key = jax.random.key(0)

  def ours():
    holder["state"], metrics = step(holder["state"], batch, key)
    return jax.block_until_ready(metrics)

  start = time.perf_counter()
  first = ours()
  ours_compile_s = time.perf_counter() - start
  ours_loss = float(first["actor/loss"])

  # --- reference ------------------------------------------------------------
  tokens_c_t = tokens_t[:, p:]
  old_t, adv_t = torch.from_numpy(old).to(dev), torch.from_numpy(
      np.broadcast_to(adv, (r, c)).copy()).to(dev)
  mask_t = torch.from_numpy(cmask).to(dev)
  torch_opt = torch.optim.AdamW(ref.parameters(), lr=LR, betas=(0.9, 0.999),
                                eps=1e-8, weight_decay=WEIGHT_DECAY)

  def theirs():
    torch_opt.zero_grad(set_to_none=True)
    out = ref(input_ids=tokens_t, attention_mask=ones_t,
              position_ids=positions_t, use_cache=False,
              logits_to_keep=c + 1)
    loss = torch_grpo_loss(torch, out.logits[:, :-1], tokens_c_t, old_t,
                           adv_t, mask_t)
    loss.backward()
    torch_opt.step()
    return loss.item()

  start = time.perf_counter()
  ref_loss = theirs()
  ref_first_s = time.perf_counter() - start
  loss_diff = abs(ours_loss - ref_loss)

  parts = {}
  if args.breakdown:
    parts = breakdown_parts(
        graphdef, rest, holder, batch, loss_cfg, optimizer, ref, torch_opt,
        dict(input_ids=tokens_t, attention_mask=ones_t,
             position_ids=positions_t, use_cache=False),
        lambda logits: torch_grpo_loss(torch, logits, tokens_c_t, old_t,
                                       adv_t, mask_t), c)
    for fn in parts.values():
      fn()  # Compile / warm up.

  ours_s, ref_s = [], []
  part_s = {k: [] for k in parts}
  other_load = []  # Cores busy with other processes, per round.
  for _ in range(args.rounds):  # Interleave to spread machine noise evenly.
    meter = OtherLoad()
    ours_s += common.timeit(ours, args.repeats)
    ref_s += common.timeit(theirs, args.repeats)
    for k, fn in parts.items():
      part_s[k] += common.timeit(fn, args.repeats)
    other_load.append(meter.cores())
  n_tok = r * s
  ours_tps = n_tok / common.median(ours_s)
  ref_tps = n_tok / common.median(ref_s)
  flops = step_flops(dims, r, s, c)
  peak, peak_source = peak_flops(args.dtype)
  return {
      "dtype": args.dtype, "torch_device": str(dev), "step_flops": flops,
      "peak_flops": peak, "peak_source": peak_source,
      "ours_mfu": flops / common.median(ours_s) / peak,
      "ref_mfu": flops / common.median(ref_s) / peak,
      "breakdown_seconds": part_s, "other_load_cores": other_load,
      "ours_best_tokens_per_s": n_tok / min(ours_s),
      "ref_best_tokens_per_s": n_tok / min(ref_s),
      "size": name, "params": n_params, "dims": dims,
      "tokens_per_step": n_tok, "completion_tokens": int(cmask.sum()),
      "ours_tokens_per_s": ours_tps, "ours_seconds": ours_s,
      "ours_compile_s": ours_compile_s, "ours_first_loss": ours_loss,
      "ref_tokens_per_s": ref_tps, "ref_seconds": ref_s,
      "ref_first_step_s": ref_first_s, "ref_first_loss": ref_loss,
      "loss_abs_diff": loss_diff, "ratio": ours_tps / ref_tps,
      "ref_attn_implementation": ref.config._attn_implementation,  # pylint: disable=protected-access
  }


def breakdown_parts(graphdef, rest, holder, batch, loss_cfg, optimizer, ref,
                    torch_opt, model_kwargs, torch_loss_fn, c):
  """Sub-parts of both steps, as blocking thunks (ours/torch pairs).

  Ours read the live (donated-and-replaced) params at call time; the torch
  AdamW part steps on the gradients the preceding fwd+bwd part left.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.rl import train_step as ts  # pylint: disable=g-import-not-at-top

  def body(params):
    model = nnx.merge(graphdef, params, rest)
    return model.hidden_states(batch.tokens, batch.positions,
                               batch.attention_mask)[0]

  def stats_loss(params):
    model = nnx.merge(graphdef, params, rest)
    st = ts.completion_stats(model, batch, temperature=1.0,
                             token_chunk=loss_cfg.token_chunk,
                             vocab_chunk=loss_cfg.vocab_chunk)
    return jnp.sum(st.logp * batch.advantages)

  body_fwd = jax.jit(body)
  body_grad = jax.jit(jax.grad(lambda q: jnp.sum(body(q))))
  stats_grad = jax.jit(jax.grad(stats_loss))

  @jax.jit
  def adamw(state, grads):
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params)
    return optax.apply_updates(state.params, updates), opt_state

  grads = stats_grad(holder["state"].params)
  live = lambda: holder["state"].params
  block = jax.block_until_ready

  def t_body_fwd():
    with torch.no_grad():
      ref.model(**model_kwargs)

  def t_body_grad():
    ref.zero_grad(set_to_none=True)
    ref.model(**model_kwargs).last_hidden_state.sum().backward()

  def t_loss_grad():
    ref.zero_grad(set_to_none=True)
    logits = ref(**model_kwargs, logits_to_keep=c + 1).logits[:, :-1]
    torch_loss_fn(logits).backward()

  return {
      "ours body fwd": lambda: block(body_fwd(live())),
      "torch body fwd": t_body_fwd,
      "ours body fwd+bwd": lambda: block(body_grad(live())),
      "torch body fwd+bwd": t_body_grad,
      "ours body+token stats fwd+bwd": lambda: block(stats_grad(live())),
      "torch body+logits loss fwd+bwd": t_loss_grad,
      "ours AdamW": lambda: block(adamw(holder["state"], grads)),
      "torch AdamW": torch_opt.step,
  }


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default=",".join(SIZES),
                  help=f"comma-separated subset of {list(SIZES)}")
  ap.add_argument("--rows", type=int, default=8)
  ap.add_argument("--seq_len", type=int, default=256)
  ap.add_argument("--prompt_len", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=3, help="steps per round")
  ap.add_argument("--rounds", type=int, default=3,
                  help="interleaved measurement rounds (noise control)")
  ap.add_argument("--breakdown", action="store_true",
                  help="also time sub-parts (body fwd, fwd+bwd, AdamW)")
  ap.add_argument("--dtype", default="float32",
                  choices=["float32", "bfloat16"],
                  help="parameters and activations, both implementations")
  ap.add_argument("--remat", action="store_true",
                  help="recompute each layer in the backward pass (both)")
  ap.add_argument("--torch_device", default="auto",
                  help="auto = cuda when available, else cpu")
  ap.add_argument("--tiny", action="store_true", help="smoke-test sizes")
  ap.add_argument("--out", default="benchmarks/results/train_step.json")
  args = ap.parse_args()

  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  if args.torch_device == "auto":
    args.torch_device = "cuda" if torch.cuda.is_available() else "cpu"
  known = {**SIZES, **SIZES_LARGE}
  unknown = [k for k in args.sizes.split(",") if k not in known]
  if unknown:
    sys.exit(f"--sizes: unknown {unknown}; known: {list(known)}")
  sizes = {k: known[k] for k in args.sizes.split(",")}
  if args.tiny:
    sizes = TINY
    args.rows, args.seq_len, args.prompt_len = 2, 16, 4
    args.repeats, args.rounds = 1, 1
  torch.set_num_threads(os.cpu_count())
  rng = np.random.default_rng(0)

  results = [bench_size(name, dims, args, rng) for name, dims in
             sizes.items()]
  rows = []
  for res in results:
    rows.append({"model": f"{res['size']} ({res['params'] / 1e6:.1f}M)",
                 "impl": "jaxrl_ent make_train_step (jit)",
                 "tokens/s": f"{res['ours_tokens_per_s']:,.0f}",
                 "median s": f"{common.median(res['ours_seconds']):.3f}",
                 "best tokens/s": f"{res['ours_best_tokens_per_s']:,.0f}",
                 "first step s": f"{res['ours_compile_s']:.1f} (compile)",
                 "MFU": f"{res['ours_mfu']:.1%}",
                 "loss step 1": f"{res['ours_first_loss']:.6f}"})
    rows.append({"model": "", "impl": "transformers + torch.optim (eager)",
                 "tokens/s": f"{res['ref_tokens_per_s']:,.0f}",
                 "median s": f"{common.median(res['ref_seconds']):.3f}",
                 "best tokens/s": f"{res['ref_best_tokens_per_s']:,.0f}",
                 "first step s": f"{res['ref_first_step_s']:.1f} (warm-up)",
                 "MFU": f"{res['ref_mfu']:.1%}",
                 "loss step 1": f"{res['ref_first_loss']:.6f}"})
  print(f"\ntrain step: GRPO PPO-clip token-mean + AdamW, {args.rows} rows × "
        f"{args.seq_len} tokens ({args.prompt_len} prompt), "
        f"{args.rounds}×{args.repeats} interleaved timed steps each, "
        f"torch threads {torch.get_num_threads()}, {args.dtype}, jax on "
        f"{common.machine()['jax_backend']}, torch on {args.torch_device}, "
        f"ref attention {results[0]['ref_attn_implementation']}")
  common.print_table(rows, ["model", "impl", "tokens/s", "median s",
                            "best tokens/s", "first step s", "MFU",
                            "loss step 1"])
  if results[0]["peak_flops"] == results[0]["peak_flops"]:
    print(f"MFU: model FLOPs per step / median step time / peak "
          f"{results[0]['peak_flops'] / 1e12:.1f} TFLOP/s "
          f"({results[0]['peak_source']})")
  for res in results:
    part_s = res["breakdown_seconds"]
    if not part_s:
      continue
    names = list(part_s)
    prow = []
    for ours_k, ref_k in zip(names[::2], names[1::2]):
      o, t = common.median(part_s[ours_k]), common.median(part_s[ref_k])
      prow.append({"part": ours_k.removeprefix("ours "),
                   "torch part": ref_k.removeprefix("torch "),
                   "ours ms": f"{1e3 * o:,.0f}", "torch ms": f"{1e3 * t:,.0f}",
                   "ours best ms": f"{1e3 * min(part_s[ours_k]):,.0f}",
                   "torch best ms": f"{1e3 * min(part_s[ref_k]):,.0f}"})
    print(f"\nbreakdown {res['size']} (median and best of "
          f"{len(part_s[names[0]])} interleaved calls):")
    common.print_table(prow, ["part", "ours ms", "ours best ms", "torch part",
                              "torch ms", "torch best ms"])
  print("cores busy with other processes, per timing round: " + "; ".join(
      f"{res['size']} " + ", ".join(f"{x:.2f}" for x in
                                    res["other_load_cores"])
      for res in results))
  if max(x for res in results for x in res["other_load_cores"]) > 0.25:
    print("WARNING: other processes used the CPUs while timing. torch's "
          "OpenMP slows down far more than XLA's thread pool when cores are "
          "oversubscribed, so these ratios favour jaxrl_ent; rerun on an "
          "idle machine.")
  for res in results:
    best = res["ours_best_tokens_per_s"] / res["ref_best_tokens_per_s"]
    print(f"ratio {res['size']} (ours / torch tokens/s): {res['ratio']:.2f}x"
          f" median, {best:.2f}x best-of (target >= 1.5x); |loss diff| "
          "step 1 = "
          f"{res['loss_abs_diff']:.2e}")
  ratio = min(res["ratio"] for res in results)
  print(f"ratio (worst size, ours / torch): {ratio:.2f}x  (target >= 1.5x)")
  common.write_json(args.out, {
      "benchmark": "train_step", "machine": common.machine(),
      "rows": args.rows, "seq_len": args.seq_len,
      "prompt_len": args.prompt_len, "rounds": args.rounds,
      "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
      "dtype": args.dtype, "torch_device": args.torch_device,
      "remat": args.remat,
      "results": results, "ratio": ratio})
  tol = LOSS_TOL[args.dtype]
  bad = [res["size"] for res in results if not res["loss_abs_diff"] <= tol]
  if bad:
    sys.exit(f"step-1 losses differ by more than {tol} for {bad}: "
             "the two steps do not compute the same thing.")


if __name__ == "__main__":
  main()
