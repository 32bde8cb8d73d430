"""Text and JSON summaries of an AOT check (what `launch/aot_check.py` prints)."""

from jaxrl_ent.aot import programs as programs_lib

GiB = 1024**3


def _gib(n) -> str:
  return f"{n / GiB:.2f}"


def format_reports(setup: programs_lib.Setup, reports, estimate) -> str:
  """A per-program table plus the step estimate, as printed by aot_check."""
  chip, topo, s = setup.topology.chip, setup.topology, setup.sizes
  state = programs_lib.state_bytes(setup)
  lines = [
      f"config job={setup.config.get('job', '?')}  topology={topo.name} "
      f"({topo.num_chips} chips, {topo.num_hosts} host(s), "
      f"{chip.device_kind})  mesh={dict(setup.mesh.shape)}",
      f"model {setup.model_cfg.model_type}: "
      f"{setup.model_cfg.num_params() / 1e9:.3f}B params, "
      f"remat={setup.model_cfg.effective_remat_policy}, attention="
      f"{setup.model_cfg.attention_impl}; params {_gib(state['params'])} GiB + "
      f"optimizer {_gib(state['opt_state'])} GiB (global)" + (
          f"; LoRA: frozen base {_gib(state['frozen'])} GiB, adapters "
          f"{state['params'] / 1e6:.1f} MB" if state["frozen"] else "") + (
          f"; critic ({setup.critic.kind}) params + optimizer "
          f"{_gib(state['critic'])} GiB" if state.get("critic") else ""),
      f"batch: {s.prompts} prompts x {s.n_samples} = {s.rows} rows of "
      f"{s.prompt_len}+{s.new_tokens} tokens; train calls of "
      f"{s.minibatch_rows} rows = {s.minibatch_rows // s.micro_rows} x "
      f"{s.micro_rows}-row micro-batches, {s.updates} per step",
      f"chip: HBM {_gib(chip.hbm_bytes)} GiB, peak {chip.peak_flops / 1e12:.0f}"
      f" TFLOP/s bf16, {chip.hbm_bandwidth / 1e9:.0f} GB/s ({chip.source})",
      "",
      f"{'program':8} {'fits':4} {'args':>7} {'out':>7} {'alias':>7} "
      f"{'temp':>7} {'total':>7} {'HBM':>6}  {'TFLOP/dev':>9} "
      f"{'xlaTFLOP':>8} {'xlaGB':>7} {'estGB':>7} {'ms':>9} {'bound':6} "
      f"{'calls':>5}  collectives (ag/rs/ar/a2a/cp)",
  ]
  for r in reports:
    if r.roofline is None:
      lines.append(f"{r.name:8} {'NO':4} {'':>7} {'':>7} {'':>7} {'':>7} "
                   f"{_gib(r.total_bytes) if r.total_bytes else '?':>7} "
                   f"{_gib(r.hbm_capacity):>6}  {r.flops_global / setup.mesh.size / 1e12:9.3f}"
                   f"  compile refused: {r.error}")
      continue
    c = r.collectives
    lines.append(
        f"{r.name:8} {'yes' if r.fits else 'NO':4} {_gib(r.argument_bytes):>7} "
        f"{_gib(r.output_bytes):>7} {_gib(r.alias_bytes):>7} "
        f"{_gib(r.temp_bytes):>7} {_gib(r.total_bytes):>7} "
        f"{_gib(r.hbm_capacity):>6}  {r.roofline.flops / 1e12:9.3f} "
        f"{r.xla_flops / 1e12:8.3f} {r.xla_bytes / 1e9:7.2f} "
        f"{r.roofline.hbm_bytes / 1e9:7.2f} {r.roofline.seconds * 1e3:9.2f} "
        f"{r.roofline.bound:6} {r.calls_per_step:5g}  "
        f"{c['all-gather']}/{c['reduce-scatter']}/{c['all-reduce']}/"
        f"{c['all-to-all']}/{c['collective-permute']}")
  lines.append("")
  for r in reports:
    if r.custom_calls:
      calls = ", ".join(f"{k} x{v}" for k, v in sorted(r.custom_calls.items()))
      lines.append(f"custom calls in {r.name}: {calls}")
  lines.append("memory: per device, from compiled.memory_analysis(); total = "
               "args + out - alias (donated) + temp + code. TFLOP/dev: "
               "loop-exact matmul FLOPs / devices; xla*: cost_analysis() "
               "(loop bodies once).")
  if estimate is None:
    lines.append("step estimate: unavailable (a program did not compile).")
  else:
    parts = ", ".join(f"{k} {v:.2f}s" for k, v in estimate.per_program.items())
    lines.append(f"roofline step time {estimate.seconds:.2f} s ({parts}); "
                 f"{estimate.tokens} tokens/step -> "
                 f"{estimate.tokens_per_s:,.0f} tokens/s "
                 f"({estimate.tokens_per_s / setup.topology.num_chips:,.0f} "
                 "per chip)")
  worst = max(reports, key=lambda r: r.total_bytes)
  fits = all(r.fits for r in reports)
  lines.append(f"{'FITS' if fits else 'DOES NOT FIT'}: peak per-device "
               f"{_gib(worst.total_bytes)} GiB ({worst.name}) of "
               f"{_gib(chip.hbm_bytes)} GiB HBM")
  return "\n".join(lines)


def to_dict(setup, reports, estimate) -> dict:
  """JSON-ready summary (for tables and CI artefacts)."""
  return {
      "job": setup.config.get("job", ""),
      "topology": setup.topology.name,
      "chips": setup.topology.num_chips,
      "mesh": dict(setup.mesh.shape),
      "hbm_bytes": setup.topology.chip.hbm_bytes,
      "fits": all(r.fits for r in reports),
      "peak_bytes": max(r.total_bytes for r in reports),
      "step_seconds": None if estimate is None else estimate.seconds,
      "tokens_per_s": None if estimate is None else estimate.tokens_per_s,
      "programs": {r.name: {
          "fits": r.fits, "total_bytes": r.total_bytes,
          "argument_bytes": r.argument_bytes, "output_bytes": r.output_bytes,
          "alias_bytes": r.alias_bytes, "temp_bytes": r.temp_bytes,
          "xla_flops": r.xla_flops, "xla_bytes": r.xla_bytes,
          "flops_per_device": (r.roofline.flops if r.roofline else None),
          "seconds": (r.roofline.seconds if r.roofline else None),
          "collectives": r.collectives, "custom_calls": r.custom_calls,
          "compile_s": r.compile_s,
          "error": r.error} for r in reports},
  }
