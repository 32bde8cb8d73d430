"""Coefficient schedules (`count -> value`) and the argument checks shared by
the controllers.

Annealing the control coefficient, `β_t → 0`, is what makes covariance-based
(and entropy-regularised) updates asymptotically unbiased
(entropy_methods.md §1.6); a schedule here is a plain optax schedule, and a
controller evaluates it at its own `state.count`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def concrete(value):
  """`value` as a float64 numpy array, or None for tracers and schedules.

  Factories are called inside `jax.vmap` when sweeping a coefficient; traced
  values cannot be checked at construction time and are passed through.
  """
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  return np.asarray(value, np.float64)


def check_range(name, value, *, low=None, high=None, low_open=False,
                high_open=False):
  """Raises ValueError naming `name` unless `low (<|≤) value (<|≤) high`.

  Non-finite values always fail. Schedules and tracers are not checked.
  """
  v = concrete(value)
  if v is None:
    return
  ok = bool(np.all(np.isfinite(v)))
  if low is not None:
    ok &= bool(np.all(v > low if low_open else v >= low))
  if high is not None:
    ok &= bool(np.all(v < high if high_open else v <= high))
  if not ok:
    lo = "-inf" if low is None else f"{low}"
    hi = "inf" if high is None else f"{high}"
    interval = ("(" if low_open or low is None else "[") + f"{lo}, {hi}" + (
        ")" if high_open or high is None else "]")
    raise ValueError(f"{name} must be finite and in {interval}, got {value}.")


def as_schedule(value):
  """A float/array becomes a constant schedule; a callable is returned as is."""
  if callable(value):
    return value
  return lambda count: jnp.asarray(value, jnp.float32)


def _check_steps(name, steps):
  if not isinstance(steps, (int, np.integer)) or steps <= 0:
    raise ValueError(f"{name} must be a positive int, got {steps!r}.")


def constant(value):
  """`β_t = value`. Biased at any fixed point when value > 0 (§1.6)."""
  check_range("value", value)
  return optax.constant_schedule(value)


def linear(init_value, end_value, transition_steps, transition_begin=0):
  """Linear ramp `init → end` over `transition_steps`, constant after.

  Args:
    init_value: value for `count ≤ transition_begin`.
    end_value: value for `count ≥ transition_begin + transition_steps`.
    transition_steps: positive int.
    transition_begin: non-negative int, steps held at `init_value`.
  """
  check_range("init_value", init_value)
  check_range("end_value", end_value)
  _check_steps("transition_steps", transition_steps)
  if (not isinstance(transition_begin, (int, np.integer))
      or transition_begin < 0):
    raise ValueError("transition_begin must be a non-negative int, got "
                     f"{transition_begin!r}.")
  return optax.linear_schedule(init_value, end_value, transition_steps,
                               transition_begin)


def cosine(init_value, decay_steps, alpha=0.0):
  """Cosine decay `β_0 [(1 − α)(1 + cos(π t / S))/2 + α]`, then `α β_0`.

  Args:
    init_value: `β_0`.
    decay_steps: positive int `S`.
    alpha: final fraction of `β_0`, in [0, 1].
  """
  check_range("init_value", init_value)
  _check_steps("decay_steps", decay_steps)
  check_range("alpha", alpha, low=0.0, high=1.0)
  return optax.cosine_decay_schedule(init_value, decay_steps, alpha)


def inverse_power(init_value, tau, power):
  """`β_t = β_0 (1 + t/τ)^{−p}` (entropy_methods.md §1.6, §5 `annealed`).

  Strong early, while entropy collapses, and vanishing later. `β_t → 0` for
  any `p > 0`; with a step size `η_t ∝ (1 + t)^{−q}` the stronger condition
  `Σ η_t β_t < ∞` needs `p + q > 1`. The recommended range is `p ∈ (0, 1]`.

  Args:
    init_value: `β_0 ≥ 0`.
    tau: time scale `τ > 0` in steps.
    power: exponent `p > 0`.

  Returns:
    An optax schedule, float32.
  """
  check_range("init_value", init_value, low=0.0)
  check_range("tau", tau, low=0.0, low_open=True)
  check_range("power", power, low=0.0, low_open=True)

  def schedule(count):
    t = jnp.asarray(count, jnp.float32)
    return jnp.asarray(init_value, jnp.float32) * (1.0 + t / tau) ** (-power)

  return schedule

