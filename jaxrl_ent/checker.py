"""Field-by-field checks of a ConfigDict, collected as `(field, message)`.

`Checker` is the small vocabulary the typed config blocks (`schema.Block`)
and `train/validate.py` read a config with: typed reads
(`int_`, `num`, `str_`, `bool_`, `registry`) that record a problem naming
the dotted field, the bad value and what is allowed, and remember every
field they looked at, so `unchecked_fields` can list the leaves of a config
that no check covers (a test keeps that list empty for the shipped configs).
"""

import math

import numpy as np

MISSING = object()


class ConfigError(ValueError):
  """An invalid config; `problems` is the list of `(field, message)` pairs."""

  def __init__(self, problems):
    # One line per problem, whatever a value's repr looks like.
    self.problems = [(field, " ".join(str(msg).split()))
                     for field, msg in problems]
    lines = "\n".join(f"  - {field}: {msg}" for field, msg in self.problems)
    n = len(self.problems)
    super().__init__(f"invalid config, {n} problem{'s' if n > 1 else ''}:\n"
                     f"{lines}")


def get(config, path: str):
  """`config[a][b]…` for `path = "a.b…"`, or `MISSING`."""
  node = config
  for part in path.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError, IndexError):
      return MISSING
  return node


def is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_num(v) -> bool:
  return (isinstance(v, (int, float, np.integer, np.floating))
          and not isinstance(v, bool))


def interval(low, high, low_open, high_open) -> str:
  fmt = lambda x: str(x) if isinstance(x, int) else f"{x:g}"
  lo = "-inf" if low is None else fmt(low)
  hi = "inf" if high is None else fmt(high)
  return (("(" if low_open or low is None else "[") + f"{lo}, {hi}" +
          (")" if high_open or high is None else "]"))


def _short(v) -> str:
  text = " ".join(repr(v).split())
  return text if len(text) <= 80 else text[:77] + "..."


def leaves(config, prefix: str = "") -> list[str]:
  """Dotted paths of the non-block values of a (nested) ConfigDict.

  Plain dicts inside it (e.g. `data.task_kwargs`) count as one leaf.
  """
  out = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    if hasattr(value, "items") and type(value).__name__ == "ConfigDict":
      sub = leaves(value, path + ".")
      out += sub if sub else [path]
    else:
      out.append(path)
  return out


class Checker:
  """Collects problems; every check names its dotted field."""

  def __init__(self, config):
    self.config = config
    self.problems: list[tuple[str, str]] = []
    self.seen: set[str] = set()

  def add(self, field: str, msg: str):
    self.problems.append((field, msg))

  def bad(self, field: str) -> bool:
    return any(f == field for f, _ in self.problems)

  def value(self, field: str, *, required: bool = True):
    self.seen.add(field)
    v = get(self.config, field)
    if v is MISSING and required:
      self.add(field, "missing (the trainer reads this field)")
    return v

  def bool_(self, field, required=True):
    v = self.value(field, required=required)
    if v is not MISSING and not isinstance(v, (bool, np.bool_)):
      self.add(field, f"got {_short(v)}; allowed: True or False")
      return MISSING
    return v

  def str_(self, field, *, choices=None, required=True, nonempty=False):
    v = self.value(field, required=required)
    if v is MISSING:
      return v
    if not isinstance(v, str):
      self.add(field, f"got {_short(v)} ({type(v).__name__}); allowed: a "
               "string" + (f" in {tuple(choices)}" if choices else ""))
      return MISSING
    if choices is not None and v not in choices:
      self.add(field, f"got {_short(v)}; allowed: {tuple(choices)}")
      return MISSING
    if nonempty and not v:
      self.add(field, "got ''; allowed: a non-empty string")
      return MISSING
    return v

  def int_(self, field, *, low=None, high=None, required=True,
           allow_none=False, why=""):
    """An int in [low, high]; returns it, or MISSING if absent/bad."""
    v = self.value(field, required=required)
    if v is MISSING or (allow_none and v is None):
      return v
    rng = interval(low, high, False, False)
    allowed = f"an int in {rng}" + (" or None" if allow_none else "")
    if not is_int(v):
      self.add(field, f"got {_short(v)} ({type(v).__name__}); allowed: "
               f"{allowed}{why}")
      return MISSING
    if (low is not None and v < low) or (high is not None and v > high):
      self.add(field, f"got {v}; allowed: {allowed}{why}")
      return MISSING
    return int(v)

  def num(self, field, *, low=None, high=None, low_open=False,
          high_open=False, required=True, allow_none=False, why=""):
    """A finite number in the interval."""
    v = self.value(field, required=required)
    if v is MISSING or (allow_none and v is None):
      return v
    rng = interval(low, high, low_open, high_open)
    allowed = f"a finite number in {rng}" + (" or None" if allow_none else "")
    if callable(v):
      self.add(field, f"got the callable {_short(v)}; allowed: {allowed} "
               "(a value, not a schedule: coefficients are float32 "
               "hyperparameters of the compiled update, varied over training "
               "by the config's schedule fields such as entropy.anneal)")
      return MISSING
    if not is_num(v) or not math.isfinite(float(v)):
      self.add(field, f"got {_short(v)}; allowed: {allowed}{why}")
      return MISSING
    v = float(v)
    out = ((low is not None and (v <= low if low_open else v < low)) or
           (high is not None and (v >= high if high_open else v > high)))
    if out:
      self.add(field, f"got {v:g}; allowed: {allowed}{why}")
      return MISSING
    return v

  def registry(self, field, registry_, required=True):
    v = self.value(field, required=required)
    if v is MISSING:
      return v
    if not isinstance(v, str) or v not in registry_:
      self.add(field, f"got {_short(v)}; allowed: {registry_.names()}")
      return MISSING
    return v

  def mark(self, *fields):
    """Records fields checked by hand (without the typed readers)."""
    self.seen.update(fields)

  def unchecked(self) -> list[str]:
    """Leaves of the config that no check looked at (nor a parent of)."""
    out = []
    for leaf in leaves(self.config):
      parts = leaf.split(".")
      if not any(".".join(parts[:k]) in self.seen
                 for k in range(1, len(parts) + 1)):
        out.append(leaf)
    return out
