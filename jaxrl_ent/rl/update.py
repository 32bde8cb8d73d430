"""The RL update: one pure function from a scored rollout to the next state.

`update(state, batch, key, ref_params) -> (state, metrics)` (DESIGN.md §1)
does everything after scoring inside one jit:

  1. old and reference log-probs (one forward each, no gradient), the
     in-reward KL, the advantages (`rl.registry` estimator);
  2. a `lax.scan` over epochs × mini-batches (each epoch's permutation from
     the key), each a `lax.scan` over micro-batches of the token-space step
     (`train_step.micro_batch_grads`: vjp → loss cotangent → controller chain
     → one backward), then the optimizer with the finiteness guard;
  3. optionally (static `measure`) the same batch re-scored after the update,
     for the measured entropy change, beside the exact first-order
     prediction `⟨∂H/∂θ, Δθ⟩` of the realised step and its split by source
     through the optimizer (`entropy.exact_dynamics`, DESIGN.md §4): each
     micro-batch's cotangent is pulled back once more per source, the
     optimizer's update is split with the realised clip factor and second
     moment, and every part is contracted with ∂(mean H)/∂θ at θ_before
     and at θ_after (the trapezoid rule) through the chunked token
     statistics (`exact_dynamics.entropy_and_grad_dot`: reverse mode, as
     the attention kernels have no JVP rule; the forward-mode `entropy_jvp`
     gives per-token values where the model allows); the forward at
     θ_after is the re-scored batch. Off `measure` steps none of it is
     traced;
  4. the metrics (verl names).

PPO with a learned critic (`spec.critic`, estimator `gae`; `rl.critic`):
step 1 also predicts the values `V_old` with the step-start critic and
computes GAE advantages (whitened) and returns from the per-token rewards;
every mini-batch of step 2 first updates the critic (clipped value loss,
its own optimizer and lr) on the same rows, then the policy. During
`critic.warmup_steps` the policy, its optimizer and the controllers hold
(verl `critic_warmup`). The critic state rides in `TrainState.critic`.

Every sweepable coefficient is read from `state.hparams` (`rl.hparams`), so
`jax.vmap(update)` over stacked states sweeps seeds and coefficients in one
program. `state.step` counts RL steps and is the schedules' one clock.

The controller chain sees, at every micro-batch of an RL step, the chain
state from the start of that step and the full batch's entropy as
`measured_entropy`: adaptive controllers (Skywork-OR1 bang-bang, Lagrangian,
AEnt) then move their coefficient once per RL step, on the whole batch, as
the references do; the state carried to the next step is the last call's.

Axis legend: R rows, S = P + C sequence, C completion length, E epochs,
N mini-batches per epoch.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl_ent.entropy import covariance
from jaxrl_ent.entropy import exact_dynamics
from jaxrl_ent.rl import advantages as advantages_lib
from jaxrl_ent.rl import critic as critic_lib
from jaxrl_ent.rl import hparams as hparams_lib
from jaxrl_ent.rl import kl
from jaxrl_ent.rl import registry
from jaxrl_ent.rl import state as state_lib
from jaxrl_ent.rl import train_step as ts


@struct.dataclass
class RolloutBatch:
  """A scored rollout, as the host loop hands it to `update`.

  Attributes:
    tokens, positions, attention_mask: int32 [R, S] (see `rollout.Rollout`).
    completion_mask: int32 [R, C].
    behaviour_logp: float32 [R, C] log-probs the sampler drew with.
    rewards: float32 [R] sequence scores (groups of `group_size` rows).
  """
  tokens: jax.Array
  positions: jax.Array
  attention_mask: jax.Array
  completion_mask: jax.Array
  behaviour_logp: jax.Array
  rewards: jax.Array

  @classmethod
  def from_rollout(cls, out, rewards) -> "RolloutBatch":
    """From a `rollout.Rollout`, possibly stacked over replicas ([S, R, …])."""
    attention_mask = jnp.concatenate([out.prompt_mask, out.completion_mask],
                                     axis=-1)
    return cls(tokens=out.tokens, positions=out.positions,
               attention_mask=attention_mask,
               completion_mask=out.completion_mask, behaviour_logp=out.logp,
               rewards=jnp.asarray(rewards, jnp.float32))


@dataclasses.dataclass(frozen=True)
class UpdateSpec:
  """The static structure of an RL update (a jit key; values are hparams).

  Attributes:
    loss: static loss settings; `loss.kl_coef > 0` switches the KL term on
      (its value is `hparams["loss.kl_coef"]`).
    optimizer, controller: `rl.hparams` specs.
    estimator: advantage estimator name (`rl.registry`).
    group_size: rows per prompt.
    ppo_epochs, num_mini_batches: E and N.
    recompute_old_logp: PPO ratio denominator from the current policy's
      forward (True) or the sampler's log-probs.
    kl_in_reward_kind: in-reward KL estimator, None when off.
    policy_hparams: (loss kwarg, hparam key) pairs fed to the policy loss.
    critic: the learned critic (`rl.critic.CriticSpec`), required by the
      estimators in `registry.CRITIC_ESTIMATORS` (GAE; γ, λ are
      `hparams["advantage.gamma"|"advantage.lam"]`); None otherwise.
  """
  loss: ts.LossConfig
  optimizer: hparams_lib.OptimizerSpec
  controller: hparams_lib.ControllerSpec
  estimator: str = "grpo"
  group_size: int = 1
  ppo_epochs: int = 1
  num_mini_batches: int = 1
  recompute_old_logp: bool = True
  kl_in_reward_kind: str | None = None
  policy_hparams: tuple[tuple[str, str], ...] = ()
  critic: critic_lib.CriticSpec | None = None

  @property
  def uses_reference(self) -> bool:
    return self.loss.kl_coef > 0 or self.kl_in_reward_kind is not None

  def validate_critic(self):
    """A critic exactly when the estimator reads one."""
    if registry.needs_critic(self.estimator) != (self.critic is not None):
      raise ValueError(
          f"advantage estimator {self.estimator!r} "
          + ("needs a critic (UpdateSpec.critic)." if self.critic is None
             else "reads no critic: UpdateSpec.critic must be None."))
    if self.critic is not None:
      self.critic.validate()
    return self


def init_state(spec: UpdateSpec, params, hparams) -> state_lib.TrainState:
  """A fresh `TrainState` for `update` (call under the mesh, or jit it)."""
  hp = hparams_lib.as_hparams(hparams)
  opt = hparams_lib.optimizer(spec.optimizer, hp, 0)
  ctrl = hparams_lib.controller(spec.controller, hp, 0)
  state = state_lib.create(params, opt, ctrl, hp)
  if spec.validate_critic().critic is not None:
    state = state.replace(critic=critic_lib.init_state(spec.critic, params,
                                                       hp))
  return state


def _stats(graphdef, rest, loss_cfg, params, batch: ts.RLBatch):
  """Token statistics as constants (old/reference/after passes)."""
  return jax.lax.stop_gradient(
      ts.params_stats(graphdef, rest, loss_cfg, params, batch))


def _sources(spec: UpdateSpec) -> tuple[str, ...]:
  """Gradient sources of the exact ΔH split (`train_step.SOURCES`)."""
  out = ("pg",)
  if spec.loss.kl_coef > 0:
    out += ("kl",)
  if spec.controller.method != "none":
    out += ("controller",)
  return out


def _source_name(spec: UpdateSpec, source: str) -> str:
  return spec.controller.method if source == "controller" else source


def _attribute(acc, src_grads, sources, params_prev, opt_state, finite,
               grad_norm, opt_values, adamw):
  """One optimizer update's split by source, added to `acc`."""
  g_s = jax.tree.map(lambda *xs: jnp.stack(xs).astype(jnp.float32),
                     *[src_grads[name] for name in sources])
  c = exact_dynamics.clip_factor(grad_norm, opt_values["grad_clip"])
  if adamw:
    return exact_dynamics.adamw_step_by_source(
        acc, g_s, params_prev, optax.tree_utils.tree_get(opt_state, "nu"),
        optax.tree_utils.tree_get(opt_state, "count"), lr=opt_values["lr"],
        b1=opt_values["b1"], b2=opt_values["b2"], eps=opt_values["eps"],
        weight_decay=opt_values["weight_decay"], c=c, applied=finite)
  return exact_dynamics.sgd_step_by_source(
      acc, g_s, params_prev, lr=opt_values["lr"],
      weight_decay=opt_values["weight_decay"], c=c, applied=finite)


def _exact_metrics(stats_fn, params_before, params_after, acc, sources,
                   adamw, mask, h_before, spec):
  """`entropy/measured_dH`, `entropy/dH_pred_exact/*`,
  `entropy/dH_pred_trapezoid/*` and the residuals (DESIGN.md §4).

  The measured change is the batch's mean entropy at θ_after (the forward
  of the backward pass there) minus `h_before`, the old-log-prob pass's.

  `total` is along the realised `θ_after − θ_before`; the sources (one per
  gradient source, `momentum` for what the carried first moment moved,
  `weight_decay`) are along the split of the summed updates, so
  `unattributed = total − Σ sources` is only the float rounding of
  `θ + Δθ` (and 0 up to it).
  """
  delta = jax.tree.map(
      lambda a, b: a.astype(jnp.float32) - b.astype(jnp.float32),
      params_after, params_before)
  parts = [delta]
  names = ["total"]
  if acc is not None:
    parts += [jax.tree.map(lambda x, i=i: x[i], acc["d_src"])
              for i in range(len(sources))]
    names += [_source_name(spec, s) for s in sources]
    if adamw:
      parts.append(acc["d_carried"])
      names.append("momentum")
    parts.append(acc["d_wd"])
    names.append("weight_decay")
  tangents = jax.tree.map(
      lambda p, *xs: jnp.stack(xs).astype(p.dtype), params_before, *parts)
  pred = exact_dynamics.entropy_grad_dot(stats_fn, params_before, tangents,
                                         mask)
  # The trapezoid rule along the same segment, ½⟨∇H(θ) + ∇H(θ + Δθ), Δθ_s⟩:
  # one more backward pass at θ_after makes the account exact to second
  # order (error O(|Δθ|³) instead of O(|Δθ|²)), still linear in the
  # tangents, so the sources still sum to the total. Its forward is the
  # re-scored batch: the measured entropy at θ_after needs no pass of its
  # own.
  h_after, pred_after = exact_dynamics.entropy_and_grad_dot(
      stats_fn, params_after, tangents, mask)
  measured = h_after - h_before
  trap = 0.5 * (pred + pred_after)
  out = {"entropy/measured_dH": measured}
  for prefix, values in (("entropy/dH_pred_exact/", pred),
                         ("entropy/dH_pred_trapezoid/", trap)):
    out.update({prefix + name: values[i] for i, name in enumerate(names)})
    if acc is not None:
      out[prefix + "unattributed"] = values[0] - jnp.sum(values[1:])
  out["entropy/dH_residual"] = measured - pred[0]
  out["entropy/dH_residual_trapezoid"] = measured - trap[0]
  return out


def make_update(graphdef, rest, spec: UpdateSpec):
  """`update(state, batch, key, ref_params=None, *, measure=False)`.

  Pure and not jitted: jit it with `jit_update` (shardings, donation) or
  `jax.vmap` it first for replicas. `key` is the RL step's key
  (`fold_in(seed_key, step)`); its first third is the rollout's, so the
  update uses the other two (train, shuffle).
  """
  spec.loss.validate()
  spec.validate_critic()
  e, n, m = spec.ppo_epochs, spec.num_mini_batches, spec.loss.num_micro_batches
  estimator = registry.get_advantage_estimator(spec.estimator)
  stats = functools.partial(_stats, graphdef, rest, spec.loss)
  cspec = spec.critic
  # The critic's forwards pack exactly when the policy's do.
  critic_step = (critic_lib.make_step(graphdef, rest, cspec, m,
                                      spec.loss.pack_shape)
                 if cspec is not None else None)

  def update(state: state_lib.TrainState, batch: RolloutBatch, key,
             ref_params=None, *, measure: bool = False):
    hp, step = state.hparams, state.step
    optimizer = hparams_lib.optimizer(spec.optimizer, hp, step)
    controller = optax.with_extra_args_support(
        hparams_lib.controller(spec.controller, hp, step))
    _, key_train, key_shuffle = jax.random.split(key, 3)
    mask = batch.completion_mask
    rows = mask.shape[0]
    if rows % n:
      raise ValueError(f"{rows} rows do not split into num_mini_batches={n}.")
    zeros = jnp.zeros_like(batch.behaviour_logp)

    # 1. Statistics of the rollout under the current and reference policies.
    probe = ts.RLBatch(tokens=batch.tokens, positions=batch.positions,
                       attention_mask=batch.attention_mask,
                       completion_mask=mask, old_logp=batch.behaviour_logp,
                       advantages=zeros, ref_logp=batch.behaviour_logp)
    before = stats(state.params, probe)
    old_logp = (before.logp * mask if spec.recompute_old_logp
                else batch.behaviour_logp)
    if spec.uses_reference:
      if ref_params is None:
        raise ValueError("this update has a KL term: pass ref_params.")
      ref_logp = stats(ref_params, probe).logp * mask
    else:
      ref_logp = zeros
    metrics = {}
    rewards = batch.rewards
    token_rewards = advantages_lib.last_token_rewards(rewards, mask)
    if spec.kl_in_reward_kind is not None:
      # verl `use_kl_in_reward`: r_t ← r_t − β·k(old, ref) per token; the
      # outcome estimators then see the sequence sum.
      token_rewards, reward_kl = kl.kl_in_reward(
          token_rewards, old_logp, ref_logp, mask,
          hp["loss.kl_in_reward_coef"], kind=spec.kl_in_reward_kind)
      rewards = jnp.sum(token_rewards, axis=1)
      metrics["critic/kl_in_reward"] = reward_kl
      metrics["critic/rewards/mean"] = jnp.mean(rewards)
    if cspec is not None:
      # GAE on the per-token rewards with the critic's values at rollout
      # time (verl `compute_gae_advantage_return`: returns before whitening).
      old_values = jax.lax.stop_gradient(critic_lib.values(
          graphdef, rest, cspec, state.critic.params, state.params,
          batch.tokens, batch.positions, batch.attention_mask,
          probe.prompt_len,
          spec.loss.pack_shape(*batch.tokens.shape))) * mask
      adv, returns = advantages_lib.gae_advantages(
          token_rewards, old_values, mask, gamma=hp["advantage.gamma"],
          lam=hp["advantage.lam"])
      critic_rows = critic_lib.CriticBatch(
          tokens=batch.tokens, positions=batch.positions,
          attention_mask=batch.attention_mask, completion_mask=mask,
          values=old_values, returns=returns)
      # verl `critic_warmup`: only the critic learns in the first steps.
      policy_on = step >= cspec.warmup_steps
    else:
      adv = estimator(rewards, mask, group_size=spec.group_size)
      critic_rows, policy_on = None, None
    full = probe.replace(old_logp=old_logp, advantages=adv,
                         ref_logp=ref_logp)
    h_before = covariance.masked_mean(before.entropy, mask)
    measured = (-covariance.masked_mean(old_logp, mask)
                if spec.controller.measure == "old_logp"
                and spec.controller.method == "adaptive_entropy"
                else h_before)
    policy_kwargs = {k: hp[h] for k, h in spec.policy_hparams}
    kl_coef = hp.get("loss.kl_coef") if spec.loss.kl_coef > 0 else None
    sources = _sources(spec) if measure else ()
    grad_fn = functools.partial(
        ts.micro_batch_grads, graphdef, rest, spec.loss, controller,
        policy_kwargs=policy_kwargs, kl_coef=kl_coef, sources=sources,
        measured_entropy=measured)
    opt_values = hparams_lib.optimizer_values(spec.optimizer, hp, step)
    adamw = spec.optimizer.kind == "adamw"

    # 2. Epochs × mini-batches, each epoch a fresh permutation of the rows.
    perms = jax.vmap(lambda i: jax.random.permutation(
        jax.random.fold_in(key_shuffle, i), rows))(jnp.arange(e))
    mb_rows = rows // n
    ctrl0 = state.ctrl_state

    def mini_batch(carry, j):
      params, opt_state, ctrl, skipped, acc, crit = carry
      idx = jax.lax.dynamic_slice_in_dim(perms[j // n], (j % n) * mb_rows,
                                         mb_rows)
      mb = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), full)
      if crit is not None:
        # The critic first, on the policy the mini-batch starts from (its
        # `head` trunk); both see the same rows.
        crit, crit_metrics = critic_step(
            crit, params, jax.tree.map(lambda x: jnp.take(x, idx, axis=0),
                                       critic_rows), hp)
      grads, ctrl_out, mb_metrics = ts.accumulate_micro_batches(
          lambda p, _, micro, k: grad_fn(p, ctrl0, micro, k), params, ctrl0,
          mb, m, jax.random.fold_in(key_train, j))
      if sources:
        grads, src_grads = grads
      mb_metrics = jax.tree.map(jnp.mean, mb_metrics)
      params_prev, opt_prev = params, opt_state
      params, opt_state, finite, grad_norm = ts.guarded_apply(
          optimizer, grads, opt_state, params, mb_metrics["actor/loss"])
      applied = finite
      if policy_on is not None:
        # Critic warm-up: the policy, its optimizer and the controllers hold.
        keep = lambda new, old: jax.tree.map(
            lambda a, b: jnp.where(policy_on, a, b), new, old)
        params, opt_state = (keep(params, params_prev),
                             keep(opt_state, opt_prev))
        applied = finite & policy_on
      if sources:
        acc = _attribute(acc, src_grads, sources, params_prev, opt_state,
                         applied, grad_norm, opt_values, adamw)
      mb_metrics["actor/grad_norm"] = grad_norm
      mb_metrics["train/update_finite"] = finite.astype(jnp.float32)
      mb_metrics.update(ts.controller_metrics(ctrl_out))
      ctrl = jax.tree.map(lambda a, b: jnp.where(applied, a, b), ctrl_out,
                          ctrl)
      if crit is not None:
        mb_metrics.update(crit_metrics)
      return (params, opt_state, ctrl,
              skipped + (~finite).astype(jnp.int32), acc, crit), mb_metrics

    acc0 = (exact_dynamics.init_attribution(
        state.params, optax.tree_utils.tree_get(state.opt_state, "mu")
        if adamw else None, len(sources)) if sources else None)
    (params, opt_state, ctrl_state, skipped, acc, crit), mb_metrics = (
        jax.lax.scan(mini_batch, (state.params, state.opt_state, ctrl0,
                                  state.skipped, acc0, state.critic),
                     jnp.arange(e * n)))
    new_state = state.replace(step=step + 1, params=params,
                              opt_state=opt_state, ctrl_state=ctrl_state,
                              skipped=skipped, critic=crit)

    # 4. Metrics: the mean over mini-batch updates, then whole-batch values.
    metrics.update(jax.tree.map(jnp.mean, mb_metrics))
    valid = mask > 0
    if cspec is not None:
      metrics.update(critic_lib.batch_metrics(old_values, returns, adv, mask))
      metrics["critic/lr"] = hp["critic.lr"]
      metrics["actor/policy_frozen"] = (~policy_on).astype(jnp.float32)
    metrics.update({
        "critic/advantages/mean": covariance.masked_mean(adv, mask),
        "critic/advantages/max": jnp.max(jnp.where(valid, adv, -jnp.inf)),
        "actor/entropy_before_update": h_before,
        "actor/lr": opt_values["lr"],
        "train/skipped_steps": skipped.astype(jnp.float32),
    })
    if spec.loss.pack_fraction:
      # The log-prob passes (old, reference, after) pack the whole batch.
      metrics["perf/logprob_pack_fits"] = ts.pack_metrics(
          spec.loss, full)["perf/pack_fits"]
    if measure:
      # 3. The same batch under the updated policy.
      metrics.update(_exact_metrics(
          lambda p: ts.params_stats(graphdef, rest, spec.loss, p, full),
          state.params, params, acc, sources, adamw, mask, h_before, spec))
    return new_state, metrics

  return update


def jit_update(update, state_shardings, batch_shardings, replicated, *,
               measure: bool, ref_shardings=None, replicas: bool = False,
               donate: bool = True):
  """`update` jitted with explicit shardings and a donated state.

  The shardings come from `sharding.train_state_shardings` (the same helper
  init, restore and the AOT check use), so a step never moves the state;
  the key and the metrics are `replicated`. Pass `ref_shardings=None` when
  there is no reference policy. With `replicas`, every argument carries a
  leading replica axis and the update is `jax.vmap`ped over it.
  """
  fn = functools.partial(update, measure=measure)
  if replicas:
    fn = jax.vmap(fn, in_axes=(0, 0, 0, None if ref_shardings is None
                               else 0))
  return jax.jit(
      fn, in_shardings=(state_shardings, batch_shardings, replicated,
                        ref_shardings),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,) if donate else ())
