"""Name registries for advantage estimators, policy losses, KL kinds, agg modes.

Configs pick kernels by string (tunix `function_registry`, big_vision
`Registry`); the `make_*` factories look them up here, and `validate` lets a
config's `__post_init__` / `get_config` fail early on a typo. Entries of one
registry share one signature:

* `ADVANTAGE_ESTIMATORS`: `fn(rewards_b, mask_bt, *, group_size, **hparams)
  -> advantages_bt`; `gae` (`advantages.gae_outcome_advantages`) also takes
  the critic's `values_bt` (the names in `CRITIC_ESTIMATORS` need a critic).
* `POLICY_LOSSES`: `fn(logp_bt, old_logp_bt, advantages_bt, mask_bt,
  **hparams) -> (loss_bt, metrics)`.
* `KL_ESTIMATORS`: `fn(logp, ref_logp) -> kl` (elementwise).
* `AGG_MODES`: `fn(loss_bt, mask_bt, **kwargs) -> scalar`.
"""

import functools
import types

from jaxrl_ent.rl import advantages
from jaxrl_ent.rl import aggregation
from jaxrl_ent.rl import kl
from jaxrl_ent.rl import policy_losses


class Registry:
  """A small string → callable map with validated names.

  Names are non-empty strings, registered once. Lookups of unknown names
  raise `ValueError` listing the known ones.
  """

  def __init__(self, kind):
    self._kind = kind
    self._items = {}

  def register(self, name, fn=None):
    """Registers `fn` under `name`; without `fn`, returns a decorator.

    Raises:
      ValueError: empty / non-string name, or a name already taken.
    """
    if fn is None:
      return lambda f: self.register(name, f)
    if not isinstance(name, str) or not name:
      raise ValueError(f"{self._kind} name must be a non-empty str, got "
                       f"{name!r}.")
    if name in self._items:
      raise ValueError(f"{self._kind} {name!r} is already registered.")
    if not callable(fn):
      raise ValueError(f"{self._kind} {name!r} must be callable, got {fn!r}.")
    self._items[name] = fn
    return fn

  def validate(self, name):
    """Returns `name` if registered.

    Raises:
      ValueError: unknown name.
    """
    if name not in self._items:
      raise ValueError(f"Unknown {self._kind} {name!r}; expected one of "
                       f"{self.names()}.")
    return name

  def get(self, name):
    """The callable registered under `name` (`ValueError` if unknown)."""
    return self._items[self.validate(name)]

  def names(self):
    """Registered names, sorted."""
    return tuple(sorted(self._items))

  def as_mapping(self):
    """A read-only view of the registry."""
    return types.MappingProxyType(self._items)

  def __contains__(self, name):
    return name in self._items

  def __len__(self):
    return len(self._items)

  def __repr__(self):
    return f"Registry({self._kind!r}, {list(self.names())})"


ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
ADVANTAGE_ESTIMATORS.register("grpo", advantages.grpo_advantages)
ADVANTAGE_ESTIMATORS.register("dr_grpo", advantages.dr_grpo_advantages)
ADVANTAGE_ESTIMATORS.register("rloo", advantages.rloo_advantages)
ADVANTAGE_ESTIMATORS.register("batch_norm",
                              advantages.batch_normalized_advantages)
# Needs `values_bt=` from a critic (`rl.critic`); `rl.update` trains one
# whenever the estimator is in CRITIC_ESTIMATORS.
ADVANTAGE_ESTIMATORS.register("gae", advantages.gae_outcome_advantages)
CRITIC_ESTIMATORS = frozenset({"gae"})

POLICY_LOSSES = Registry("policy loss")
# "vanilla" is verl's `loss_mode` name for the same loss.
POLICY_LOSSES.register("ppo_clip", policy_losses.ppo_clip_loss)
POLICY_LOSSES.register("vanilla", policy_losses.ppo_clip_loss)
POLICY_LOSSES.register("gspo", policy_losses.gspo_loss)
POLICY_LOSSES.register("reinforce", policy_losses.reinforce_loss)

KL_ESTIMATORS = Registry("KL estimator")
for _kind in kl.KL_KINDS:
  KL_ESTIMATORS.register(_kind, functools.partial(kl.kl_penalty, kind=_kind))

AGG_MODES = Registry("loss aggregation mode")
for _mode in aggregation.AGG_MODES:
  AGG_MODES.register(_mode, functools.partial(aggregation.agg_loss,
                                              mode=_mode))
del _kind, _mode


def get_advantage_estimator(name):
  """Outcome advantage estimator by name (`ValueError` if unknown)."""
  return ADVANTAGE_ESTIMATORS.get(name)


def needs_critic(name) -> bool:
  """Whether advantage estimator `name` reads a learned critic's values."""
  return ADVANTAGE_ESTIMATORS.validate(name) in CRITIC_ESTIMATORS


def get_policy_loss(name):
  """Policy loss by name (`ValueError` if unknown)."""
  return POLICY_LOSSES.get(name)


def get_kl_estimator(name):
  """`fn(logp, ref_logp)` for KL kind `name` (`ValueError` if unknown)."""
  return KL_ESTIMATORS.get(name)


def get_agg_loss(name):
  """`fn(loss_bt, mask_bt, **kwargs)` for agg mode `name` (`ValueError` if
  unknown)."""
  return AGG_MODES.get(name)
