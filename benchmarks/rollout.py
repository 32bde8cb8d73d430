r"""Rollout throughput: jaxrl_ent's sampler vs transformers' PyTorch generate.

Same tiny Qwen2 checkpoint (~5M params), 16 prompts, 128 new tokens, sampling
at temperature 1 with no early stop, in one process. Compile time is excluded
from tokens/s and reported separately. Torch uses as many threads as the
machine has cores (what XLA's CPU backend uses too).

The timed calls alternate (ours, theirs, ours, ...) so that background load
on a shared machine hits both alike; tokens/s are reported for the best and
the median call of each, and the ratio for both (the best call is the one
least disturbed by other processes).

  python benchmarks/rollout.py --out=benchmarks/results/rollout.json
  python benchmarks/rollout.py --tiny   # seconds-long smoke run

`--long_tail`: reasoning-style lengths. Each row r gets a stop length L_r
drawn once from a geometric distribution with mean budget/8, capped at the
budget, and all implementations stop row r after exactly L_r tokens (ours:
`row_budgets`; transformers: a per-row `StoppingCriteria`; no stop token, so
nothing else ends a row). Compared on the same rows: ours with continuous
batching (`--num_slots` decode slots refilled from the row queue), ours with
the static batch (length-aware attention), ours static with the whole-cache
attention of before, and transformers `generate`. Tokens/s count useful
tokens only (Σ L_r).

  python benchmarks/rollout.py --long_tail \
      --out=benchmarks/results/rollout_long_tail.json
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def _dims(tiny: bool) -> dict:
  """The benchmark's Qwen2 (5.1M parameters), or a smoke-test one."""
  if tiny:
    return dict(vocab_size=256, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256)
  return dict(vocab_size=4096, hidden_size=256, intermediate_size=704,
              num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--new_tokens", type=int, default=128)
  ap.add_argument("--prompt_len", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--tiny", action="store_true", help="smoke-test sizes")
  ap.add_argument("--out", default=None)
  ap.add_argument("--decode_attention", default="blockwise",
                  help="models.decode_attention implementation for ours")
  ap.add_argument("--long_tail", action="store_true",
                  help="per-row geometric stop lengths (see docstring)")
  ap.add_argument("--n_samples", type=int, default=4,
                  help="--long_tail: rows per prompt")
  ap.add_argument("--num_slots", type=int, default=16,
                  help="--long_tail: decode slots of the continuous batch")
  ap.add_argument("--int8_mismatch", action="store_true",
                  help="log-prob gap of the int8 KV cache (see docstring)")
  args = ap.parse_args()
  if args.long_tail:
    return long_tail(args)
  if args.int8_mismatch:
    return int8_mismatch(args)
  args.out = args.out or "benchmarks/results/rollout.json"

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from jaxrl_ent import models, rollout  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.models import tiny_hf  # pylint: disable=g-import-not-at-top

  dims = _dims(args.tiny)
  if args.tiny:
    args.batch, args.new_tokens, args.repeats = 2, 8, 1
  torch.set_num_threads(os.cpu_count())

  with tempfile.TemporaryDirectory() as d:
    ref = tiny_hf.write_checkpoint(d, "qwen2", **dims)
    policy = models.from_pretrained(d)
  n_params = policy.cfg.num_params()
  rng = np.random.default_rng(0)
  prompts = rng.integers(1, dims["vocab_size"], (args.batch, args.prompt_len))
  n_tokens = args.batch * args.new_tokens

  def ours(seed):
    out = rollout.generate(policy, [list(p) for p in prompts],
                           jax.random.key(seed),
                           max_new_tokens=args.new_tokens, temperature=1.0,
                           prompt_buckets=(args.prompt_len,),
                           decode_attention=args.decode_attention)
    jax.block_until_ready(out.tokens)
    assert int(out.lengths.min()) == args.new_tokens
    return out

  start = time.perf_counter()
  ours(0)
  compile_s = time.perf_counter() - start

  input_ids = torch.tensor(prompts)

  def theirs():
    with torch.no_grad():
      out = ref.generate(input_ids=input_ids,
                         attention_mask=torch.ones_like(input_ids),
                         do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                         max_new_tokens=args.new_tokens,
                         min_new_tokens=args.new_tokens, pad_token_id=0)
    assert out.shape[1] == args.prompt_len + args.new_tokens

  theirs()  # warm-up
  ours_s, theirs_s = [], []
  for seed in range(1, args.repeats + 1):
    ours_s += common.timeit(lambda: ours(seed), 1)  # pylint: disable=cell-var-from-loop
    theirs_s += common.timeit(theirs, 1)

  ours_tps = n_tokens / common.median(ours_s)
  theirs_tps = n_tokens / common.median(theirs_s)
  ours_best, theirs_best = n_tokens / min(ours_s), n_tokens / min(theirs_s)
  rows = [
      {"impl": "jaxrl_ent generate (jit, while_loop)",
       "best tok/s": f"{ours_best:,.0f}", "median tok/s": f"{ours_tps:,.0f}",
       "compile s": f"{compile_s:.1f}"},
      {"impl": "transformers generate (PyTorch eager)",
       "best tok/s": f"{theirs_best:,.0f}",
       "median tok/s": f"{theirs_tps:,.0f}", "compile s": "-"},
  ]
  print(f"\nrollout: {n_params / 1e6:.1f}M-param Qwen2, batch {args.batch}, "
        f"prompt {args.prompt_len}, {args.new_tokens} new tokens, sampling, "
        f"torch threads {torch.get_num_threads()}, {args.repeats} alternating "
        "calls each")
  common.print_table(rows, ["impl", "best tok/s", "median tok/s",
                            "compile s"])
  ratio = ours_tps / theirs_tps
  ratio_best = ours_best / theirs_best
  print(f"ratio (ours / transformers): best {ratio_best:.2f}x, median "
        f"{ratio:.2f}x  (target >= 3x)")
  common.write_json(args.out, {
      "benchmark": "rollout", "machine": common.machine(),
      "params": n_params, "batch": args.batch, "prompt_len": args.prompt_len,
      "new_tokens": args.new_tokens, "ours_tokens_per_s": ours_tps,
      "ours_seconds": ours_s, "ours_compile_s": compile_s,
      "hf_tokens_per_s": theirs_tps, "hf_seconds": theirs_s,
      "ours_best_tokens_per_s": ours_best, "hf_best_tokens_per_s": theirs_best,
      "ratio": ratio, "ratio_best": ratio_best,
      "torch_threads": torch.get_num_threads()})


def long_tail(args):
  """Ours (continuous, static, static whole-cache) vs transformers on rows
  with long-tailed stop lengths (module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from jaxrl_ent import models, rollout  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.models import tiny_hf  # pylint: disable=g-import-not-at-top

  budget = 256 if args.new_tokens == 128 else args.new_tokens
  dims = _dims(args.tiny)
  if args.tiny:
    args.batch, budget, args.repeats, args.num_slots = 2, 16, 1, 2
  args.out = args.out or "benchmarks/results/rollout_long_tail.json"
  torch.set_num_threads(os.cpu_count())
  with tempfile.TemporaryDirectory() as d:
    ref = tiny_hf.write_checkpoint(d, "qwen2", **dims)
    policy = models.from_pretrained(d)
  rng = np.random.default_rng(0)
  prompts = rng.integers(1, dims["vocab_size"], (args.batch, args.prompt_len))
  rows = args.batch * args.n_samples
  lengths = np.minimum(rng.geometric(8.0 / budget, rows), budget)
  useful = int(lengths.sum())
  tok_prompts = [list(p) for p in prompts]

  def ours(seed, **kw):
    out = rollout.generate(policy, tok_prompts, jax.random.key(seed),
                           max_new_tokens=budget, temperature=1.0,
                           n_samples=args.n_samples,
                           prompt_buckets=(args.prompt_len,),
                           row_budgets=lengths, **kw)
    jax.block_until_ready(out.tokens)
    np.testing.assert_array_equal(np.asarray(out.lengths), lengths)
    return out

  impls = {
      f"ours continuous ({args.num_slots} slots)": dict(
          continuous=True, num_slots=args.num_slots),
      "ours static (length-aware attention)": {},
      "ours static (whole-cache attention)": dict(decode_attention="full"),
  }
  compile_s = {}
  for name, kw in impls.items():
    start = time.perf_counter()
    ours(0, **kw)
    compile_s[name] = time.perf_counter() - start

  input_ids = torch.tensor(np.repeat(prompts, args.n_samples, axis=0))
  stop_at = torch.tensor(args.prompt_len + lengths)

  class StopAtLength(transformers.StoppingCriteria):
    def __call__(self, input_ids, scores, **kwargs):
      return input_ids.shape[1] >= stop_at

  def theirs():
    with torch.no_grad():
      out = ref.generate(input_ids=input_ids,
                         attention_mask=torch.ones_like(input_ids),
                         do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                         max_new_tokens=budget, pad_token_id=0,
                         eos_token_id=None,
                         stopping_criteria=transformers.StoppingCriteriaList(
                             [StopAtLength()]))
    assert out.shape[1] == args.prompt_len + lengths.max(), out.shape

  theirs()  # warm-up
  times = {name: [] for name in (*impls, "transformers generate")}
  for seed in range(1, args.repeats + 1):
    for name, kw in impls.items():
      times[name] += common.timeit(lambda: ours(seed, **kw), 1)  # pylint: disable=cell-var-from-loop
    times["transformers generate"] += common.timeit(theirs, 1)
  load = os.getloadavg()
  best = {k: useful / min(v) for k, v in times.items()}
  med = {k: useful / common.median(v) for k, v in times.items()}
  table = [{"impl": k, "best tok/s": f"{best[k]:,.0f}",
            "median tok/s": f"{med[k]:,.0f}",
            "compile s": f"{compile_s[k]:.1f}" if k in compile_s else "-"}
           for k in times]
  n_params = policy.cfg.num_params()
  print(f"\nrollout --long_tail: {n_params / 1e6:.1f}M-param Qwen2, "
        f"{args.batch} prompts x {args.n_samples} samples = {rows} rows, "
        f"prompt {args.prompt_len}, budget {budget}, stop lengths geometric "
        f"mean {budget // 8} capped (drawn: mean {lengths.mean():.1f}, max "
        f"{lengths.max()}), {useful} useful tokens; torch threads "
        f"{torch.get_num_threads()}; {args.repeats} alternating calls each; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
  common.print_table(table, ["impl", "best tok/s", "median tok/s",
                             "compile s"])
  cont, static = list(impls)[:2]
  ratios = {
      "continuous / transformers": (best[cont] / best["transformers generate"],
                                    med[cont] / med["transformers generate"]),
      "continuous / static": (best[cont] / best[static],
                              med[cont] / med[static]),
      "static / transformers": (best[static] / best["transformers generate"],
                                med[static] / med["transformers generate"]),
  }
  for k, (b, m) in ratios.items():
    print(f"ratio {k}: best {b:.2f}x, median {m:.2f}x")
  print("targets: continuous >= 3x transformers, >= 1.5x static")
  common.write_json(args.out, {
      "benchmark": "rollout_long_tail", "machine": common.machine(),
      "params": n_params, "prompts": args.batch, "n_samples": args.n_samples,
      "rows": rows, "prompt_len": args.prompt_len, "budget": budget,
      "num_slots": args.num_slots, "stop_lengths": lengths.tolist(),
      "useful_tokens": useful, "seconds": times, "compile_s": compile_s,
      "best_tokens_per_s": best, "median_tokens_per_s": med,
      "ratios_best_median": ratios, "load_average": load,
      "torch_threads": torch.get_num_threads()})


def int8_mismatch(args):
  """|logp(rollout) - logp(teacher forcing)| for the int8 and float caches."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxrl_ent import models, rollout  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.models import tiny_hf  # pylint: disable=g-import-not-at-top

  dims = _dims(tiny=False)
  with tempfile.TemporaryDirectory() as d:
    tiny_hf.write_checkpoint(d, "qwen2", **dims)
    policy = models.from_pretrained(d)
  rng = np.random.default_rng(0)
  prompts = rng.integers(1, dims["vocab_size"], (args.batch, args.prompt_len))
  rows = []
  for int8 in (False, True):
    out = rollout.generate(policy, [list(p) for p in prompts],
                           jax.random.key(0), max_new_tokens=args.new_tokens,
                           temperature=1.0, kv_int8=int8)
    logits, _ = jax.jit(policy)(out.tokens, out.positions,
                                out.attention_mask)
    p = out.prompt_mask.shape[1]
    logp_all = jax.nn.log_softmax(logits[:, p - 1:-1], axis=-1)
    ref = jnp.take_along_axis(logp_all, out.completion[..., None], -1)[..., 0]
    gap = np.abs(np.asarray(out.logp) - np.asarray(ref))
    ratio = np.abs(np.expm1(np.asarray(out.logp) - np.asarray(ref)))
    rows.append({"kv cache": "int8" if int8 else "float32 (default)",
                 "max |dlogp|": f"{gap.max():.2e}",
                 "mean |dlogp|": f"{gap.mean():.2e}",
                 "max |ratio-1|": f"{ratio.max():.2e}"})
  print(f"\nbehaviour vs teacher-forced log-probs, {policy.cfg.num_params() / 1e6:.1f}M "
        f"Qwen2 (float32), {args.batch} rows x {args.new_tokens} tokens")
  common.print_table(rows, ["kv cache", "max |dlogp|", "mean |dlogp|",
                            "max |ratio-1|"])


if __name__ == "__main__":
  main()
