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
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--new_tokens", type=int, default=128)
  ap.add_argument("--prompt_len", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--tiny", action="store_true", help="smoke-test sizes")
  ap.add_argument("--out", default="benchmarks/results/rollout.json")
  args = ap.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from jaxrl_ent import models, rollout  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.models import tiny_hf  # pylint: disable=g-import-not-at-top

  dims = dict(vocab_size=4096, hidden_size=256, intermediate_size=704,
              num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024)
  if args.tiny:
    dims = dict(vocab_size=256, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256)
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
                           prompt_buckets=(args.prompt_len,))
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


if __name__ == "__main__":
  main()
