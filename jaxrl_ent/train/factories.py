"""Factories: the only place (with launchers) that reads config.

They read the config's typed blocks once (`config_blocks.parse`) and turn
them into what the kernels take: the static structure of the RL update
(`update_spec`) with its hyperparameters as arrays (`initial_hparams`), the
static loss settings, and, for tools that use a fixed chain (benchmarks, the
study's checks), the entropy controller chain as the update builds it.
"""

import dataclasses

import ml_collections

from jaxrl_ent import checker
from jaxrl_ent import schema
from jaxrl_ent.entropy import methods
from jaxrl_ent.rl import critic as critic_lib
from jaxrl_ent.rl import hparams as hparams_lib
from jaxrl_ent.rl import registry
from jaxrl_ent.rl import train_step
from jaxrl_ent.rl import update as update_lib
from jaxrl_ent.train import config_blocks

ENTROPY_METHODS = hparams_lib.ENTROPY_METHODS
ANNEALS = hparams_lib.ANNEALS


def parse(config) -> config_blocks.Run:
  """The config's typed blocks (`config_blocks.parse`)."""
  return config_blocks.parse(config)


def _entropy(cfg) -> config_blocks.Entropy:
  """`config.entropy` (a ConfigDict block on its own) → typed `Entropy`."""
  c = checker.Checker(ml_collections.ConfigDict({"entropy": cfg}))
  entropy = config_blocks.check_entropy(c)
  if c.problems or entropy is None:
    raise checker.ConfigError(c.problems or [("entropy", "invalid block")])
  return entropy


def controller_spec(entropy: config_blocks.Entropy, *,
                    track: bool = True) -> hparams_lib.ControllerSpec:
  """The typed entropy block → the static structure of its controller
  chain (the method's string fields are structure: a jit key)."""
  # A method's structural fields (`methods.STRUCTURAL`) come from its
  # parameters; the ones it does not have keep ControllerSpec's defaults.
  structure = {k: getattr(entropy.params, k) for k in methods.STRUCTURAL
               if hasattr(entropy.params, k)}
  return hparams_lib.ControllerSpec(
      method=entropy.method, anneal=entropy.anneal.anneal,
      anneal_steps=entropy.anneal.anneal_steps, track=track, **structure)


def _entropy_hparams(entropy: config_blocks.Entropy, spec) -> dict:
  """`entropy.<key>` → value, for the coefficients the chain reads."""
  values = {}
  for block in (entropy.params, entropy.anneal):
    for attr, rule in schema.rules(type(block)).items():
      values[f"entropy.{rule.key or attr}"] = getattr(block, attr)
  return {k: values[k] for k in spec.hparam_fields()}


def make_controller(cfg, *, clip_eps_low: float = 0.2,
                    clip_eps_high: float = 0.2, step: int = 0,
                    track: bool = True):
  """The token-space controller chain of `config.entropy` at RL step `step`
  (as `rl.update` builds it; wrapped in `controllers.attributed_chain` for
  per-source `entropy/dH_pred_tabular/*` unless `track=False`)."""
  entropy = _entropy(cfg)
  spec = controller_spec(entropy, track=track)
  hp = _entropy_hparams(entropy, spec)
  hp.update({"loss.clip_eps_low": clip_eps_low,
             "loss.clip_eps_high": clip_eps_high})
  return hparams_lib.controller(spec, hparams_lib.as_hparams(hp), step)


def _policy_kwargs(run: config_blocks.Run) -> dict:
  """The policy loss's keyword arguments (attribute names of its parameter
  class), None-valued ones (an unset dual-clip bound) kept."""
  return dataclasses.asdict(run.policy_loss)


def _policy_hparams(run: config_blocks.Run) -> dict[str, str]:
  """Policy-loss kwarg → hparam key, for the configured loss (a None value,
  e.g. no dual clip, is not an hparam)."""
  rules = schema.rules(type(run.policy_loss))
  return {a: f"loss.{r.key or a}" for a, r in rules.items()
          if r.hparam and getattr(run.policy_loss, a) is not None}


def make_loss_config(config) -> train_step.LossConfig:
  """The config's loss (at the sampling temperature) → static `LossConfig`."""
  run = parse(config)
  return _loss_config(run)


def _loss_config(run: config_blocks.Run) -> train_step.LossConfig:
  lc = run.loss
  return train_step.LossConfig(
      policy_loss=lc.policy_loss,
      policy_loss_kwargs=tuple(sorted(_policy_kwargs(run).items())),
      agg_mode=lc.agg_mode, kl_coef=lc.kl_coef, kl_kind=lc.kl_kind,
      # The loss scores tokens at the sampling temperature (verl).
      temperature=run.rollout.temperature, token_chunk=lc.token_chunk,
      vocab_chunk=lc.vocab_chunk,
      num_micro_batches=lc.num_micro_batches,
      pack_fraction=run.train.pack_fraction,
      pack_row_len=run.train.pack_row_len).validate()


def critic_spec(config) -> critic_lib.CriticSpec | None:
  """`config.critic` → the critic's static structure, when the advantage
  estimator reads a critic (`registry.CRITIC_ESTIMATORS`, i.e. `gae`);
  None otherwise (the block is then not read)."""
  return _critic_spec(parse(config))


def _critic_spec(run: config_blocks.Run) -> critic_lib.CriticSpec | None:
  if not registry.needs_critic(run.advantage.estimator):
    return None
  cc = run.critic
  if cc is None:
    raise checker.ConfigError([("critic", "missing with advantage."
                                f"estimator={run.advantage.estimator!r}")])
  return critic_lib.CriticSpec(
      kind=cc.kind, warmup_steps=cc.warmup_steps,
      agg_mode=cc.agg_mode or run.loss.agg_mode,
      loss_scale_factor=run.loss.loss_scale_factor,
      clip=cc.grad_clip is not None).validate()


def update_spec(config) -> update_lib.UpdateSpec:
  """The static structure of the run's RL update (`rl.update`)."""
  return _update_spec(parse(config))


def _update_spec(run: config_blocks.Run) -> update_lib.UpdateSpec:
  t, o, lc = run.train, run.optim, run.loss
  # The KL value comes from the hparams; LossConfig keeps only "is it on".
  return update_lib.UpdateSpec(
      loss=_loss_config(run),
      optimizer=hparams_lib.OptimizerSpec(
          schedule=o.schedule, warmup_steps=o.warmup_steps,
          total_steps=t.steps, end_fraction=o.end_fraction,
          clip=bool(o.grad_clip), kind=o.name),
      controller=controller_spec(run.entropy),
      estimator=run.advantage.estimator,
      group_size=run.rollout.n_samples,
      ppo_epochs=t.ppo_epochs, num_mini_batches=t.num_mini_batches,
      recompute_old_logp=t.recompute_old_logp,
      kl_in_reward_kind=(lc.kl_in_reward_kind
                         if lc.kl_in_reward_coef > 0 else None),
      policy_hparams=tuple(sorted(_policy_hparams(run).items())),
      critic=_critic_spec(run))


def initial_hparams(config) -> dict[str, float]:
  """Every coefficient the run's update reads, by dotted config name.

  These are the values a replica may override (`config.sweep`); anything
  else in the config is structure or host-side.
  """
  run = parse(config)
  spec = _update_spec(run)
  o, lc = run.optim, run.loss
  out = {f"optim.{k}": getattr(o, k)
         for k in ("lr", "b1", "b2", "eps", "weight_decay")}
  if spec.optimizer.clip:
    out["optim.grad_clip"] = o.grad_clip
  for attr, key in spec.policy_hparams:
    out[key] = getattr(run.policy_loss, attr)
  if spec.controller.method == "clip_cov":
    # Clip-Cov clips with the PPO range whichever policy loss runs.
    clip = registry.PPOClipParams.from_config(config, "loss")
    out["loss.clip_eps_low"] = clip.eps_low
    out["loss.clip_eps_high"] = clip.eps_high
  if spec.loss.kl_coef > 0:
    out["loss.kl_coef"] = lc.kl_coef
  if spec.kl_in_reward_kind is not None:
    out["loss.kl_in_reward_coef"] = lc.kl_in_reward_coef
  out.update(_entropy_hparams(run.entropy, spec.controller))
  if spec.critic is not None:
    cc, adv = run.critic, run.estimator
    out.update({"advantage.gamma": adv.gamma, "advantage.lam": adv.lam,
                "critic.lr": cc.lr, "critic.cliprange_value":
                cc.cliprange_value, "critic.weight_decay": cc.weight_decay})
    if spec.critic.clip:
      out["critic.grad_clip"] = cc.grad_clip
  return {k: float(v) for k, v in out.items()}
