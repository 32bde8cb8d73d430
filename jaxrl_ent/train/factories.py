"""Factories: the only place (with launchers) that reads config.

They turn config blocks into what the kernels take: the static structure of
the RL update (`update_spec`) with its hyperparameters as arrays
(`initial_hparams`), the static loss settings, and, for tools that use a
fixed chain (benchmarks, the study's checks), the entropy controller chain
as the update builds it.
"""

from jaxrl_ent.rl import critic as critic_lib
from jaxrl_ent.rl import hparams as hparams_lib
from jaxrl_ent.rl import registry
from jaxrl_ent.rl import train_step
from jaxrl_ent.rl import update as update_lib

ENTROPY_METHODS = hparams_lib.ENTROPY_METHODS
ANNEALS = hparams_lib.ANNEALS


def controller_spec(cfg, *, track: bool = True) -> hparams_lib.ControllerSpec:
  """`config.entropy` → the static structure of its controller chain."""
  if cfg.method not in ENTROPY_METHODS:
    raise ValueError(f"entropy.method={cfg.method!r}; allowed: "
                     f"{ENTROPY_METHODS}.")
  return hparams_lib.ControllerSpec(
      method=cfg.method, anneal=cfg.get("anneal", "constant"),
      anneal_steps=int(cfg.get("anneal_steps", 100)),
      rule=cfg.get("rule", "bang_bang"), measure=cfg.get("measure", "old_logp"),
      steer_mode=cfg.get("steer_mode", "exponential"),
      steer_score=cfg.get("steer_score", "reference"), track=track)


def make_controller(cfg, *, clip_eps_low: float = 0.2,
                    clip_eps_high: float = 0.2, step: int = 0,
                    track: bool = True):
  """The token-space controller chain of `config.entropy` at RL step `step`
  (as `rl.update` builds it; wrapped in `controllers.attributed_chain` for
  per-source `entropy/dH_pred_tabular/*` unless `track=False`)."""
  spec = controller_spec(cfg, track=track)
  hp = {k: cfg.get(k.split(".", 1)[1]) for k in spec.hparam_fields()}
  hp.update({"loss.clip_eps_low": clip_eps_low,
             "loss.clip_eps_high": clip_eps_high})
  return hparams_lib.controller(spec, hparams_lib.as_hparams(hp), step)


def make_loss_config(cfg) -> train_step.LossConfig:
  """`config.loss` (+ sampling temperature) → static `LossConfig`."""
  kwargs = {}
  if cfg.policy_loss == "ppo_clip":
    kwargs = {"eps_low": cfg.clip_eps_low, "eps_high": cfg.clip_eps_high,
              "clip_ratio_c": cfg.get("clip_ratio_c", None)}
  elif cfg.policy_loss == "gspo":
    kwargs = {"eps_low": cfg.get("gspo_eps_low", 3e-4),
              "eps_high": cfg.get("gspo_eps_high", 4e-4)}
  return train_step.LossConfig(
      policy_loss=cfg.policy_loss,
      policy_loss_kwargs=tuple(sorted(kwargs.items())),
      agg_mode=cfg.agg_mode, kl_coef=cfg.kl_coef, kl_kind=cfg.kl_kind,
      temperature=cfg.temperature, token_chunk=cfg.token_chunk,
      vocab_chunk=cfg.get("vocab_chunk", None),
      num_micro_batches=cfg.num_micro_batches).validate()


def _policy_hparams(cfg) -> dict[str, str]:
  """Policy-loss kwarg → hparam key, for the configured loss."""
  if cfg.policy_loss == "ppo_clip":
    out = {"eps_low": "loss.clip_eps_low", "eps_high": "loss.clip_eps_high"}
    if cfg.get("clip_ratio_c", None) is not None:
      out["clip_ratio_c"] = "loss.clip_ratio_c"
    return out
  if cfg.policy_loss == "gspo":
    return {"eps_low": "loss.gspo_eps_low", "eps_high": "loss.gspo_eps_high"}
  return {}


def critic_spec(config) -> critic_lib.CriticSpec | None:
  """`config.critic` → the critic's static structure, when the advantage
  estimator reads a critic (`registry.CRITIC_ESTIMATORS`, i.e. `gae`);
  None otherwise (the block is then not read)."""
  if not registry.needs_critic(config.advantage.estimator):
    return None
  cc = config.critic
  return critic_lib.CriticSpec(
      kind=cc.get("kind", "head"), warmup_steps=int(cc.get("warmup_steps", 0)),
      agg_mode=cc.get("agg_mode", config.loss.agg_mode),
      loss_scale_factor=config.loss.get("loss_scale_factor", None),
      clip=cc.get("grad_clip", 1.0) is not None).validate()


def update_spec(config) -> update_lib.UpdateSpec:
  """The static structure of the run's RL update (`rl.update`)."""
  t, o, e, lc = config.train, config.optim, config.entropy, config.loss
  loss = make_loss_config(lc)
  # The KL value comes from the hparams; LossConfig keeps only "is it on".
  return update_lib.UpdateSpec(
      loss=loss,
      optimizer=hparams_lib.OptimizerSpec(
          schedule=o.schedule, warmup_steps=int(o.warmup_steps),
          total_steps=int(t.steps), end_fraction=float(o.get(
              "end_fraction", 0.0)), clip=bool(o.grad_clip),
          kind=o.get("name", "adamw")),
      controller=controller_spec(e),
      estimator=config.advantage.estimator,
      group_size=int(config.rollout.n_samples),
      ppo_epochs=int(t.ppo_epochs), num_mini_batches=int(t.num_mini_batches),
      recompute_old_logp=bool(t.recompute_old_logp),
      kl_in_reward_kind=(lc.kl_in_reward_kind
                         if lc.get("kl_in_reward_coef", 0.0) > 0 else None),
      policy_hparams=tuple(sorted(_policy_hparams(lc).items())),
      critic=critic_spec(config))


def initial_hparams(config) -> dict[str, float]:
  """Every coefficient the run's update reads, by dotted config name.

  These are the values a replica may override (`config.sweep`); anything
  else in the config is structure or host-side.
  """
  spec = update_spec(config)
  o, lc = config.optim, config.loss
  out = {"optim.lr": o.lr, "optim.b1": o.b1, "optim.b2": o.b2,
         "optim.eps": o.get("eps", 1e-8), "optim.weight_decay": o.weight_decay}
  if spec.optimizer.clip:
    out["optim.grad_clip"] = o.grad_clip
  for key in dict(spec.policy_hparams).values():
    out[key] = lc.get(key.split(".", 1)[1])
  if spec.controller.method == "clip_cov":
    out["loss.clip_eps_low"] = lc.clip_eps_low
    out["loss.clip_eps_high"] = lc.clip_eps_high
  if spec.loss.kl_coef > 0:
    out["loss.kl_coef"] = lc.kl_coef
  if spec.kl_in_reward_kind is not None:
    out["loss.kl_in_reward_coef"] = lc.kl_in_reward_coef
  for key in spec.controller.hparam_fields():
    out[key] = config.entropy.get(key.split(".", 1)[1])
  if spec.critic is not None:
    cc, adv = config.critic, config.advantage
    out.update({"advantage.gamma": adv.get("gamma", 1.0),
                "advantage.lam": adv.get("lam", 1.0),
                "critic.lr": cc.lr,
                "critic.cliprange_value": cc.get("cliprange_value", 0.5),
                "critic.weight_decay": cc.get("weight_decay", 0.0)})
    if spec.critic.clip:
      out["critic.grad_clip"] = cc.grad_clip
  return {k: float(v) for k, v in out.items()}
