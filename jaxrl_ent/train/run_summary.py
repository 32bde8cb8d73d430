"""The few lines a person reads when a run ends (also `<run dir>/summary.txt`).

Before → after for the held-out numbers and the rollout entropy (the
collapse this project is about), the wall time, and where the metrics,
TensorBoard events, checkpoints and plots are.
"""

import math

from jaxrl_ent import storage


def _fmt(x) -> str:
  return "—" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _minutes(seconds: float) -> str:
  m, s = divmod(int(round(seconds)), 60)
  return f"{m} min {s:02d} s" if m else f"{s} s"


def entropy_before_after(rows) -> tuple[float | None, float | None]:
  """Rollout entropy of the first logged step and the mean of the last
  tenth of the steps (a single step's value is noisy)."""
  h = [r["rollout/entropy"] for r in rows
       if isinstance(r.get("rollout/entropy"), float)]
  if not h:
    return None, None
  tail = h[-max(1, len(h) // 10):]
  return h[0], sum(tail) / len(tail)


def text(summary: dict, rows, run_dir, *, wall_s: float,
         tensorboard: bool) -> str:
  """The end-of-run summary of one run (`rows`: its metrics.jsonl rows)."""
  run_dir = storage.path(run_dir)
  init = summary.get("initial_eval", {})
  final = summary.get("final_eval", {})
  n = int(final.get("val/num_prompts", init.get("val/num_prompts", 0)))
  lines = [f"run finished: {summary.get('steps', '?')} RL steps, "
           f"{_minutes(wall_s)} wall (this launch, warm start included)",
           f"held-out ({n} prompts)            before → after"]
  names = [("val/greedy_acc", "greedy accuracy")]
  names += [(k, k.split("/", 1)[1].replace("_", " ").replace("pass at ",
                                                               "pass@"))
            for k in sorted(final) if k.startswith("val/pass_at_")]
  names.append(("val/greedy_reward", "greedy reward"))
  for key, label in names:
    if key in final or key in init:
      lines.append(f"  {label:<30} {_fmt(init.get(key))} → "
                   f"{_fmt(final.get(key))}")
  h0, h1 = entropy_before_after(rows)
  if h0 is not None:
    change = (f" ({(h1 - h0) / h0:+.0%})" if h0 else "")
    lines.append(f"  {'rollout entropy (nats/token)':<30} {_fmt(h0)} → "
                 f"{_fmt(h1)}{change}")
  lines.append(f"metrics:     {run_dir / 'metrics.jsonl'}")
  if tensorboard:
    lines.append(f"TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
  lines.append(f"checkpoints: {run_dir / 'ckpt'}")
  lines.append(f"plots:       python launch/analyze.py --workdirs={run_dir} "
               f"--out={run_dir / 'analysis'}")
  return "\n".join(lines)
