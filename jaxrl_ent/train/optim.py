"""Parameter optimizer: clip → AdamW with a learning-rate schedule.

The chain order follows big_vision's `make`: global-norm clipping, then the
optimizer with its schedule (decoupled weight decay is part of AdamW). The
learning rate is injected as a hyperparameter so it sits in the optimizer
state and can be logged.
"""

import optax


def lr_schedule(peak: float, total_steps: int, warmup_steps: int = 0,
                kind: str = "constant", end_fraction: float = 0.0):
  """Warm-up then `constant` | `linear` | `cosine` decay to peak·end_fraction."""
  if peak <= 0:
    raise ValueError(f"optim.lr must be > 0, got {peak}.")
  if warmup_steps < 0 or total_steps < 1:
    raise ValueError("optim.warmup_steps must be >= 0 and total_steps >= 1.")
  decay_steps = max(total_steps - warmup_steps, 1)
  if kind == "constant":
    decay = optax.constant_schedule(peak)
  elif kind == "linear":
    decay = optax.linear_schedule(peak, peak * end_fraction, decay_steps)
  elif kind == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, end_fraction)
  else:
    raise ValueError(f"optim.schedule={kind!r}; allowed: 'constant', "
                     "'linear', 'cosine'.")
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def make_optimizer(*, lr: float, total_steps: int, warmup_steps: int = 0,
                   schedule: str = "constant", weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   grad_clip: float | None = 1.0):
  """clip_by_global_norm(grad_clip) → adamw(schedule)."""
  if grad_clip is not None and grad_clip <= 0:
    raise ValueError(f"optim.grad_clip must be > 0 or None, got {grad_clip}.")
  if weight_decay < 0:
    raise ValueError(f"optim.weight_decay must be >= 0, got {weight_decay}.")
  sched = lr_schedule(lr, total_steps, warmup_steps, schedule)
  adamw = optax.inject_hyperparams(optax.adamw)(
      learning_rate=sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
  return optax.chain(*parts, adamw)


def current_lr(opt_state) -> float | None:
  """The learning rate in an `make_optimizer` state (for logging)."""
  for s in opt_state:
    hp = getattr(s, "hyperparams", None)
    if hp is not None:
      return hp["learning_rate"]
  return None
