"""`make_*` factories: the only place (with launchers) that reads config.

They turn config blocks into the objects the kernels take: the static
structure of the RL update (`update_spec`) with its hyperparameters as
arrays (`initial_hparams`), and, for the mini-batch kernel and tools that
use fixed transforms, the entropy controller chain, the parameter optimizer
and the static loss settings.
"""

import optax

from jaxrl_ent.entropy import controllers
from jaxrl_ent.entropy import reweighting
from jaxrl_ent.entropy import schedules
from jaxrl_ent.rl import hparams as hparams_lib
from jaxrl_ent.rl import train_step
from jaxrl_ent.rl import update as update_lib
from jaxrl_ent.train import optim

ENTROPY_METHODS = hparams_lib.ENTROPY_METHODS
ANNEALS = hparams_lib.ANNEALS


def anneal(value: float, cfg, updates_per_step: int):
  """A schedule starting at `value`, annealed per `cfg.anneal`.

  Durations in `cfg` are in optimizer steps; controllers count micro-batch
  updates, so they are scaled by `updates_per_step`.
  """
  kind = cfg.get("anneal", "constant")
  if kind not in ANNEALS:
    raise ValueError(f"entropy.anneal={kind!r}; allowed: {ANNEALS}.")
  if kind == "constant":
    return value
  steps = int(cfg.get("anneal_steps", 100)) * updates_per_step
  end = float(cfg.get("anneal_end", 0.0))
  if kind == "linear":
    return schedules.linear(value, value * end, steps)
  if kind == "cosine":
    return schedules.cosine(value, steps, end)
  return schedules.inverse_power(
      value, float(cfg.get("anneal_tau", 50)) * updates_per_step,
      float(cfg.get("anneal_power", 0.5)))


def make_controller(cfg, *, clip_eps_low: float = 0.2,
                    clip_eps_high: float = 0.2, updates_per_step: int = 1,
                    track: bool = True):
  """The token-space controller chain for `config.entropy`.

  The chain is wrapped in `controllers.attributed_chain`, so the predicted
  entropy change is recorded per source (`entropy/pred_dH/*` metrics).
  """
  method = cfg.method
  if method not in ENTROPY_METHODS:
    raise ValueError(f"entropy.method={method!r}; allowed: "
                     f"{ENTROPY_METHODS}.")
  coef = lambda v: anneal(v, cfg, updates_per_step)
  if method == "none":
    stages = []
  elif method == "entropy_bonus":
    stages = [("entropy_bonus", controllers.entropy_bonus(coef(cfg.coef)))]
  elif method == "clip_cov":
    if not cfg.clip_cov_lb < cfg.clip_cov_ub:
      raise ValueError(f"entropy.clip_cov_lb={cfg.clip_cov_lb} must be < "
                       f"entropy.clip_cov_ub={cfg.clip_cov_ub}.")
    stages = [("clip_cov", controllers.clip_cov(
        ratio=coef(cfg.ratio), lb=cfg.clip_cov_lb, ub=cfg.clip_cov_ub,
        clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high))]
  elif method == "kl_cov":
    stages = [("kl_cov", controllers.kl_cov(ratio=cfg.ratio,
                                            coef=coef(cfg.coef)))]
  elif method == "high_entropy_tokens":
    stages = [("high_entropy_tokens",
               controllers.high_entropy_tokens(quantile=cfg.quantile))]
  elif method == "steer":
    stages = [("steer", reweighting.steer(
        w_min=cfg.get("w_min", 0.8), w_max=cfg.get("w_max", 1.0),
        mode=cfg.get("steer_mode", "exponential"),
        score=cfg.get("steer_score", "reference")))]
  elif method == "aent":
    stages = [("aent", reweighting.aent(
        coef_init=cfg.get("coef_init", 2e-4), lr=cfg.lr,
        h_low=cfg.get("h_low", 0.05), h_high=cfg.get("h_high", 0.23),
        coef_min=cfg.get("coef_min_aent", 1e-5),
        coef_max=cfg.get("coef_max_aent", 3e-3)))]
  else:
    stages = [("adaptive_entropy", controllers.adaptive_entropy(
        target=cfg.target, rule=cfg.rule, delta=cfg.delta, lr=cfg.lr,
        coef_min=cfg.coef_min, coef_max=cfg.coef_max,
        measure=cfg.get("measure", "old_logp")))]
  if track:
    return controllers.attributed_chain(*stages)
  return optax.chain(*[t for _, t in stages]) if stages else optax.identity()


def make_optimizer(cfg, total_steps: int):
  """`config.optim` → clip → AdamW(schedule)."""
  return optim.make_optimizer(
      lr=cfg.lr, total_steps=total_steps, warmup_steps=cfg.warmup_steps,
      schedule=cfg.schedule, weight_decay=cfg.weight_decay, b1=cfg.b1,
      b2=cfg.b2, grad_clip=cfg.grad_clip)


def make_train_transforms(config):
  """(optimizer, controller) of an RL run, as the trainer builds them.

  Controller schedules count micro-batch updates (epochs × mini-batches ×
  micro-batches per RL step); the optimizer's schedule counts optimizer
  steps (epochs × mini-batches per RL step). Shared by the trainer, the
  restore path of evaluate/export and the TPU ahead-of-time check, so their
  state trees always match.
  """
  t = config.train
  updates = t.ppo_epochs * t.num_mini_batches
  controller = make_controller(
      config.entropy, clip_eps_low=config.loss.clip_eps_low,
      clip_eps_high=config.loss.clip_eps_high,
      updates_per_step=updates * config.loss.num_micro_batches)
  optimizer = make_optimizer(config.optim, t.steps * updates)
  return optimizer, controller


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


def update_spec(config) -> update_lib.UpdateSpec:
  """The static structure of the run's RL update (`rl.update`)."""
  t, o, e, lc = config.train, config.optim, config.entropy, config.loss
  if e.method not in ENTROPY_METHODS:
    raise ValueError(f"entropy.method={e.method!r}; allowed: "
                     f"{ENTROPY_METHODS}.")
  loss = make_loss_config(lc)
  # The KL value comes from the hparams; LossConfig keeps only "is it on".
  return update_lib.UpdateSpec(
      loss=loss,
      optimizer=hparams_lib.OptimizerSpec(
          schedule=o.schedule, warmup_steps=int(o.warmup_steps),
          total_steps=int(t.steps), end_fraction=float(o.get(
              "end_fraction", 0.0)), clip=bool(o.grad_clip)),
      controller=hparams_lib.ControllerSpec(
          method=e.method, anneal=e.get("anneal", "constant"),
          anneal_steps=int(e.get("anneal_steps", 100)),
          rule=e.get("rule", "bang_bang"), measure=e.get("measure", "old_logp"),
          steer_mode=e.get("steer_mode", "exponential"),
          steer_score=e.get("steer_score", "reference")),
      estimator=config.advantage.estimator,
      group_size=int(config.rollout.n_samples),
      ppo_epochs=int(t.ppo_epochs), num_mini_batches=int(t.num_mini_batches),
      recompute_old_logp=bool(t.recompute_old_logp),
      kl_in_reward_kind=(lc.kl_in_reward_kind
                         if lc.get("kl_in_reward_coef", 0.0) > 0 else None),
      policy_hparams=tuple(sorted(_policy_hparams(lc).items())))


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
  return {k: float(v) for k, v in out.items()}
