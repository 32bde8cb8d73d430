r"""Memory of the per-token statistics path: chunked `token_stats` vs full logits.

Deterministic: XLA's compiled memory analysis
(`jax.jit(f).lower(abstract args).compile().memory_analysis()`), compile only,
with `jax.ShapeDtypeStruct` inputs, so nothing big is allocated. Each function
computes logp, entropy, m2 and m3 for N tokens and the gradient of a scalar
loss of all four w.r.t. the hidden states and the LM head (the backward pass
of the train step). Qwen2.5-0.5B dims (hidden 896, vocab 151,936), bf16
hidden/head, float32 statistics.

* chunked: `jaxrl_ent.entropy.token_stats.token_stats(hidden, head, tokens,
  token_chunk=256, vocab_chunk=8192)` (the `LossConfig` defaults).
* naive: `logits = hidden @ head` in float32, `log_softmax`, gather, entropy,
  m2, m3, autodiff.

`temp` is XLA's scratch (everything live that is neither an argument nor an
output); arguments (hidden, head, tokens) and outputs (the gradients, the
same for both) are listed separately. Targets: chunked temp <= 25% of naive
at N = 8k, and chunked temp growing sub-linearly in V·N (4k -> 16k).

  python benchmarks/token_stats_memory.py --out=benchmarks/results/token_stats_memory.json
  python benchmarks/token_stats_memory.py --tiny
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

MIB = 2**20


def naive_stats(hidden, head, tokens):
  """logp, H, m2, m3 [N] from materialised float32 logits [N, V]."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  logits = jnp.einsum("nd,dv->nv", hidden, head,
                      preferred_element_type=jnp.float32)
  logp_all = jax.nn.log_softmax(logits, axis=-1)
  logp = jnp.take_along_axis(logp_all, tokens[:, None], axis=-1)[:, 0]
  p = jnp.exp(logp_all)
  ent = -jnp.sum(p * logp_all, axis=-1)
  dev = logp_all + ent[:, None]
  p2 = p * p
  m2 = jnp.sum(p2 * dev, axis=-1)
  m3 = jnp.sum(p2 * dev * dev, axis=-1)
  return logp, ent, m2, m3


def chunked_stats(hidden, head, tokens, token_chunk, vocab_chunk):
  from jaxrl_ent.entropy import token_stats as ts  # pylint: disable=g-import-not-at-top
  s = ts.token_stats(hidden, head, tokens, token_chunk=token_chunk,
                     vocab_chunk=vocab_chunk)
  return s.logp, s.entropy, s.m2, s.m3


def make_loss_and_grad(stats_fn):
  """`f(hidden, head, tokens) -> (loss, (d hidden, d head))`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def loss(hidden, head, tokens):
    logp, ent, m2, m3 = stats_fn(hidden, head, tokens)
    # Every statistic gets a nonzero cotangent, so none is pruned.
    return jnp.mean(logp) - 0.01 * jnp.mean(ent) + jnp.mean(m2) + jnp.mean(m3)

  return jax.value_and_grad(loss, argnums=(0, 1))


def analyse(fn, n, d, v, dtype):
  """(memory stats dict, compile seconds) of `fn` at N = n, abstract inputs."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  args = (jax.ShapeDtypeStruct((n, d), dtype),
          jax.ShapeDtypeStruct((d, v), dtype),
          jax.ShapeDtypeStruct((n,), jnp.int32))
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  out = {k: int(getattr(mem, k)) for k in (
      "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
      "alias_size_in_bytes", "generated_code_size_in_bytes")}
  return out, seconds


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--hidden", type=int, default=896)
  ap.add_argument("--vocab", type=int, default=151936)
  ap.add_argument("--tokens", default="4096,8192,16384",
                  help="comma-separated N values")
  ap.add_argument("--token_chunk", type=int, default=256)
  ap.add_argument("--vocab_chunk", type=int, default=8192)
  ap.add_argument("--tiny", action="store_true")
  ap.add_argument("--out", default="benchmarks/results/token_stats_memory.json")
  args = ap.parse_args()

  import functools  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  if args.tiny:
    args.hidden, args.vocab, args.tokens = 32, 1000, "256,512,1024"
    args.token_chunk, args.vocab_chunk = 64, 256
  ns = [int(x) for x in args.tokens.split(",")]
  d, v = args.hidden, args.vocab
  impls = {
      "chunked": make_loss_and_grad(functools.partial(
          chunked_stats, token_chunk=args.token_chunk,
          vocab_chunk=args.vocab_chunk)),
      "naive": make_loss_and_grad(naive_stats),
  }
  results = []
  for n in ns:
    res = {"N": n}
    for name, fn in impls.items():
      res[name], res[f"{name}_compile_s"] = analyse(fn, n, d, v, jnp.bfloat16)
    res["temp_ratio"] = (res["chunked"]["temp_size_in_bytes"] /
                         res["naive"]["temp_size_in_bytes"])
    results.append(res)

  rows = []
  for res in results:
    c, nv = res["chunked"], res["naive"]
    rows.append({
        "N": f"{res['N']:,}",
        "chunked temp MiB": f"{c['temp_size_in_bytes'] / MIB:,.1f}",
        "naive temp MiB": f"{nv['temp_size_in_bytes'] / MIB:,.1f}",
        "chunked / naive": f"{100 * res['temp_ratio']:.1f}%",
        "args MiB": f"{c['argument_size_in_bytes'] / MIB:,.1f}",
        "outputs MiB": f"{c['output_size_in_bytes'] / MIB:,.1f}",
        "[N,V] f32 MiB": f"{res['N'] * v * 4 / MIB:,.0f}"})
  print(f"\ntoken stats (logp, H, m2, m3) + backward to hidden and head: "
        f"D={d}, V={v:,}, bf16 inputs; chunked token_chunk="
        f"{args.token_chunk}, vocab_chunk={args.vocab_chunk}; XLA compiled "
        "memory analysis (compile only)")
  common.print_table(rows, ["N", "chunked temp MiB", "naive temp MiB",
                            "chunked / naive", "args MiB", "outputs MiB",
                            "[N,V] f32 MiB"])
  first, last = results[0], results[-1]
  growth = {name: last[name]["temp_size_in_bytes"] /
            first[name]["temp_size_in_bytes"] for name in impls}
  vn_growth = last["N"] / first["N"]
  mid = min(results, key=lambda r: abs(r["N"] - 8192))
  print(f"growth of temp from N={first['N']:,} to N={last['N']:,} "
        f"(V·N grows {vn_growth:.0f}x): chunked {growth['chunked']:.2f}x, "
        f"naive {growth['naive']:.2f}x")
  print(f"ratio (chunked / naive temp at N={mid['N']:,}): "
        f"{mid['temp_ratio']:.3f}  (target <= 0.25; growth target < "
        f"{vn_growth:.0f}x)")
  common.write_json(args.out, {
      "benchmark": "token_stats_memory", "machine": common.machine(),
      "hidden": d, "vocab": v, "token_chunk": args.token_chunk,
      "vocab_chunk": args.vocab_chunk, "dtype": "bfloat16",
      "results": results, "growth": growth, "vn_growth": vn_growth,
      "ratio_at_N": mid["N"], "ratio": mid["temp_ratio"]})


if __name__ == "__main__":
  main()
