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
                           kernel reads)

With the Pallas TPU kernel (`decode_attention.pallas_tpu`, what `auto`
picks on TPU for a head dim that is a multiple of 128) the steps are
compiled with it and each slot reads only its own fill: both length-aware
schedules then use the mean fill over slots (a stopped row's slot reads one
column) instead of the max; the whole-cache baseline stays the XLA step.

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
      slots = self.slots if kind == "continuous" else self.rows
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


def _carry(setup, slots: int, width: int, token_major: bool = False):
  """Abstract `DecodeCarry` (+ prompt lengths) of `slots` × `width` columns,
  laid out as the rollout's (rows over data × fsdp, kv heads over tensor;
  keys [.., S, H] with `token_major`, the Pallas TPU kernel's)."""
  cfg, s = setup.model_cfg, setup.sizes
  rows, c = s.rows, s.new_tokens

  def arr(shape, dtype):
    x = jax.ShapeDtypeStruct(shape, dtype)
    return jax.ShapeDtypeStruct(shape, dtype,
                                sharding=programs._carry_sharding(setup, x))  # pylint: disable=protected-access
  kh, h, n = cfg.num_kv_heads, cfg.head_dim, cfg.num_layers
  cache = decoder.SlotCache(
      k=tuple(arr((slots, kh, width, h) if token_major else
                  (slots, kh, h, width), cfg.dtype) for _ in range(n)),
      v=tuple(arr((slots, kh, width, h), cfg.dtype) for _ in range(n)),
      lengths=arr((slots,), jnp.int32), starts=arr((slots,), jnp.int32))
  carry = sampler.DecodeCarry(
      logits=arr((slots, cfg.vocab_size), jnp.float32), cache=cache,
      out_tok=arr((rows, c), jnp.int32), out_logp=arr((rows, c), jnp.float32),
      out_ent=arr((rows, c), jnp.float32), done=arr((slots,), bool),
      slot_row=arr((slots,), jnp.int32))
  return arr((slots,), jnp.int32), carry


def step_time(setup, slots: int, fill: float, lockstep: bool = True,
              impl: str = "full") -> programs.Report:
  """Compiles the decode step of `slots` slots at cache fill `fill`
  (`lockstep`: the static batch's writes; else continuous, per-slot) with
  decode attention `impl`."""
  s = setup.sizes
  sp = dataclasses.replace(programs.sampling_params(setup.config),
                           decode_attention=impl)
  width = max(8, int(round(fill * (s.prompt_len + s.new_tokens) / 8)) * 8)
  if impl == "pallas_tpu":  # The kernel's block (`cache_width`) divides W.
    width = sampler.cache_width(s.prompt_len, sp)[0] if fill >= 1 else (
        -(-width // sp.kv_block) * sp.kv_block)
  weights = programs._abstract_decode_weights(setup)  # pylint: disable=protected-access
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=(
      jax.sharding.NamedSharding(setup.mesh, jax.sharding.PartitionSpec())))
  prompt_len, carry = _carry(setup, slots, width,
                             decoder_token_major(impl))

  def decode(params, weights, prompt_len, carry, key):
    del params
    return sampler.decode_step(weights, key, prompt_len, carry, params=sp,
                               lockstep=lockstep)
  with sharding.use_mesh(setup.mesh, setup.rules):
    traced = jax.jit(decode, donate_argnums=(3,), keep_unused=True).trace(
        setup.state.params, weights, prompt_len, carry, key)
  return programs.compile_program(setup, programs.Program(
      f"decode@{int(fill * 100)}%", traced, 1, 1))


def decoder_token_major(impl: str) -> bool:
  from jaxrl_ent.models import decode_attention  # pylint: disable=g-import-not-at-top
  return decode_attention.token_major_keys(impl)


def long_tail_lengths(rows: int, budget: int, seed: int = 0) -> np.ndarray:
  """Per-row stop lengths: geometric with mean budget / 8, capped."""
  rng = np.random.default_rng(seed)
  return np.minimum(rng.geometric(min(1.0, 8.0 / budget), rows), budget)


def continuous_schedule(lengths, slots: int, ragged: bool = False) -> list:
  """Per decode step, the tokens done by the slot furthest along (1-based),
  or with `ragged` the mean over slots (what a per-slot kernel reads; an
  idle slot counts as 0).

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
    out.append(sum(pos) / slots if ragged else max(pos))
    for i, r in enumerate(cur):
      if r is not None and pos[i] >= lengths[r]:
        cur[i], pos[i] = next(queue, None), 0
  return out


def static_ragged_schedule(lengths) -> np.ndarray:
  """Per step of the static batch, the mean over rows of the tokens each
  row has done (a stopped row's slot reads one column: counted as 0)."""
  lengths = np.asarray(lengths)
  t = np.arange(1, int(lengths.max()) + 1)
  return np.where(t[:, None] <= lengths[None, :], t[:, None], 0).mean(1)


def estimate(config, setup=None, seed: int = 0) -> DecodeEstimate:
  """Compiles the decode step at each of `FILLS` and sums the schedules.

  With the Pallas TPU kernel (`rollout.decode_attention` `auto` for a head
  dim that is a multiple of 128, or `pallas_tpu`) the steps are compiled
  with it (per-slot writes; XLA counts the kernel's whole cache operands as
  read, so the step at width f·W is the step at fill f), and each slot reads
  its own fill: the schedules use the mean fill over slots, not the max.
  The "static, whole cache" baseline stays the whole-cache XLA step.
  """
  from jaxrl_ent.models import decode_attention  # pylint: disable=g-import-not-at-top
  setup = setup or programs.build_setup(config)
  s = setup.sizes
  r = config.rollout
  impl = decode_attention.resolve(
      str(r.get("decode_attention", "auto")), "tpu",
      kv_int8=bool(r.get("kv_int8", False)),
      head_dim=setup.model_cfg.head_dim)
  kernel = impl == "pallas_tpu"
  step_impl = impl if kernel else "full"
  slots = sampler.SamplingParams(
      max_new_tokens=s.new_tokens, continuous=True,
      num_slots=int(r.get("num_slots", 0))).slots(s.rows)
  chip = setup.topology.chip
  step_s, step_lb_s, fits = {}, {}, {}
  kinds = [("static", s.rows), ("continuous", slots)]
  if kernel:
    kinds.append(("whole cache", s.rows))
  for kind, n in kinds:
    fills = (1.0,) if kind == "whole cache" else FILLS
    reports = [step_time(setup, n, f, lockstep=kind != "continuous",
                         impl="full" if kind == "whole cache" else step_impl)
               for f in fills]
    fits[kind] = all(rep.fits for rep in reports)
    step_s[kind] = {f: (rep.roofline.seconds if rep.roofline else float("nan"))
                    for f, rep in zip(fills, reports)}
    step_lb_s[kind] = {
        f: max(rep.roofline.flops / chip.peak_flops,
               (rep.argument_bytes + rep.output_bytes - rep.alias_bytes) /
               chip.hbm_bandwidth) if rep.roofline else float("nan")
        for f, rep in zip(fills, reports)}
  lengths = long_tail_lengths(s.rows, s.new_tokens, seed)
  width = s.prompt_len + s.new_tokens

  def total(kind, tokens_done, table=None):
    fills = (s.prompt_len + np.asarray(tokens_done)) / width
    per = (table or step_s)[kind]
    return float(np.interp(fills, list(per), list(per.values())).sum())

  longest = int(lengths.max())
  static_done = (static_ragged_schedule(lengths) if kernel
                 else np.arange(1, longest + 1))
  cont_done = continuous_schedule(lengths, slots, ragged=kernel)
  tag = f" ({impl})" if kernel else ""
  steps = {"static, whole cache": longest,
           f"static, length-aware{tag}": longest,
           f"continuous, {slots} slots{tag}": len(cont_done)}
  rollout_s, rollout_lb_s = {}, {}
  for out, table in ((rollout_s, step_s), (rollout_lb_s, step_lb_s)):
    out["static, whole cache"] = longest * table[
        "whole cache" if kernel else "static"][1.0]
    out[f"static, length-aware{tag}"] = total("static", static_done, table)
    out[f"continuous, {slots} slots{tag}"] = total("continuous", cont_done,
                                                   table)
  return DecodeEstimate(
      rows=s.rows, slots=slots, prompt_len=s.prompt_len,
      new_tokens=s.new_tokens, step_s=step_s, step_lb_s=step_lb_s, fits=fits,
      mean_length=float(lengths.mean()), max_length=longest, steps=steps,
      rollout_s=rollout_s, rollout_lb_s=rollout_lb_s)
