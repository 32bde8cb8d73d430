"""The RL training loop: rollout → rewards → advantages → policy updates.

`train_and_evaluate(config, workdir)` is what `launch/train.py` and the tests
call. One iteration (DESIGN.md §1):

  prompts (grain)  →  rollout.generate (n samples per prompt, jitted)
  →  rewards (safe scorer, host)  →  advantages (GRPO …)
  →  old/ref log-probs (one forward each)  →  ppo_epochs × mini-batches of
     the jitted train step (micro-batches inside, controllers in token space)
  →  metrics (JSONL + TensorBoard, verl names), held-out eval every N steps.

Per-step keys are `fold_in(seed_key, step)`; nothing key-related is carried
across the host loop.

Multi-host (`train/distributed.py`): every process runs this same loop on
its block of each prompt batch; the rollout and updates use global arrays,
each process scores its own rows and the scores are gathered, so metrics,
decisions and checkpoints agree on every process.
"""

import json
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from jaxrl_ent import rewards as rewards_lib
from jaxrl_ent import rollout
from jaxrl_ent import sharding
from jaxrl_ent.data import pipeline
from jaxrl_ent.rl import advantages as rl_advantages
from jaxrl_ent.rl import kl
from jaxrl_ent.rl import registry as rl_registry
from jaxrl_ent.rl import train_step as ts
from jaxrl_ent.train import checkpoint
from jaxrl_ent.train import distributed
from jaxrl_ent.train import factories
from jaxrl_ent.train import metrics as metrics_lib
from jaxrl_ent.train import optim
from jaxrl_ent.train import policy_setup
from jaxrl_ent.train import preemption
from jaxrl_ent.train import state as state_lib
from jaxrl_ent.train import validate

_LOG = logging.getLogger(__name__)
# Held-out evaluations use this fixed key, so any saved step re-evaluated
# (launch/evaluate.py) gives exactly the run's val/* numbers.
EVAL_KEY_SEED = 10_000


def _data_config(config, *, split: str, size: int, batch: int, eval_: bool):
  d = config.data
  return pipeline.PromptDataConfig(
      paths=(d.eval_paths if eval_ else d.train_paths) or None,
      prompt_field=d.prompt_field, answer_field=d.answer_field,
      id_field=d.id_field or None, task=d.task or None, task_split=split,
      task_size=size, task_seed=d.task_seed, task_kwargs=dict(d.task_kwargs),
      template=d.template, chat_template=d.chat_template,
      system_prompt=d.system_prompt or None,
      max_prompt_length=d.max_prompt_length, on_overlong=d.on_overlong,
      batch_size=batch, shuffle=not eval_, seed=config.seed,
      num_epochs=1 if eval_ else None, drop_remainder=not eval_,
      prefetch=0 if eval_ else 2)


def _row_block(mesh, num_rows) -> tuple[int, int]:
  """This process's block of a batch's rows; (0, 1) on one process."""
  if jax.process_count() == 1:
    return 0, 1
  if mesh is None:
    raise ValueError("a multi-process run needs the mesh to place its "
                     "batches; pass `mesh`.")
  return sharding.process_row_block(mesh, num_rows)


def _prompts(batch, mesh, block):
  """(tokens, mask) for `rollout.generate`: the batch itself on one
  process; on several, global arrays built from every process's block."""
  if jax.process_count() == 1:
    return batch["tokens"], batch["mask"]
  return tuple(sharding.global_batch(mesh, batch[k], block)
               for k in ("tokens", "mask"))


def _own_rows(x, block) -> np.ndarray:
  """This process's block of the rows of per-row array `x` (all of it on one
  process). Groups are contiguous, so block p of the completions samples
  block p of the prompts."""
  x = sharding.to_host(x)
  size = x.shape[0] // block[1]
  return x[block[0] * size:(block[0] + 1) * size]


def _all_rows(local, block):
  """Per-row host values of every block, in row order (`local` itself on
  one process). A ScoreResult is merged with `ScoreResult.concatenate`."""
  if jax.process_count() == 1:
    return local
  parts = distributed.gather_blocks(local, block)
  if isinstance(local, rewards_lib.ScoreResult):
    return rewards_lib.ScoreResult.concatenate(parts)
  return np.concatenate(parts)


def _decode(tokenizer, completion, lengths) -> list[str]:
  completion, lengths = np.asarray(completion), np.asarray(lengths)
  return tokenizer.batch_decode(
      [row[:n] for row, n in zip(completion, lengths)],
      skip_special_tokens=True)


class Evaluator:
  """Held-out greedy accuracy and pass@k (sampled) on fixed prompts."""

  def __init__(self, config, tokenizer, reward_fn, scorer, mesh=None):
    e = config.eval
    self.cfg = config
    self.tokenizer, self.reward_fn, self.scorer = tokenizer, reward_fn, scorer
    data_cfg = _data_config(config, split="test", size=e.num_examples,
                            batch=e.batch_size, eval_=True)
    # Multi-host: each process reads (and scores) its block of every batch;
    # without a mesh, block p of P (the usual process-major layout).
    self.block = ((jax.process_index(), jax.process_count()) if mesh is None
                  else _row_block(mesh, e.batch_size))
    self.batches = list(pipeline.make_prompt_iterator(
        data_cfg, tokenizer, process_index=self.block[0],
        process_count=self.block[1]))

  def __call__(self, policy, key, mesh) -> dict[str, float]:
    e, r = self.cfg.eval, self.cfg.rollout
    block = self.block
    if block != _row_block(mesh, e.batch_size):
      raise ValueError(f"Evaluator: this process read row block {block} but "
                       f"the mesh puts block {_row_block(mesh, e.batch_size)}"
                       " of each batch here; pass the mesh to Evaluator().")
    greedy, passk = [], []
    for i, batch in enumerate(self.batches):
      kw = dict(max_new_tokens=r.max_new_tokens,
                stop_token_ids=[self.tokenizer.eos_token_id],
                pad_id=self.tokenizer.pad_token_id or 0,
                prompt_buckets=(batch["tokens"].shape[1],), mesh=mesh)
      prompts = _prompts(batch, mesh, block)
      valid = batch["valid"]
      out = rollout.generate(policy, prompts, key, greedy=True, **kw)
      texts = _decode(self.tokenizer, _own_rows(out.completion, block),
                      _own_rows(out.lengths, block))
      res = self.scorer.score(self.reward_fn, texts, batch["references"],
                              timeout_s=self.cfg.reward.timeout_s)
      greedy.append(_all_rows(res.rewards[valid], block))
      if e.pass_k > 0:
        out = rollout.generate(policy, prompts, jax.random.fold_in(key, i),
                               temperature=r.temperature, n_samples=e.pass_k,
                               **kw)
        texts = _decode(self.tokenizer, _own_rows(out.completion, block),
                        _own_rows(out.lengths, block))
        refs = [ref for ref in batch["references"] for _ in range(e.pass_k)]
        res = self.scorer.score(self.reward_fn, texts, refs,
                                timeout_s=self.cfg.reward.timeout_s)
        solved = res.rewards.reshape(-1, e.pass_k) >= e.success_threshold
        passk.append(_all_rows(solved.any(axis=1)[valid], block))
    g = np.concatenate(greedy)
    out = {"val/greedy_acc": float(np.mean(g >= e.success_threshold)),
           "val/greedy_reward": float(np.mean(g)),
           "val/num_prompts": float(len(g))}
    if passk:
      out[f"val/pass_at_{e.pass_k}"] = float(np.mean(np.concatenate(passk)))
    return out


def _rl_batch(out, advantages, old_logp, ref_logp) -> ts.RLBatch:
  return ts.RLBatch(
      tokens=out.tokens, positions=out.positions,
      attention_mask=out.attention_mask,
      completion_mask=out.completion_mask, old_logp=old_logp,
      advantages=advantages, ref_logp=ref_logp)


def make_reward_fn(config):
  """`config.reward.spec`, else the reward of the synthetic `data.task`."""
  if not config.reward.spec and not config.data.task:
    raise ValueError("config.reward.spec is empty and there is no "
                     "config.data.task to take the reward from.")
  return rewards_lib.get_reward_fn(
      config.reward.spec or rewards_lib.TASKS[config.data.task].reward)


def train_and_evaluate(config, workdir) -> dict:
  """Runs GRPO/PPO as `config` says; returns the run summary (also written
  to `<workdir>/summary.json`)."""
  # Join the other hosts first: validation counts devices and processes.
  distributed.maybe_initialize(config)
  # Every config mistake in one error, before the policy, the warm start or
  # any compilation (and before the workdir is created).
  validate.validate_config(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(dict(config.mesh))
  seed_key = jax.random.key(config.seed)
  t = config.train
  writer = metrics_lib.MetricWriter(workdir, tensorboard=config.tensorboard)
  is_main = jax.process_index() == 0

  # ----------------------------------------------------------------- setup
  policy, tokenizer = policy_setup.build_policy(config, mesh, workdir)
  context = policy.cfg.max_position_embeddings
  if config.data.max_prompt_length + config.rollout.max_new_tokens > context:
    raise ValueError(
        f"data.max_prompt_length ({config.data.max_prompt_length}) + "
        f"rollout.max_new_tokens ({config.rollout.max_new_tokens}) exceeds "
        f"the model's context of {context} tokens.")
  reward_fn = make_reward_fn(config)
  scorer = rewards_lib.RewardScorer(backend=config.reward.backend)
  evaluator = Evaluator(config, tokenizer, reward_fn, scorer, mesh=mesh)
  block = _row_block(mesh, t.prompts_per_step)
  train_iter = pipeline.make_prompt_iterator(
      _data_config(config, split="train", size=config.data.task_size,
                   batch=t.prompts_per_step, eval_=False), tokenizer,
      process_index=block[0], process_count=block[1])
  group = config.rollout.n_samples
  estimator = rl_registry.get_advantage_estimator(config.advantage.estimator)
  loss_cfg = factories.make_loss_config(config.loss)
  optimizer, controller = factories.make_train_transforms(config)
  graphdef, params, rest = state_lib.split_model(policy)
  with sharding.use_mesh(mesh):
    state = jax.jit(lambda p: state_lib.create(p, optimizer, controller))(
        params)
  train_step = ts.make_train_step(graphdef, rest, optimizer, controller,
                                  loss_cfg)
  stats_fn = ts.make_stats_fn(graphdef, rest, loss_cfg)
  # A frozen copy of the initial policy when any KL term needs it.
  ref_params = (jax.tree.map(jnp.copy, params)
                if loss_cfg.kl_coef > 0 or config.loss.kl_in_reward_coef > 0
                else None)
  rows = t.prompts_per_step * group
  if rows % t.num_mini_batches:
    raise ValueError(f"train.prompts_per_step × rollout.n_samples = {rows} "
                     f"must be divisible by train.num_mini_batches="
                     f"{t.num_mini_batches}.")
  sampling = dict(max_new_tokens=config.rollout.max_new_tokens,
                  temperature=config.rollout.temperature,
                  top_p=config.rollout.top_p, top_k=config.rollout.top_k,
                  n_samples=group, return_entropy=True,
                  stop_token_ids=[tokenizer.eos_token_id],
                  pad_id=tokenizer.pad_token_id or 0, mesh=mesh)

  def current_policy():
    return nnx.merge(graphdef, state.params, rest)

  # ------------------------------------------------------ checkpoints
  # Restore order: this run's checkpoints → config.resume_from → the initial
  # weights built above (HF folder or tiny model + warm start) → scratch.
  c = config.checkpoint
  ckpt = checkpoint.Checkpointer(workdir / "ckpt", max_to_keep=c.keep,
                                 save_interval_steps=c.every,
                                 async_save=c.async_save)
  start_step = 0
  summary = {"workdir": str(workdir)}
  found = checkpoint.resolve_restore(workdir / "ckpt",
                                     config.resume_from or None)
  if found is not None:
    source = (ckpt if pathlib.Path(found[0]) == pathlib.Path(ckpt.directory)
              else checkpoint.Checkpointer(found[0], read_only=True))
    state, data_state, meta, start_step = source.restore(
        checkpoint.abstract_state(state), step=found[1])
    if data_state is not None:
      train_iter.set_state(data_state)
    summary = dict(meta.get("summary", summary), workdir=str(workdir))
    summary.pop("preempted_at", None)
    writer.truncate_after(start_step)
    _LOG.warning("resumed from %s at step %d", found[0], start_step)
  else:
    with sharding.use_mesh(mesh):
      initial = evaluator(current_policy(), jax.random.key(EVAL_KEY_SEED), mesh)
    summary["initial_eval"] = initial
    writer.write(0, initial)
    _LOG.info("initial held-out eval: %s", initial)

  # ------------------------------------------------------------------ loop
  bar = tqdm.trange(start_step, t.steps, desc="grpo", disable=not is_main,
                    initial=start_step, total=t.steps)
  last_eval = dict(summary.get("last_eval", summary["initial_eval"]))
  consecutive_skips = 0
  preempted = preemption.SigtermFlag()
  for step in bar:
    start = time.perf_counter()
    step_key = jax.random.fold_in(seed_key, step)
    key_rollout, key_train, key_shuffle = jax.random.split(step_key, 3)
    batch = next(train_iter)
    with sharding.use_mesh(mesh):
      out = rollout.generate(current_policy(), _prompts(batch, mesh, block),
                             key_rollout,
                             prompt_buckets=(batch["tokens"].shape[1],),
                             **sampling)
    rollout_s = time.perf_counter() - start
    # Each process scores its own rows; then every process holds all scores.
    texts = _decode(tokenizer, _own_rows(out.completion, block),
                    _own_rows(out.lengths, block))
    refs = [r for r in batch["references"] for _ in range(group)]
    scored = _all_rows(scorer.score(reward_fn, texts, refs,
                                    timeout_s=config.reward.timeout_s), block)
    mask = out.completion_mask
    with sharding.use_mesh(mesh):
      # Statistics of the rollout under the current and reference policies
      # (advantages are not needed for them).
      probe = _rl_batch(out, jnp.zeros_like(out.logp), out.logp, out.logp)
      before = stats_fn(state.params, probe)
      old_logp = (before.logp * mask if t.recompute_old_logp else out.logp)
      ref_logp = (stats_fn(ref_params, probe).logp * mask
                  if ref_params is not None else jnp.zeros_like(out.logp))
    rewards_b = jnp.asarray(scored.rewards, jnp.float32)
    reward_kl = None
    if config.loss.kl_in_reward_coef > 0:
      # verl `use_kl_in_reward`: r_t ← r_t − β·k(old, ref) per token; the
      # outcome estimators then see the sequence sum.
      token_rewards, reward_kl = kl.kl_in_reward(
          rl_advantages.last_token_rewards(rewards_b, mask), old_logp,
          ref_logp, mask, config.loss.kl_in_reward_coef,
          kind=config.loss.kl_in_reward_kind)
      rewards_b = jnp.sum(token_rewards, axis=1)
    advantages = estimator(rewards_b, mask, group_size=group)
    with sharding.use_mesh(mesh):
      full = _rl_batch(out, advantages, old_logp, ref_logp)
      step_metrics = []
      mb_rows = rows // t.num_mini_batches
      for epoch in range(t.ppo_epochs):
        perm = jax.random.permutation(jax.random.fold_in(key_shuffle, epoch),
                                      rows)
        for j in range(t.num_mini_batches):
          idx = perm[j * mb_rows:(j + 1) * mb_rows]
          mb = jax.tree.map(lambda x: x[idx], full)
          state, m = train_step(state, mb, jax.random.fold_in(
              key_train, epoch * t.num_mini_batches + j))
          step_metrics.append(m)
      after = None
      if t.measure_every and step % t.measure_every == 0:
        after = stats_fn(state.params, full)
    train_m = metrics_lib.to_python(jax.tree.map(
        lambda *xs: jnp.mean(jnp.stack(xs)), *step_metrics))
    m = {k: v for k, v in train_m.items()}
    # Whole arrays on every host (an allgather when they span processes).
    host = sharding.to_host
    valid = host(mask).astype(bool)
    lengths = host(out.lengths)
    h_before = float(host(before.entropy)[valid].mean())
    m.update({
        "critic/score/mean": float(np.mean(scored.rewards)),
        "critic/score/max": float(np.max(scored.rewards)),
        "critic/score/min": float(np.min(scored.rewards)),
        "critic/advantages/mean": float(host(advantages)[valid].mean()),
        "critic/advantages/max": float(host(advantages)[valid].max()),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "response_length/clip_ratio": float(
            np.mean(lengths >= config.rollout.max_new_tokens)),
        "rollout/entropy": float(host(out.entropy)[valid].mean()),
        "actor/entropy_before_update": h_before,
        "actor/lr": float(optim.current_lr(state.opt_state) or 0.0),
        "train/skipped_steps": float(state.skipped),
        "perf/time_rollout": rollout_s,
    })
    m.update(scored.metrics("reward"))
    if reward_kl is not None:
      m["critic/kl_in_reward"] = float(reward_kl)
      m["critic/rewards/mean"] = float(np.mean(host(rewards_b)))
    if after is not None:
      m["entropy/measured_dH"] = (
          float(host(after.entropy)[valid].mean()) - h_before)
    step_s = time.perf_counter() - start
    tokens = int(host(out.attention_mask).sum())
    m["perf/step_time"] = step_s
    m["perf/throughput"] = tokens / step_s
    if config.eval.every and ((step + 1) % config.eval.every == 0 or
                              step + 1 == t.steps):
      with sharding.use_mesh(mesh):
        last_eval = evaluator(current_policy(), jax.random.key(EVAL_KEY_SEED), mesh)
      m.update(last_eval)
    writer.write(step + 1, m)
    bar.set_postfix(reward=f"{m['critic/score/mean']:.3f}",
                    H=f"{m['actor/entropy']:.3f}",
                    acc=f"{last_eval['val/greedy_acc']:.3f}",
                    s=f"{step_s:.2f}")
    if not np.isfinite(m.get("actor/loss", 0.0)):
      _LOG.warning("step %d: non-finite loss, update skipped", step + 1)
    consecutive_skips = (consecutive_skips + 1
                         if m["train/update_finite"] < 1.0 else 0)
    if consecutive_skips >= t.max_consecutive_skips:
      # Leave the process as a normal return would: the caller's SIGTERM
      # handler back, pending saves committed, metrics flushed.
      preempted.restore()
      ckpt.close()
      writer.close()
      raise FloatingPointError(
          f"{consecutive_skips} consecutive steps skipped updates because of "
          f"non-finite loss or gradients (train.max_consecutive_skips="
          f"{t.max_consecutive_skips}); aborting at step {step + 1}. The "
          "checkpoints hold only finite states; see train/update_finite in "
          "metrics.jsonl.")
    summary["last_eval"] = last_eval
    # A SIGTERM seen by any process stops all of them at the same step (the
    # save is collective).
    stop = distributed.any_process(preempted.is_set)
    ckpt.save(step + 1, state, data_state=train_iter.get_state(),
              meta={"config": config.to_dict(), "summary": summary},
              metrics={k: v for k, v in m.items() if k.startswith("val/")},
              force=step + 1 == t.steps or stop)
    if stop:
      _LOG.warning("SIGTERM received: saved step %d, exiting cleanly; the "
                   "next launch with this workdir continues from it.",
                   step + 1)
      summary["preempted_at"] = step + 1
      break
  preempted.restore()
  ckpt.close()  # Waits for the last async save.
  writer.close()
  summary["final_eval"] = last_eval
  summary["steps"] = t.steps
  if is_main:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary
