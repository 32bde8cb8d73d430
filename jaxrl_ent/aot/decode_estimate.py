"""Decode step time against cache fill, and rollout time under long-tail
lengths, for a TPU config (ahead of time, no TPU needed).

The rollout's decode attention reads only the filled part of each slot's
cache (`models.decode_attention`), so a step's cost grows with the fill. A
compiled program's FLOPs and bytes are static, so the step at fill f is
compiled as the decode step over a cache f·(P + C) columns wide (the
whole-cache attention over that width reads what the length-aware one
reads at that fill). Its roofline time is measured at 10 %, 50 % and 100 %
fill, for the static batch (R slots) and for continuous batching
(`rollout.num_slots` slots), and the rollout's decode time is then summed
step by step over a simulated schedule of rows whose lengths are geometric
with mean C/8, capped at C (the distribution `benchmarks/rollout.py
--long_tail` uses):

  static, whole cache      max(L) steps at the 100 % step time (before)
  static, length-aware     step t at fill (P + t + 1) / (P + C)
  continuous, S slots      slots refilled as rows stop; step fill = that of
                           the slot furthest along (what the XLA blockwise
                           kernel reads; a ragged kernel would read less)

Prefill is the same in all three and is left out. Step times between the
measured fills are interpolated linearly.

Two step times are given per fill: the AOT check's roofline (bytes from
XLA's cost analysis, which counts each per-slot cache write — a scatter —
as touching the whole cache array, so it is pessimistic for an in-place
update) and a lower bound from the bytes the step must move at least once
(its arguments and outputs: weights, the filled cache, logits).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_ent import sharding
from jaxrl_ent.aot import programs
from jaxrl_ent.models import decoder
from jaxrl_ent.rollout import sampler

FILLS = (0.1, 0.5, 1.0)


@dataclasses.dataclass
class DecodeEstimate:
  """Step times per fill and the estimated decode time of one rollout."""
  rows: int
  slots: int
  prompt_len: int
  new_tokens: int
  step_s: dict            # {"static"|"continuous": {fill: seconds}}
  step_lb_s: dict         # same, lower bound from argument/output bytes
  fits: dict              # same keys: every program fits in HBM
  mean_length: float
  max_length: int
  steps: dict             # schedule -> decode steps
  rollout_s: dict         # schedule -> seconds
  rollout_lb_s: dict      # schedule -> seconds from the lower bounds

  def format(self) -> str:
    lines = [f"decode step vs cache fill (roofline, {self.rows} rows, "
             f"P {self.prompt_len} + C {self.new_tokens}):"]
    for kind, per in self.step_s.items():
      slots = self.rows if kind == "static" else self.slots
      cells = ", ".join(
          f"{int(f * 100)} % {t * 1e3:.2f} ms (>= "
          f"{self.step_lb_s[kind][f] * 1e3:.2f})" for f, t in per.items())
      lines.append(f"  {kind:<10} ({slots} slots): {cells}"
                   + ("" if self.fits[kind] else "  (DOES NOT FIT)"))
    lines.append(f"rollout decode time, lengths geometric mean C/8 capped "
                 f"(drawn mean {self.mean_length:.0f}, max "
                 f"{self.max_length}):")
    base = self.rollout_s["static, whole cache"]
    base_lb = self.rollout_lb_s["static, whole cache"]
    for name, t in self.rollout_s.items():
      lb = self.rollout_lb_s[name]
      lines.append(f"  {name:<26} {self.steps[name]:>7} steps  {t:8.1f} s"
                   f" ({base / t:.2f}x)   lower bound {lb:8.1f} s"
                   f" ({base_lb / lb:.2f}x)")
    return "\n".join(lines)


def _carry(setup, slots: int, width: int):
  """Abstract `DecodeCarry` (+ prompt lengths) of `slots` × `width` columns,
  laid out as the rollout's (rows over data × fsdp, kv heads over tensor)."""
  cfg, s = setup.model_cfg, setup.sizes
  rows, c = s.rows, s.new_tokens

  def arr(shape, dtype):
    x = jax.ShapeDtypeStruct(shape, dtype)
    return jax.ShapeDtypeStruct(shape, dtype,
                                sharding=programs._carry_sharding(setup, x))  # pylint: disable=protected-access
  kh, h, n = cfg.num_kv_heads, cfg.head_dim, cfg.num_layers
  cache = decoder.SlotCache(
      k=tuple(arr((slots, kh, h, width), cfg.dtype) for _ in range(n)),
      v=tuple(arr((slots, kh, width, h), cfg.dtype) for _ in range(n)),
      lengths=arr((slots,), jnp.int32), starts=arr((slots,), jnp.int32))
  carry = sampler.DecodeCarry(
      logits=arr((slots, cfg.vocab_size), jnp.float32), cache=cache,
      out_tok=arr((rows, c), jnp.int32), out_logp=arr((rows, c), jnp.float32),
      out_ent=arr((rows, c), jnp.float32), done=arr((slots,), bool),
      slot_row=arr((slots,), jnp.int32))
  return arr((slots,), jnp.int32), carry


def step_time(setup, slots: int, fill: float, lockstep: bool = True
              ) -> programs.Report:
  """Compiles the decode step of `slots` slots at cache fill `fill`
  (`lockstep`: the static batch's writes; else continuous, per-slot)."""
  s = setup.sizes
  sp = dataclasses.replace(programs.sampling_params(setup.config),
                           decode_attention="full")
  width = max(8, int(round(fill * (s.prompt_len + s.new_tokens) / 8)) * 8)
  weights = programs._abstract_decode_weights(setup)  # pylint: disable=protected-access
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=(
      jax.sharding.NamedSharding(setup.mesh, jax.sharding.PartitionSpec())))
  prompt_len, carry = _carry(setup, slots, width)

  def decode(params, weights, prompt_len, carry, key):
    del params
    return sampler.decode_step(weights, key, prompt_len, carry, params=sp,
                               lockstep=lockstep)
  with sharding.use_mesh(setup.mesh, setup.rules):
    traced = jax.jit(decode, donate_argnums=(3,), keep_unused=True).trace(
        setup.state.params, weights, prompt_len, carry, key)
  return programs.compile_program(setup, programs.Program(
      f"decode@{int(fill * 100)}%", traced, 1, 1))


def long_tail_lengths(rows: int, budget: int, seed: int = 0) -> np.ndarray:
  """Per-row stop lengths: geometric with mean budget / 8, capped."""
  rng = np.random.default_rng(seed)
  return np.minimum(rng.geometric(min(1.0, 8.0 / budget), rows), budget)


def continuous_schedule(lengths, slots: int) -> list[int]:
  """Per decode step, the tokens done by the slot furthest along (1-based).

  Rows enter slots in order; a slot whose row stops takes the next row at
  the next step (as `sampler.refill` does).
  """
  lengths = list(lengths)
  queue = iter(range(len(lengths)))
  cur = [next(queue, None) for _ in range(slots)]
  pos = [0] * slots
  out = []
  while any(r is not None for r in cur):
    pos = [p + 1 if r is not None else 0 for p, r in zip(pos, cur)]
    out.append(max(pos))
    for i, r in enumerate(cur):
      if r is not None and pos[i] >= lengths[r]:
        cur[i], pos[i] = next(queue, None), 0
  return out


def estimate(config, setup=None, seed: int = 0) -> DecodeEstimate:
  """Compiles the decode step at each of `FILLS` and sums the schedules."""
  setup = setup or programs.build_setup(config)
  s = setup.sizes
  r = config.rollout
  slots = sampler.SamplingParams(
      max_new_tokens=s.new_tokens, continuous=True,
      num_slots=int(r.get("num_slots", 0))).slots(s.rows)
  chip = setup.topology.chip
  step_s, step_lb_s, fits = {}, {}, {}
  for kind, n in (("static", s.rows), ("continuous", slots)):
    reports = [step_time(setup, n, f, lockstep=kind == "static")
               for f in FILLS]
    fits[kind] = all(rep.fits for rep in reports)
    step_s[kind] = {f: (rep.roofline.seconds if rep.roofline else float("nan"))
                    for f, rep in zip(FILLS, reports)}
    step_lb_s[kind] = {
        f: max(rep.roofline.flops / chip.peak_flops,
               (rep.argument_bytes + rep.output_bytes - rep.alias_bytes) /
               chip.hbm_bandwidth) if rep.roofline else float("nan")
        for f, rep in zip(FILLS, reports)}
  lengths = long_tail_lengths(s.rows, s.new_tokens, seed)
  width = s.prompt_len + s.new_tokens

  def total(kind, tokens_done, table=None):
    fills = (s.prompt_len + np.asarray(tokens_done)) / width
    per = (table or step_s)[kind]
    return float(np.interp(fills, list(per), list(per.values())).sum())

  longest = int(lengths.max())
  static_done = np.arange(1, longest + 1)
  cont_done = continuous_schedule(lengths, slots)
  steps = {"static, whole cache": longest,
           "static, length-aware": longest,
           f"continuous, {slots} slots": len(cont_done)}
  rollout_s, rollout_lb_s = {}, {}
  for out, table in ((rollout_s, step_s), (rollout_lb_s, step_lb_s)):
    out["static, whole cache"] = longest * table["static"][1.0]
    out["static, length-aware"] = total("static", static_done, table)
    out[f"continuous, {slots} slots"] = total("continuous", cont_done, table)
  return DecodeEstimate(
      rows=s.rows, slots=slots, prompt_len=s.prompt_len,
      new_tokens=s.new_tokens, step_s=step_s, step_lb_s=step_lb_s, fits=fits,
      mean_length=float(lengths.mean()), max_length=longest, steps=steps,
      rollout_s=rollout_s, rollout_lb_s=rollout_lb_s)
