r"""Entropy-controller overhead: train-step time with each controller vs none.

Same model (tiny Qwen2, ~5M params), same batch (16 rows × 32 prompt + 128
completion tokens), same process; each step is the full jitted update
(forward, token stats, controller, one backward, AdamW). The controller chain
is wrapped in the dynamics tracker (`attributed_chain`) as in training.
Target: <= 5% overhead.

  python benchmarks/controllers.py --out=benchmarks/results/controllers.json
  python benchmarks/controllers.py --tiny
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--rows", type=int, default=16)
  ap.add_argument("--prompt_len", type=int, default=32)
  ap.add_argument("--completion_len", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--rounds", type=int, default=3,
                  help="interleaved measurement rounds (noise control)")
  ap.add_argument("--size", default="5M", choices=["5M", "0.5B"],
                  help="0.5B = Qwen2.5-0.5B's dimensions (the GPU run)")
  ap.add_argument("--dtype", default="float32",
                  choices=["float32", "bfloat16"])
  ap.add_argument("--methods", default="none,entropy_bonus,clip_cov,kl_cov,"
                  "high_entropy_tokens,adaptive_entropy",
                  help="controllers to time ('none' is the baseline)")
  ap.add_argument("--tiny", action="store_true")
  ap.add_argument("--out", default="benchmarks/results/controllers.json")
  args = ap.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jaxrl_ent import models  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.rl import train_step as ts  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.train import factories  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.rl import state as state_lib  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
  from configs import grpo_tiny  # pylint: disable=g-import-not-at-top

  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
  if args.size == "0.5B":
    cfg = models.ModelConfig("qwen2", 151936, 896, 4864, 24, 14, 2, 64,
                             qkv_bias=True, max_position_embeddings=4096,
                             tie_word_embeddings=True, dtype=dtype,
                             param_dtype=dtype, remat=True)
  else:
    cfg = models.ModelConfig("qwen2", 4096, 256, 704, 4, 4, 2, 64,
                             qkv_bias=True, max_position_embeddings=1024,
                             dtype=dtype, param_dtype=dtype)
  if args.tiny:
    cfg = models.ModelConfig("qwen2", 128, 32, 64, 2, 4, 2, 8, qkv_bias=True)
    args.rows, args.prompt_len, args.completion_len = 4, 8, 8
    args.repeats, args.rounds = 2, 1
  model = models.init_model(cfg)
  graphdef, params, rest = state_lib.split_model(model)
  rng = np.random.default_rng(0)
  r, p, c = args.rows, args.prompt_len, args.completion_len
  tokens = rng.integers(0, cfg.vocab_size, (r, p + c)).astype(np.int32)
  cmask = (np.arange(c)[None] < rng.integers(c // 4, c + 1, (r, 1)))
  batch = ts.RLBatch(
      tokens=jnp.asarray(tokens),
      positions=jnp.broadcast_to(jnp.arange(p + c), (r, p + c)),
      attention_mask=jnp.ones((r, p + c), jnp.int32),
      completion_mask=jnp.asarray(cmask, jnp.int32),
      old_logp=jnp.asarray(-rng.uniform(0.5, 6, (r, c)) * cmask, jnp.float32),
      advantages=jnp.asarray(rng.normal(size=(r, 1)) * cmask, jnp.float32),
      ref_logp=jnp.zeros((r, c), jnp.float32))
  loss_cfg = ts.LossConfig(policy_loss_kwargs=(("clip_ratio_c", 10.0),
                                               ("eps_high", 0.28),
                                               ("eps_low", 0.2)))
  methods = args.methods.split(",")
  if methods[0] != "none":
    sys.exit("--methods must start with 'none' (the baseline).")
  optimizer = optax.adamw(1e-4)
  steps, states = {}, {}
  compile_s = {}
  for name in ["no tracker"] + methods:
    if name == "no tracker":
      controller = optax.identity()
    else:
      e = grpo_tiny.entropy_config(name)
      controller = factories.make_controller(e)
    step = ts.make_train_step(graphdef, rest, optimizer, controller,
                              loss_cfg, donate=False)
    state = state_lib.create(params, optimizer, controller)
    key = jax.random.key(0)
    t = common.timeit(lambda: jax.block_until_ready(step(state, batch, key)),
                      1)
    compile_s[name] = t[0]
    steps[name], states[name] = step, state

  times = {name: [] for name in steps}
  key = jax.random.key(1)
  for _ in range(args.rounds):  # Interleave to spread machine noise evenly.
    for name, step in steps.items():
      times[name] += common.timeit(
          lambda: jax.block_until_ready(step(states[name], batch, key)),
          args.repeats)
  # The minimum is the least noise-sensitive estimate of a fixed program's
  # cost on a shared machine; the median is printed too.
  base = min(times["none"])
  rows = []
  for name in steps:
    med, best = common.median(times[name]), min(times[name])
    rows.append({"controller": name, "median ms": f"{1e3 * med:.1f}",
                 "min ms": f"{1e3 * best:.1f}",
                 "overhead vs none (min)": f"{100 * (best / base - 1):+.1f}%",
                 "compile s": f"{compile_s[name]:.1f}"})
  n_tok = int(cmask.sum())
  print(f"\ntrain step: {cfg.num_params() / 1e6:.1f}M params, "
        f"{args.dtype}, jax on {jax.default_backend()}, {r} rows × "
        f"{p}+{c} tokens ({n_tok} completion tokens), AdamW, "
        f"{args.rounds}×{args.repeats} timed steps each")
  common.print_table(rows, ["controller", "median ms", "min ms",
                            "overhead vs none (min)", "compile s"])
  worst = max(min(times[m]) / base - 1 for m in methods[1:])
  print(f"ratio (worst controller / none, min times): {1 + worst:.3f}  "
        "(target <= 1.05)")
  common.write_json(args.out, {
      "benchmark": "controllers", "machine": common.machine(),
      "params": cfg.num_params(), "rows": r, "prompt_len": p,
      "completion_len": c, "seconds": times, "compile_s": compile_s,
      "ratio": 1 + worst})


if __name__ == "__main__":
  main()
