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

import dataclasses
import functools

from jaxrl_ent import schema
from jaxrl_ent.rl import advantages
from jaxrl_ent.rl import aggregation
from jaxrl_ent.rl import kl
from jaxrl_ent.rl import policy_losses


Registry = schema.Registry


# ------------------------------------------------ policy-loss parameters
@dataclasses.dataclass(frozen=True)
class PPOClipParams(schema.Block):
  """`ppo_clip` / `vanilla`: the clip range (`loss.clip_eps_low/high`, also
  Clip-Cov's) and the dual-clip bound `loss.clip_ratio_c` (None: off)."""
  eps_low: float = schema.num(0.2, low=0.0, high=1.0, hparam=True,
                              key="clip_eps_low")
  eps_high: float = schema.num(0.2, low=0.0, hparam=True,
                               key="clip_eps_high")
  clip_ratio_c: float | None = schema.num(
      None, low=1.0, low_open=True, allow_none=True, required=False,
      hparam=True, why=" (dual-clip bound; None disables it)")


@dataclasses.dataclass(frozen=True)
class GSPOParams(schema.Block):
  """`gspo`: the sequence-level clip range (`loss.gspo_eps_low/high`)."""
  eps_low: float = schema.num(3e-4, low=0.0, required=False, hparam=True,
                              key="gspo_eps_low")
  eps_high: float = schema.num(4e-4, low=0.0, required=False, hparam=True,
                               key="gspo_eps_high")


@dataclasses.dataclass(frozen=True)
class GAEParams(schema.Block):
  """`gae`: the discount and the GAE λ (`advantage.gamma`, `advantage.lam`;
  verl `algorithm.gamma/lam`)."""
  gamma: float = schema.num(1.0, low=0.0, high=1.0, required=False,
                            hparam=True)
  lam: float = schema.num(1.0, low=0.0, high=1.0, required=False,
                          hparam=True)


@dataclasses.dataclass(frozen=True)
class NoParams(schema.Block):
  """An entry that reads no config field."""


ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
ADVANTAGE_ESTIMATORS.register("grpo", advantages.grpo_advantages)
ADVANTAGE_ESTIMATORS.register("dr_grpo", advantages.dr_grpo_advantages)
ADVANTAGE_ESTIMATORS.register("rloo", advantages.rloo_advantages)
ADVANTAGE_ESTIMATORS.register("batch_norm",
                              advantages.batch_normalized_advantages)
# Needs `values_bt=` from a critic (`rl.critic`); `rl.update` trains one
# whenever the estimator is in CRITIC_ESTIMATORS.
ADVANTAGE_ESTIMATORS.register("gae", advantages.gae_outcome_advantages,
                              params=GAEParams)
CRITIC_ESTIMATORS = frozenset({"gae"})

POLICY_LOSSES = Registry("policy loss")
# "vanilla" is verl's `loss_mode` name for the same loss.
POLICY_LOSSES.register("ppo_clip", policy_losses.ppo_clip_loss,
                       params=PPOClipParams)
POLICY_LOSSES.register("vanilla", policy_losses.ppo_clip_loss,
                       params=PPOClipParams)
POLICY_LOSSES.register("gspo", policy_losses.gspo_loss, params=GSPOParams)
POLICY_LOSSES.register("reinforce", policy_losses.reinforce_loss,
                       params=NoParams)

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
