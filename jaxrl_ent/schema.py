"""Typed, frozen config blocks, and name registries with parameter classes.

A config block is a frozen dataclass whose fields carry their own rule
(type, range, allowed names, whether the update reads it as a sweepable
coefficient): `Block.check(c, prefix)` reads the block's fields from a
ConfigDict through `checker.Checker`, records one `(field, message)` per bad
value, adds the block's cross-field rules (`problems`), and returns the
typed instance, so the rules of a field are written once, beside the field,
and the factories read typed values instead of `cfg.get(name, default)`.

`Registry` is the name → entry style of the config's choices: entropy
methods, advantage estimators, policy losses, KL kinds and aggregation
modes register a callable and, when the entry reads config fields, the
`Block` class of those parameters. (Rewards keep their own dict registry,
`rewards.registry.REWARDS`: they read no config fields.)

The blocks of an RL config live in `train/config_blocks.py`; the parameter
classes of the entropy methods in `entropy/methods.py`, of the policy losses
in `rl/registry.py`.
"""

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, Callable

from jaxrl_ent import checker

MISSING = checker.MISSING


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a config field may hold (the `checker.Checker` reader to use).

  Attributes:
    kind: "int", "num", "str", "bool", "registry" or "any" (checked by a
      block's `problems`, or by the whole-config checks of `train/validate`).
    low, high, low_open, high_open: the allowed interval of a number.
    choices: allowed strings (or a zero-argument callable returning them,
      for lists owned by modules imported late); for "registry", the
      `Registry`.
    allow_none: None is a valid value (e.g. "no bound").
    nonempty: the empty string is refused.
    required: a missing field is a problem (when the block is in use).
    hparam: a float coefficient the jitted update reads from
      `TrainState.hparams` (sweepable without a recompile).
    key: the config key, when it differs from the attribute name.
    why: appended to the "allowed: …" part of a message.
    test: `value -> message or None`, run on a value that passed its type
      check (a rule of one field that is more than a type and a range,
      e.g. a format string's placeholders); its message names the field.
  """
  kind: str
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  choices: Any = None
  allow_none: bool = False
  nonempty: bool = False
  required: bool = True
  hparam: bool = False
  key: str | None = None
  why: str = ""
  test: Callable[[Any], str | None] | None = None


def _field(kind, default, kw):
  rule = Rule(kind, **kw)
  if default is MISSING:
    return dataclasses.field(default=None, metadata={"rule": rule,
                                                     "required_value": True})
  return dataclasses.field(default=default, metadata={"rule": rule})


def num(default=MISSING, **kw):
  """A finite float field (`Rule` arguments as keywords)."""
  return _field("num", default, kw)


def int_(default=MISSING, **kw):
  """An int field."""
  return _field("int", default, kw)


def str_(default=MISSING, **kw):
  """A string field (`choices=` restricts it)."""
  return _field("str", default, kw)


def bool_(default=MISSING, **kw):
  """A bool field."""
  return _field("bool", default, kw)


def registry(reg, default=MISSING, **kw):
  """A name registered in `reg`."""
  return _field("registry", default, {"choices": reg, **kw})


def any_(default=MISSING, **kw):
  """A field whose value the block's `problems` (or `validate`) checks."""
  return _field("any", default, kw)


def rules(cls) -> dict[str, Rule]:
  """attribute name → `Rule`, in declaration order."""
  return {f.name: f.metadata["rule"] for f in dataclasses.fields(cls)
          if "rule" in f.metadata}


def key_of(cls, attr: str) -> str:
  """The config key of attribute `attr` of block `cls`."""
  return rules(cls)[attr].key or attr


class Block:
  """Base of the typed config blocks (subclasses are frozen dataclasses).

  Subclasses declare fields with `num`, `int_`, `str_`, `bool_`, `registry`
  and `any_`, and may override `problems` with their cross-field rules.
  """

  def problems(self, prefix: str) -> list[tuple[str, str]]:
    """Cross-field rules of a block whose fields each passed their own."""
    del prefix
    return []

  @classmethod
  def keys(cls) -> tuple[str, ...]:
    """The config keys this block reads."""
    return tuple(r.key or a for a, r in rules(cls).items())

  @classmethod
  def hparam_keys(cls) -> tuple[str, ...]:
    """The config keys of the block's sweepable coefficients."""
    return tuple(r.key or a for a, r in rules(cls).items() if r.hparam)

  @classmethod
  def check(cls, c: checker.Checker, prefix: str, *, required: bool = True,
            skip: frozenset[str] | set[str] = frozenset(),
            adjust: Mapping[str, Mapping[str, Any]] | None = None):
    """Reads and checks the block at `prefix` of `c.config`.

    Args:
      c: the checker (collects problems, remembers the fields it read).
      prefix: the block's dotted path ("optim", "entropy"); "" for the
        config's top level.
      required: whether missing fields (with `Rule.required`) are problems;
        False checks only the values that are there (a block the run does
        not use is still range-checked).
      skip: config keys another block already checked (not read again).
      adjust: attribute → `Rule` fields to override for this read (a rule
        that depends on another field, e.g. a cosine anneal's end <= 1).

    Returns:
      The typed block, or None when a field is bad or a value without a
      default is missing (its problem is recorded).
    """
    adjust = adjust or {}
    values, complete = {}, True
    for f in dataclasses.fields(cls):
      rule = f.metadata.get("rule")
      if rule is None:
        continue
      req = required and rule.required
      if adjust.get(f.name):
        # An adjusted `required` is this field's own, whatever the block's.
        req = adjust[f.name].get("required", req)
        rule = dataclasses.replace(rule, **adjust[f.name])
      key = rule.key or f.name
      if key in skip:
        v = checker.get(c.config, _join(prefix, key))
        if c.bad(_join(prefix, key)):
          complete = False
      else:
        v = _read(c, _join(prefix, key), rule, req)
        if v is not MISSING and rule.test is not None:
          msg = rule.test(v)
          if msg:
            c.add(_join(prefix, key), msg)
            v = MISSING
        if v is MISSING and c.bad(_join(prefix, key)):
          complete = False
      if v is MISSING:
        if f.metadata.get("required_value"):
          complete = False
        continue
      values[f.name] = v
    if not complete:
      return None
    block = cls(**values)
    for field, msg in block.problems(prefix):
      c.add(field, msg)
    return block

  @classmethod
  def from_config(cls, config, prefix: str):
    """The typed block at `prefix` of `config`; `checker.ConfigError` on a
    bad value (the factories' entry point: the launcher has validated the
    whole config already, so this is a cheap re-read)."""
    c = checker.Checker(config)
    block = cls.check(c, prefix)
    if c.problems or block is None:
      raise checker.ConfigError(c.problems or [
          (prefix, "missing fields (the trainer reads this block)")])
    return block


def _join(prefix: str, key: str) -> str:
  return f"{prefix}.{key}" if prefix else key


def _read(c: checker.Checker, field: str, rule: Rule, required: bool):
  choices = rule.choices() if callable(rule.choices) else rule.choices
  if rule.kind == "num":
    return c.num(field, low=rule.low, high=rule.high, low_open=rule.low_open,
                 high_open=rule.high_open, required=required,
                 allow_none=rule.allow_none, why=rule.why)
  if rule.kind == "int":
    return c.int_(field, low=rule.low, high=rule.high, required=required,
                  allow_none=rule.allow_none, why=rule.why)
  if rule.kind == "str":
    return c.str_(field, choices=choices, required=required,
                  nonempty=rule.nonempty)
  if rule.kind == "bool":
    return c.bool_(field, required=required)
  if rule.kind == "registry":
    return c.registry(field, choices, required=required)
  if rule.kind == "any":
    return c.value(field, required=required)
  raise ValueError(f"unknown rule kind {rule.kind!r} for {field}")


def check_entries(c: checker.Checker, prefix: str, reg: "Registry",
                  selected: str | None):
  """Checks the parameters of every entry of `reg` that reads fields at
  `prefix` (a field two entries share is checked once, by the selected
  entry's rule when it reads it); only the selected entry's are required.
  Returns the selected entry's typed parameters (None if bad or none)."""
  chosen, seen = None, set()
  order = ((selected,) if selected in reg else ()) + tuple(
      n for n in reg.in_order() if n != selected)
  for name in order:
    cls = reg.params(name)
    if cls is None:
      continue
    block = cls.check(c, prefix, required=name == selected, skip=seen)
    seen |= set(cls.keys())
    if name == selected:
      chosen = block
  return chosen


@dataclasses.dataclass(frozen=True)
class Entry:
  """A registered callable and the `Block` class of what it reads."""
  fn: Callable[..., Any]
  params: type | None = None


class Registry:
  """A string → (callable, parameter class) map with validated names.

  Names are non-empty strings, registered once. Lookups of unknown names
  raise `ValueError` listing the known ones.
  """

  def __init__(self, kind):
    self._kind = kind
    self._items: dict[str, Entry] = {}

  def register(self, name, fn=None, *, params=None):
    """Registers `fn` (with its parameter class) under `name`; without
    `fn`, returns a decorator.

    Raises:
      ValueError: empty / non-string name, or a name already taken.
    """
    if fn is None:
      return lambda f: self.register(name, f, params=params)
    if not isinstance(name, str) or not name:
      raise ValueError(f"{self._kind} name must be a non-empty str, got "
                       f"{name!r}.")
    if name in self._items:
      raise ValueError(f"{self._kind} {name!r} is already registered.")
    if not callable(fn):
      raise ValueError(f"{self._kind} {name!r} must be callable, got {fn!r}.")
    if params is not None and not (isinstance(params, type) and
                                   issubclass(params, Block)):
      raise ValueError(f"{self._kind} {name!r}: params must be a Block "
                       f"class, got {params!r}.")
    self._items[name] = Entry(fn, params)
    return fn

  def validate(self, name):
    """Returns `name` if registered.

    Raises:
      ValueError: unknown name.
    """
    if not isinstance(name, str) or name not in self._items:
      raise ValueError(f"Unknown {self._kind} {name!r}; expected one of "
                       f"{self.names()}.")
    return name

  def get(self, name):
    """The callable registered under `name` (`ValueError` if unknown)."""
    return self._items[self.validate(name)].fn

  def params(self, name):
    """The parameter `Block` class of `name` (None: it reads none)."""
    return self._items[self.validate(name)].params

  def names(self):
    """Registered names, sorted."""
    return tuple(sorted(self._items))

  def in_order(self):
    """Registered names, in registration order."""
    return tuple(self._items)

  def as_mapping(self):
    """A read-only view name → callable."""
    return types.MappingProxyType({k: e.fn for k, e in self._items.items()})

  def __contains__(self, name):
    return isinstance(name, str) and name in self._items

  def __iter__(self):
    return iter(self._items)

  def __len__(self):
    return len(self._items)

  def __repr__(self):
    return f"Registry({self._kind!r}, {list(self.names())})"
