r"""Seeds as replicas in one program vs one run per seed, in one process.

  python benchmarks/seed_sweep.py                      # 16 seeds × 20 steps
  python benchmarks/seed_sweep.py --seeds=4 --steps=3  # quick look

Both sides run the README's main job (`configs/grpo_tiny.py`, GRPO, 32
prompts × 8 samples per step) through `rl_loop.train_and_evaluate`, from
the same random initial weights per seed (`sft.steps=0`: the warm start is
the same work on both sides and would only dilute the ratio), with the
held-out evaluation shrunk to 8 greedy prompts at the start and end, and one
checkpoint at the end:

* vectorised: `--config.sweep.seeds=0:S`, S replicas stacked, one vmapped
  rollout and one vmapped `update` per step;
* sequential: S separate runs, one after another, in this process (each
  compiles its own programs, as separate runs do).

Rewards are scored on the host for every completion on both sides. Prints
the wall time of each side (compilation included: what a user waits for),
the steady-state step time and its rollout part (medians of
`perf/step_time` and `perf/time_rollout` after the first step; for the
sequential side the sums over runs), and
`seed sweep speed-up ratio: <x>` (wall time).

  python benchmarks/seed_sweep.py --rollout_only --seeds=4

times only the rollout, interleaved, at the main job's shapes (32 prompts
× 8 samples, 12 new tokens, random weights): the trainer's vmapped sampler
(the decode loop's test and the other length-dependent branches shared by
the replicas, `axis_name`), the same vmap without it (each replica's own
tests: vmap turns the loop and each `cond` into a select of the whole carry
on every token), and S sequential calls.
`--continuous=<slots>` decodes with continuous batching and `--kv_block=8`
splits the cache into several blocks, so the two other length-dependent
branches a replica axis shares (the refill, the blocks each step reads) are
in the program too.
"""

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from benchmarks import common

_SEEDS = flags.DEFINE_integer("seeds", 16, "replicas / runs")
_STEPS = flags.DEFINE_integer("steps", 20, "RL steps per run")
_OUT = flags.DEFINE_string("out", "benchmarks/results/seed_sweep.json",
                           "JSON results")
_ROLLOUT_ONLY = flags.DEFINE_bool("rollout_only", False,
                                  "time only the rollout (see docstring)")
_REPEATS = flags.DEFINE_integer("repeats", 7, "--rollout_only: timed calls")
_CONTINUOUS = flags.DEFINE_integer(
    "continuous", 0, "--rollout_only: continuous batching over this many "
    "decode slots (0: the main job's static batch)")
_KV_BLOCK = flags.DEFINE_integer(
    "kv_block", 0, "--rollout_only: cache columns per decode-attention block "
    "(0: the sampler's default, one block at the main job's shapes)")


def _config(steps):
  from configs import grpo_tiny  # pylint: disable=g-import-not-at-top
  c = grpo_tiny.get_config()
  c.train.steps = steps
  c.sft.steps = 0
  c.eval.every = 0
  c.eval.num_examples = 8
  c.eval.batch_size = 8
  c.eval.pass_k = 0
  c.checkpoint.every = steps
  c.checkpoint.async_save = False
  c.tensorboard = False
  return c


def _steady(rows, key="perf/step_time"):
  times = [r[key] for r in rows if r["step"] > 1 and key in r]
  return statistics.median(times) if times else float("nan")


def _rollout_only(s, repeats, slots=0, kv_block=0):
  """The vmapped rollout (length tests shared / per replica) vs S calls.

  The side labels (also the JSON keys) say "loop test" for all three
  shared tests: the loop's, the refill's and the block count's."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxrl_ent import models  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.rl import state as state_lib  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.rollout import sampler  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.train import policy_setup  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.train import rl_loop  # pylint: disable=g-import-not-at-top
  c = _config(1)
  # The main job's model; only the tokenizer's size is read from it (random
  # prompts here, no tokenizer to train).
  cfg = policy_setup.tiny_model_config(c, range(c.data.tokenizer_vocab_size))
  splits = [state_lib.split_model(models.init_model(cfg, seed=i))
            for i in range(s)]
  graphdef, _, rest = splits[0]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *[x[1] for x in splits])
  params = sampler.SamplingParams(
      max_new_tokens=c.rollout.max_new_tokens, n_samples=c.rollout.n_samples,
      return_entropy=True, stop_token_ids=(1,), pad_id=0,
      continuous=slots > 0, num_slots=slots, decode_attention="blockwise",
      **({"kv_block": kv_block} if kv_block else {}))
  rng = np.random.default_rng(0)
  prompts, plen = c.train.prompts_per_step, 16
  tokens = rng.integers(2, cfg.vocab_size, (s, prompts, plen), np.int32)
  mask = np.ones_like(tokens)
  mask[:, :, :4] = 0  # left padding
  keys = jax.random.split(jax.random.key(0), s)

  def one(p, t, mk, k):
    return sampler.generate_arrays(nnx.merge(graphdef, p, rest), t, mk, k,
                                   params)
  shared = rl_loop._stacked_generate(graphdef, rest, params)  # pylint: disable=protected-access
  own = jax.jit(jax.vmap(one))
  single = jax.jit(one)
  sides = {
      "vmap, shared loop test (trainer)": lambda: shared(
          stacked, tokens, mask, keys),
      "vmap, per-replica loop test": lambda: own(stacked, tokens, mask, keys),
      f"sequential ({s} calls)": lambda: [
          single(splits[i][1], tokens[i], mask[i], keys[i])
          for i in range(s)]}
  for fn in sides.values():  # compile
    jax.block_until_ready(fn())
  times = {k: [] for k in sides}
  for _ in range(repeats):  # interleaved
    for k, fn in sides.items():
      times[k].extend(common.timeit(lambda fn=fn: jax.block_until_ready(fn()),
                                    1))
  med = {k: statistics.median(v) for k, v in times.items()}
  print(f"rollout of {s} replicas: {prompts} prompts × "
        f"{params.n_samples} samples × {params.max_new_tokens} new tokens, "
        f"{f'{slots} slots' if slots else 'static batch'}, kv_block "
        f"{params.kv_block}, median of {repeats} interleaved calls")
  common.print_table([{"side": k, "ms": f"{v * 1e3:.1f}"}
                      for k, v in med.items()], ["side", "ms"])
  names = list(med)
  print(f"rollout sequential / vmap shared test: "
        f"{med[names[2]] / med[names[0]]:.2f}x; per-replica test / shared: "
        f"{med[names[1]] / med[names[0]]:.2f}x")
  return {"seeds": s, "num_slots": slots, "kv_block": params.kv_block,
          "rollout_median_s": med}


def main(argv):
  del argv
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty.
  from jaxrl_ent.train import metrics  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.train import rl_loop  # pylint: disable=g-import-not-at-top
  s, steps = _SEEDS.value, _STEPS.value
  if _ROLLOUT_ONLY.value:
    out = _rollout_only(s, _REPEATS.value, _CONTINUOUS.value,
                        _KV_BLOCK.value)
    common.write_json(_OUT.value, {"machine": common.machine(), **out})
    return
  root = tempfile.mkdtemp(prefix="seed_sweep_")

  config = _config(steps)
  config.sweep.seeds = f"0:{s}"
  start = time.perf_counter()
  rl_loop.train_and_evaluate(config, f"{root}/vectorised")
  vec_wall = time.perf_counter() - start
  vec_rows = metrics.read_jsonl(f"{root}/vectorised/replicas/seed0")
  vec_step = _steady(vec_rows)
  vec_roll = _steady(vec_rows, "perf/time_rollout")

  start = time.perf_counter()
  seq_steps, seq_rolls = [], []
  for seed in range(s):
    config = _config(steps)
    config.seed = seed
    rl_loop.train_and_evaluate(config, f"{root}/seed{seed}")
    rows = metrics.read_jsonl(f"{root}/seed{seed}")
    seq_steps.append(_steady(rows))
    seq_rolls.append(_steady(rows, "perf/time_rollout"))
  seq_wall = time.perf_counter() - start

  rows = [{"side": "vectorised (one program)", "wall_s": f"{vec_wall:.1f}",
           "step_s": f"{vec_step:.3f}", "rollout_s": f"{vec_roll:.3f}"},
          {"side": f"sequential ({s} runs)", "wall_s": f"{seq_wall:.1f}",
           "step_s": f"{sum(seq_steps):.3f}",
           "rollout_s": f"{sum(seq_rolls):.3f}"}]
  print(f"{s} seeds × {steps} RL steps of configs/grpo_tiny.py "
        f"(step_s: steady-state time of one RL step of all seeds; "
        f"rollout_s: its rollout)")
  common.print_table(rows, ["side", "wall_s", "step_s", "rollout_s"])
  ratio = seq_wall / vec_wall
  print(f"steady-state step speed-up ratio: {sum(seq_steps) / vec_step:.2f}")
  print(f"seed sweep speed-up ratio: {ratio:.2f}")
  common.write_json(_OUT.value, {
      "machine": common.machine(), "seeds": s, "steps": steps,
      "vectorised_wall_s": vec_wall, "sequential_wall_s": seq_wall,
      "vectorised_step_s": vec_step, "sequential_step_s": sum(seq_steps),
      "vectorised_rollout_s": vec_roll,
      "sequential_rollout_s": sum(seq_rolls), "speedup": ratio})


if __name__ == "__main__":
  app.run(main)
