"""The entropy methods by name: each one's parameters (a typed block) and stage.

`METHODS` maps `entropy.method` to the stage builder of its controller and
the `schema.Block` class of the `config.entropy` fields it reads. A stage
builder takes the method's typed parameters with every coefficient as a
(traced) float32 scalar from `TrainState.hparams`, and returns the
`(name, GradientTransformation)` stages of the token-space chain. One entry
per method replaces the per-method tables and if/elif branches that the
validator, the hparam factory and the chain builder used to keep in step by
hand: the fields a method reads, which of them are sweepable coefficients
and their ranges are written here once.

`Anneal` is the `entropy.anneal*` block: which schedule multiplies the
method's annealed coefficient (`ANNEALED`), and its parameters.

The config stays flat (`entropy.coef`, `entropy.ratio`, …: the flag names
users type); two methods that read a field of the same name read the same
value. AEnt's clip bounds are `entropy.coef_min_aent` / `coef_max_aent`
(`Rule.key`), so they cannot be confused with adaptive_entropy's.
"""

import dataclasses

from jaxrl_ent import schema
from jaxrl_ent.entropy import controllers
from jaxrl_ent.entropy import reweighting

ANNEALS = ("constant", "linear", "cosine", "inverse_power")
ADAPTIVE_RULES = ("bang_bang", "lagrangian")
ADAPTIVE_MEASURES = ("old_logp", "entropy")
STEER_MODES = ("exponential", "linear")
STEER_SCORES = ("reference", "exact")

def coefficient(default, **kw):
  """A sweepable float coefficient of a method (an hparam; a number, never
  a schedule: `entropy.anneal` varies it over training)."""
  return schema.num(default, hparam=True, **kw)


@dataclasses.dataclass(frozen=True)
class NoParams(schema.Block):
  """`none`: reads no field."""


@dataclasses.dataclass(frozen=True)
class BonusParams(schema.Block):
  """`entropy_bonus`: `coef` × the token entropy added to the objective."""
  coef: float = coefficient(0.0, low=0.0)


@dataclasses.dataclass(frozen=True)
class ClipCovParams(schema.Block):
  """`clip_cov`: detach a `ratio` of the tokens whose centred covariance
  lies in (`clip_cov_lb`, `clip_cov_ub`) (Cui et al. 2025)."""
  ratio: float = coefficient(2e-4, low=0.0, high=1.0, low_open=True,
                             why=" (fraction of tokens clipped)")
  clip_cov_lb: float = coefficient(1.0)
  clip_cov_ub: float = coefficient(5.0)

  def problems(self, prefix):
    if not self.clip_cov_lb < self.clip_cov_ub:
      return [(f"{prefix}.clip_cov_lb", f"{self.clip_cov_lb:g} >= "
               f"{prefix}.clip_cov_ub={self.clip_cov_ub:g}; allowed: "
               "clip_cov_lb < clip_cov_ub (the covariance window (lb, ub) "
               "must be non-empty)")]
    return []


@dataclasses.dataclass(frozen=True)
class KLCovParams(schema.Block):
  """`kl_cov`: a `coef`·|log-ratio| penalty on the top `ratio` of tokens by
  covariance."""
  ratio: float = coefficient(2e-4, low=0.0, high=1.0, low_open=True,
                             why=" (fraction of tokens penalised)")
  coef: float = coefficient(1.0, low=0.0)


@dataclasses.dataclass(frozen=True)
class HighEntropyParams(schema.Block):
  """`high_entropy_tokens`: the policy gradient of the top `quantile` of
  tokens by entropy only (Wang et al. 2025, "80/20")."""
  quantile: float = coefficient(0.2, low=0.0, high=1.0, low_open=True,
                                why=" (kept top fraction of tokens)")


def _ordered(prefix, lo_key, lo, hi_key, hi):
  if lo > hi:
    return [(f"{prefix}.{lo_key}", f"{lo:g} > {prefix}.{hi_key}={hi:g}; "
             f"allowed: {prefix}.{lo_key} <= {prefix}.{hi_key}")]
  return []


@dataclasses.dataclass(frozen=True)
class AdaptiveParams(schema.Block):
  """`adaptive_entropy`: a bonus whose coefficient chases `target` entropy
  (Skywork-OR1 `bang_bang`, or a `lagrangian` dual ascent)."""
  target: float = coefficient(0.2, low=0.0)
  delta: float = coefficient(1e-4, low=0.0)
  lr: float = coefficient(1e-2, low=0.0)
  coef_min: float = coefficient(0.0, low=0.0)
  coef_max: float = coefficient(5e-3, low=0.0)
  rule: str = schema.str_("bang_bang", choices=ADAPTIVE_RULES)
  measure: str = schema.str_("old_logp", choices=ADAPTIVE_MEASURES,
                             required=False)

  def problems(self, prefix):
    return _ordered(prefix, "coef_min", self.coef_min, "coef_max",
                    self.coef_max)


@dataclasses.dataclass(frozen=True)
class SteerParams(schema.Block):
  """`steer`: entropy-aware token weights in [`w_min`, `w_max`]."""
  w_min: float = coefficient(0.8, low=0.0, high=1.0, low_open=True,
                             required=False)
  w_max: float = coefficient(1.0, low=0.0, low_open=True, required=False)
  steer_mode: str = schema.str_("exponential", choices=STEER_MODES,
                                required=False)
  steer_score: str = schema.str_("reference", choices=STEER_SCORES,
                                 required=False)

  def problems(self, prefix):
    if self.w_min > self.w_max:
      return [(f"{prefix}.w_min", f"{self.w_min:g} > {prefix}.w_max="
               f"{self.w_max:g}; allowed: w_min <= w_max")]
    return []


@dataclasses.dataclass(frozen=True)
class AEntParams(schema.Block):
  """`aent`: AEnt's dead-band coefficient in [`coef_min`, `coef_max`]
  (config keys `coef_min_aent`, `coef_max_aent`)."""
  coef_init: float = coefficient(2e-4, low=0.0, required=False)
  lr: float = coefficient(1e-3, low=0.0)
  h_low: float = coefficient(0.05, low=0.0, required=False)
  h_high: float = coefficient(0.23, low=0.0, required=False)
  coef_min: float = coefficient(1e-5, low=0.0, key="coef_min_aent",
                                required=False)
  coef_max: float = coefficient(3e-3, low=0.0, key="coef_max_aent",
                                required=False)

  def problems(self, prefix):
    return (_ordered(prefix, "h_low", self.h_low, "h_high", self.h_high) +
            _ordered(prefix, "coef_min_aent", self.coef_min, "coef_max_aent",
                     self.coef_max))


@dataclasses.dataclass(frozen=True)
class Anneal(schema.Block):
  """`entropy.anneal*`: the schedule multiplying `ANNEALED[method]`.

  `linear`/`cosine` go from 1 to `anneal_end` over `anneal_steps` RL steps;
  `inverse_power` is `(1 + t/anneal_tau)^-anneal_power` (asymptotically
  unbiased, entropy_methods.md §1.6).
  """
  anneal: str = schema.str_("constant", choices=ANNEALS, required=False)
  anneal_steps: int = schema.int_(100, low=1)
  anneal_end: float = coefficient(0.0, low=0.0, why=" (end = value·anneal_end)")
  anneal_tau: float = coefficient(10.0, low=0.0, low_open=True)
  anneal_power: float = coefficient(1.0, low=0.0, low_open=True)

  # anneal kind -> the fields it reads.
  READERS = {"constant": (), "linear": ("anneal_steps", "anneal_end"),
             "cosine": ("anneal_steps", "anneal_end"),
             "inverse_power": ("anneal_tau", "anneal_power")}


# ---------------------------------------------------------------- stages
# Each: (p, spec, coef, hp) -> stages, where `p` is the parameter block
# with traced values for the coefficients, `spec` the
# `hparams.ControllerSpec` (static strings), `coef(name)` the annealed
# coefficient named `name` (identity for a method that is not annealed) and
# `hp` all the hparams (Clip-Cov reads the PPO clip range there).


def _none(p, spec, coef, hp):
  del p, spec, coef, hp
  return []


def _bonus(p, spec, coef, hp):
  del p, spec, hp
  return [("entropy_bonus", controllers.entropy_bonus(coef("coef")))]


def _clip_cov(p, spec, coef, hp):
  del spec
  return [("clip_cov", controllers.clip_cov(
      ratio=coef("ratio"), lb=p.clip_cov_lb, ub=p.clip_cov_ub,
      clip_eps_low=hp["loss.clip_eps_low"],
      clip_eps_high=hp["loss.clip_eps_high"]))]


def _kl_cov(p, spec, coef, hp):
  del spec, hp
  return [("kl_cov", controllers.kl_cov(ratio=p.ratio, coef=coef("coef")))]


def _high_entropy(p, spec, coef, hp):
  del spec, coef, hp
  return [("high_entropy_tokens",
           controllers.high_entropy_tokens(quantile=p.quantile))]


def _adaptive(p, spec, coef, hp):
  del coef, hp
  return [("adaptive_entropy", controllers.adaptive_entropy(
      target=p.target, rule=spec.rule, delta=p.delta, lr=p.lr,
      coef_min=p.coef_min, coef_max=p.coef_max, measure=spec.measure))]


def _steer(p, spec, coef, hp):
  del coef, hp
  return [("steer", reweighting.steer(
      w_min=p.w_min, w_max=p.w_max, mode=spec.steer_mode,
      score=spec.steer_score))]


def _aent(p, spec, coef, hp):
  del spec, coef, hp
  return [("aent", reweighting.aent(
      coef_init=p.coef_init, lr=p.lr, h_low=p.h_low, h_high=p.h_high,
      coef_min=p.coef_min, coef_max=p.coef_max))]


METHODS = schema.Registry("entropy method")
METHODS.register("none", _none, params=NoParams)
METHODS.register("entropy_bonus", _bonus, params=BonusParams)
METHODS.register("clip_cov", _clip_cov, params=ClipCovParams)
METHODS.register("kl_cov", _kl_cov, params=KLCovParams)
METHODS.register("high_entropy_tokens", _high_entropy,
                 params=HighEntropyParams)
METHODS.register("adaptive_entropy", _adaptive, params=AdaptiveParams)
METHODS.register("steer", _steer, params=SteerParams)
METHODS.register("aent", _aent, params=AEntParams)
NAMES = METHODS.in_order()

# The coefficient an anneal schedule multiplies, per method.
ANNEALED = {"entropy_bonus": "coef", "clip_cov": "ratio", "kl_cov": "coef"}
# Structural (static, string) fields: part of the jit key, not hparams.
STRUCTURAL = ("rule", "measure", "steer_mode", "steer_score")


def hparam_keys(method: str) -> tuple[str, ...]:
  """The `entropy.<key>` coefficients `method` reads (without the anneal)."""
  return METHODS.params(method).hparam_keys()


def readers() -> dict[str, tuple[str, ...]]:
  """entropy.<key> → the methods that read it (`anneal` included)."""
  out = {}
  for name in NAMES:
    for key in METHODS.params(name).keys():
      out[key] = out.get(key, ()) + (name,)
  out["anneal"] = tuple(ANNEALED)
  return out


def with_values(method: str, values) -> schema.Block:
  """`method`'s parameter block holding `values[key]` (traced scalars of
  the hparams, keyed by config key) for its coefficients; the structural
  fields keep their defaults (the stages read those from the spec)."""
  cls = METHODS.params(method)
  rules = schema.rules(cls)
  kwargs = {a: values[r.key or a] for a, r in rules.items() if r.hparam}
  return cls(**kwargs)


def stages(method: str, p, spec, coef, hp):
  """The `(name, transform)` stages of `method`'s controller."""
  return METHODS.get(method)(p, spec, coef, hp)
