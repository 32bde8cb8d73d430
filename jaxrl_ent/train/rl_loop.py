"""The RL host loop: rollout → score → `update` → log / save / evaluate.

`train_and_evaluate(config, workdir)` is what `launch/train.py` and the tests
call. Everything after scoring is one jitted pure function
(`rl.update.make_update`: advantages, old/reference log-probs, epochs ×
mini-batches × micro-batches, controllers, optimizer, metrics); this loop
only moves data between the sampler, the verifiers and it:

  prompts (grain)  →  rollout.generate (n samples per prompt, jitted)
  →  rewards (safe scorer, host)  →  update(state, batch, key, ref_params)
  →  metrics (JSONL + TensorBoard, verl names), checkpoint, held-out eval.

Per-step keys are `fold_in(seed_key, step)` with `step == state.step`
(RL steps); nothing key-related is carried across the host loop.

Replicas (`config.sweep`, `train/replicas.py`): S runs with their own seeds
and coefficients are stacked and advanced by one vmapped rollout and one
vmapped update per step; each writes its own run directory.

Multi-host (`train/distributed.py`): every process runs this same loop on
its block of each prompt batch; the rollout and updates use global arrays,
each process scores its own rows and the scores are gathered, so metrics,
decisions and checkpoints agree on every process.
"""

import dataclasses
import functools
import json
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from jaxrl_ent import rewards as rewards_lib
from jaxrl_ent import rollout
from jaxrl_ent import sharding
from jaxrl_ent import storage
from jaxrl_ent.data import pipeline
from jaxrl_ent.rl import frozen_base
from jaxrl_ent.rl import state as state_lib
from jaxrl_ent.rl import update as update_lib
from jaxrl_ent.rollout import sampler
from jaxrl_ent.train import checkpoint
from jaxrl_ent.train import distributed
from jaxrl_ent.train import evaluation
from jaxrl_ent.train import factories
from jaxrl_ent.train import metrics as metrics_lib
from jaxrl_ent.train import policy_setup
from jaxrl_ent.train import preemption
from jaxrl_ent.train import replicas as replicas_lib
from jaxrl_ent.train import run_summary
from jaxrl_ent.train import validate

_LOG = logging.getLogger(__name__)
# Kept here too: callers and docs refer to `rl_loop.EVAL_KEY_SEED`.
EVAL_KEY_SEED = evaluation.EVAL_KEY_SEED
Evaluator = evaluation.Evaluator
make_reward_fn = evaluation.make_reward_fn


@dataclasses.dataclass
class _Run:
  """Host-side state of one replica (a whole run when there is no sweep)."""
  replica: replicas_lib.Replica | None
  config: Any
  dir: storage.Path
  seed_key: jax.Array
  train_iter: Any = None
  writer: Any = None
  ckpt: Any = None
  summary: dict = dataclasses.field(default_factory=dict)
  last_eval: dict = dataclasses.field(default_factory=dict)
  consecutive_skips: int = 0

  @property
  def label(self) -> str:
    return self.replica.name if self.replica else "run"


def _pad_prompts(batches) -> tuple[np.ndarray, np.ndarray]:
  """[S, B, P] tokens and masks, every replica left-padded to the longest."""
  p = max(b["tokens"].shape[1] for b in batches)
  pad = lambda x: np.pad(x, ((0, 0), (p - x.shape[1], 0)))
  return (np.stack([pad(b["tokens"]) for b in batches]),
          np.stack([pad(b["mask"]) for b in batches]))


def _place(x, target):
  """A batch leaf on `target`: host values (the same on every process, e.g.
  gathered rewards) are cut into their shards; device arrays are moved."""
  if isinstance(x, np.ndarray):
    return jax.make_array_from_callback(x.shape, target, lambda i: x[i])
  return jax.device_put(x, target)


def _stacked_generate(graphdef, rest, params: sampler.SamplingParams):
  """Rollout of every replica at once: vmap of the traceable sampler, with
  the decode loop's length-dependent tests (stop, refill, blocks read)
  shared by all replicas (`sampler.generate_arrays(axis_name=)`)."""
  def one(p, tokens, mask, key):
    return sampler.generate_arrays(nnx.merge(graphdef, p, rest), tokens,
                                   mask, key, params, axis_name="replicas")
  return jax.jit(jax.vmap(one, axis_name="replicas"))


def _restore(runs, abstract, config):
  """Restores every replica at one common step; (states, start) or None."""
  found = [checkpoint.resolve_restore(r.dir / "ckpt",
                                      config.resume_from or None)
           for r in runs]
  if all(f is None for f in found):
    return None
  if any(f is None for f in found):
    missing = [r.label for r, f in zip(runs, found) if f is None]
    raise FileNotFoundError(f"replicas {missing} have no checkpoint while "
                            "others do; remove the workdir or restore them.")
  step = min(f[1] for f in found)
  states = []
  for run, (directory, _) in zip(runs, found):
    source = (run.ckpt if storage.path(directory) == storage.path(
        run.ckpt.directory) else checkpoint.Checkpointer(directory,
                                                         read_only=True))
    state, data_state, meta, got = source.restore(abstract, step=step)
    if got != step:
      raise checkpoint.CheckpointIntegrityError(
          f"{run.label}: step {step} did not verify (restored {got}); the "
          "replicas cannot resume at one step.")
    if data_state is not None:
      run.train_iter.set_state(data_state)
    run.summary = dict(meta.get("summary", run.summary),
                       workdir=str(run.dir))
    run.summary.pop("preempted_at", None)
    run.writer.truncate_after(step)
    states.append(state)
    _LOG.warning("%s: resumed from %s at step %d", run.label, directory, step)
  return states, step


def train_and_evaluate(config, workdir, replicas=None) -> dict:
  """Runs GRPO/PPO as `config` says; returns the run summary (also written
  to `<workdir>/summary.json`). With `config.sweep` (or an explicit list of
  `replicas.Replica` of `config`, as the study passes), the summary holds
  one entry per replica under `replicas`."""
  launched = time.perf_counter()
  # Join the other hosts first: validation counts devices and processes.
  distributed.maybe_initialize(config)
  # Every config mistake in one error, before the policy, the warm start or
  # any compilation (and before the workdir is created).
  validate.validate_config(config)
  plan = replicas_lib.plan(config) if replicas is None else list(replicas)
  stacked = plan is not None
  workdir = storage.path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  rules = sharding.merge_rules(dict(config.sharding.rules))
  mesh = sharding.make_mesh(dict(config.mesh))
  t = config.train
  is_main = jax.process_index() == 0
  runs = [_Run(replica=r, config=r.config(config) if r else config,
               dir=replicas_lib.run_dir(workdir, r),
               seed_key=jax.random.key(r.seed if r else config.seed))
          for r in (plan or [None])]

  # ----------------------------------------------------------------- setup
  policies = []
  for run in runs:
    policy, tokenizer = policy_setup.build_policy(
        run.config, mesh, replicas_lib.warm_start_dir(
            workdir, run.replica, policy_setup.warm_start_seed(run.config)))
    policies.append(policy)
  policy = policies[0]
  context = policy.cfg.max_position_embeddings
  if config.data.max_prompt_length + config.rollout.max_new_tokens > context:
    raise ValueError(
        f"data.max_prompt_length ({config.data.max_prompt_length}) + "
        f"rollout.max_new_tokens ({config.rollout.max_new_tokens}) exceeds "
        f"the model's context of {context} tokens.")
  reward_fn = evaluation.make_reward_fn(config)
  scorer = rewards_lib.RewardScorer(backend=config.reward.backend)
  evaluator = evaluation.Evaluator(config, tokenizer, reward_fn, scorer,
                                   mesh=mesh)
  block = evaluation.row_block(mesh, t.prompts_per_step)
  for run in runs:
    run.dir.mkdir(parents=True, exist_ok=True)
    run.train_iter = pipeline.make_prompt_iterator(
        evaluation.data_config(run.config, split="train",
                               size=config.data.task_size,
                               batch=t.prompts_per_step, eval_=False),
        tokenizer, process_index=block[0], process_count=block[1])
    run.writer = metrics_lib.MetricWriter(
        run.dir, tensorboard=config.tensorboard,
        wandb=config.get("wandb"), run_config=run.config.to_dict(),
        name=run.replica.name if run.replica else "",
        group=workdir.name if run.replica else "")
    c = config.checkpoint
    run.ckpt = checkpoint.Checkpointer(run.dir / "ckpt", max_to_keep=c.keep,
                                       save_interval_steps=c.every,
                                       async_save=c.async_save)
    run.summary = {"workdir": str(run.dir)}
  group = config.rollout.n_samples
  rows = t.prompts_per_step * group
  if rows % t.num_mini_batches:
    raise ValueError(f"train.prompts_per_step × rollout.n_samples = {rows} "
                     f"must be divisible by train.num_mini_batches="
                     f"{t.num_mini_batches}.")
  spec = factories.update_spec(config)
  graphdef, _, rest = state_lib.split_model(policy)
  params_list = [state_lib.split_model(p)[1] for p in policies]
  hparams_list = [factories.initial_hparams(run.config) for run in runs]
  init = jax.jit(functools.partial(update_lib.init_state, spec))
  with sharding.use_mesh(mesh, rules):
    states = [init(p, h) for p, h in zip(params_list, hparams_list)]
  # LoRA: the frozen base rides in the state (rl/frozen_base.py), and
  # checkpoints hold the state without it (the base is rebuilt as above).
  frozen = rest if state_lib.has_frozen_base(rest) else None
  abstract = checkpoint.abstract_state(states[0])
  one_sh = sharding.train_state_shardings(abstract, mesh, rules)
  found = _restore(runs, checkpoint.abstract_like(abstract, one_sh), config)
  start_step = 0
  if found is not None:
    states, start_step = found
  states = [s.replace(frozen=frozen) for s in states]
  abstract = checkpoint.abstract_state(states[0])
  one_sh = sharding.train_state_shardings(abstract, mesh, rules)
  # A frozen copy of each replica's initial policy when a KL term needs it
  # (the initial weights: a resumed run rebuilds them as the first launch).
  ref_params = ([jax.tree.map(jnp.copy, p) for p in params_list]
                if spec.uses_reference else None)
  del policies, params_list
  state_sh = (sharding.train_state_shardings(abstract, mesh, rules,
                                             replicas=True)
              if stacked else one_sh)
  if stacked:
    state = jax.device_put(replicas_lib.stack(states), state_sh)
    ref = (None if ref_params is None else replicas_lib.stack(ref_params))
  else:
    state = jax.device_put(states[0], state_sh)
    ref = None if ref_params is None else ref_params[0]
  del states
  sharding.check_replication(state.params, state_sh.params)
  update = frozen_base.make_update(graphdef, rest, spec)
  ref_sh = None if ref is None else state_sh.params
  batch_sh = None  # Set on the first step, from the batch's shapes.
  compiled = {}

  def update_fn(measure, batch):
    nonlocal batch_sh
    if measure not in compiled:
      batch_sh = sharding.batch_shardings(batch, mesh, rules,
                                          replicas=stacked)
      compiled[measure] = update_lib.jit_update(
          update, state_sh, batch_sh, sharding.replicated(mesh),
          measure=measure, ref_shardings=ref_sh, replicas=stacked)
    return compiled[measure]

  sampling = dict(max_new_tokens=config.rollout.max_new_tokens,
                  temperature=float(config.rollout.temperature),
                  top_p=float(config.rollout.top_p),
                  top_k=config.rollout.top_k, n_samples=group,
                  return_entropy=True,
                  stop_token_ids=(int(tokenizer.eos_token_id),),
                  pad_id=tokenizer.pad_token_id or 0,
                  # Continuous batching over the prompt queue (same
                  # completions as the static batch for the same keys).
                  continuous=bool(config.rollout.get("continuous", False)),
                  num_slots=int(config.rollout.get("num_slots", 0)),
                  decode_attention=str(config.rollout.get(
                      "decode_attention", "auto")))
  if stacked:
    # The same settings `rollout.generate` builds (and checks) for one run.
    stacked_sampling = sampler.SamplingParams(**sampling)
    stacked_sampling.validate(policy.cfg.vocab_size)
    gen = _stacked_generate(graphdef, rest, stacked_sampling)

  def policy_of(i):
    params = (replicas_lib.unstack(state.params, i) if stacked
              else state.params)
    if state.frozen is None:
      return nnx.merge(graphdef, params, rest)
    # The update donates the state: the live base is the state's copy.
    base = (replicas_lib.unstack(state.frozen, i) if stacked
            else state.frozen)
    return nnx.merge(graphdef, params, base)

  def evaluate(i):
    with sharding.use_mesh(mesh, rules):
      return evaluator(policy_of(i), jax.random.key(EVAL_KEY_SEED), mesh)

  if found is None:
    # Replicas that start from one warm-started policy (a shared `sft.seed`)
    # have the same initial weights and the eval key is fixed: evaluate once.
    initial = {}
    for i, run in enumerate(runs):
      start = str(replicas_lib.warm_start_dir(
          workdir, run.replica, policy_setup.warm_start_seed(run.config)))
      if start not in initial or run.config.get("model_path"):
        initial[start] = evaluate(i)
      run.summary["initial_eval"] = dict(initial[start])
      run.writer.write(0, run.summary["initial_eval"])
      _LOG.info("%s: initial held-out eval: %s", run.label,
                run.summary["initial_eval"])
  for run in runs:
    run.last_eval = dict(run.summary.get("last_eval",
                                         run.summary["initial_eval"]))

  # ------------------------------------------------------------------ loop
  bar = tqdm.trange(start_step, t.steps, desc="grpo" if not stacked else
                    f"grpo ×{len(runs)}", disable=not is_main,
                    initial=start_step, total=t.steps)
  preempted = preemption.SigtermFlag()
  host = sharding.to_host
  for step in bar:
    start = time.perf_counter()
    keys = [jax.random.fold_in(run.seed_key, step) for run in runs]
    batches = [next(run.train_iter) for run in runs]
    with sharding.use_mesh(mesh, rules):
      if stacked:
        tokens, mask = _pad_prompts(batches)
        out = gen(state.params, jnp.asarray(tokens), jnp.asarray(mask),
                  jnp.stack([jax.random.split(k, 3)[0] for k in keys]))
      else:
        out = rollout.generate(
            policy_of(0), evaluation.global_prompts(batches[0], mesh, block),
            jax.random.split(keys[0], 3)[0],
            prompt_buckets=(batches[0]["tokens"].shape[1],), mesh=mesh,
            **sampling)
    # Dispatch is asynchronous: wait, so the time is the rollout's (the
    # scoring below needs the tokens anyway).
    out = jax.block_until_ready(out)
    rollout_s = time.perf_counter() - start
    # Each process scores its own rows; then every process holds all scores.
    scored = []
    for i, batch in enumerate(batches):
      o = replicas_lib.unstack(out, i) if stacked else out
      texts = evaluation.decode(tokenizer,
                                evaluation.own_rows(o.completion, block),
                                evaluation.own_rows(o.lengths, block))
      refs = [r for r in batch["references"] for _ in range(group)]
      scored.append(evaluation.all_rows(scorer.score(
          reward_fn, texts, refs, timeout_s=config.reward.timeout_s,
          batch_timeout_s=config.reward.get("batch_timeout_s", None)),
          block))
    rewards = np.stack([s.rewards for s in scored]).astype(np.float32)
    reward_s = time.perf_counter() - start - rollout_s
    measure = bool(t.measure_every) and step % t.measure_every == 0
    with sharding.use_mesh(mesh, rules):
      batch = update_lib.RolloutBatch.from_rollout(
          out, rewards if stacked else rewards[0])
      fn = update_fn(measure, batch)
      batch = jax.tree.map(_place, batch, batch_sh)
      state, train_m = fn(state, batch,
                          jnp.stack(keys) if stacked else keys[0], ref)
    train_m = jax.device_get(train_m)
    update_s = time.perf_counter() - start - rollout_s - reward_s
    masks = host(out.completion_mask).astype(bool)
    lengths_all = host(out.lengths)
    ents = host(out.entropy)
    step_s = time.perf_counter() - start
    tokens_all = host(batch.attention_mask).sum(axis=-1)
    stop = distributed.any_process(preempted.is_set)
    do_eval = config.eval.every and ((step + 1) % config.eval.every == 0 or
                                     step + 1 == t.steps)
    for i, run in enumerate(runs):
      pick = (lambda x, i=i: x[i]) if stacked else (lambda x: x)
      m = {k: float(np.asarray(pick(v))) for k, v in train_m.items()}
      valid, lengths = pick(masks), pick(lengths_all)
      m.update({
          "critic/score/mean": float(np.mean(scored[i].rewards)),
          "critic/score/max": float(np.max(scored[i].rewards)),
          "critic/score/min": float(np.min(scored[i].rewards)),
          "response_length/mean": float(lengths.mean()),
          "response_length/max": float(lengths.max()),
          "response_length/clip_ratio": float(
              np.mean(lengths >= config.rollout.max_new_tokens)),
          "rollout/entropy": float(pick(ents)[valid].mean()),
          "perf/time_rollout": rollout_s,
          "perf/time_reward": reward_s,
          "perf/time_update": update_s,
          "perf/step_time": step_s,
          "perf/throughput": float(np.sum(tokens_all)) / step_s,
      })
      m.update(scored[i].metrics("reward"))
      if do_eval:
        run.last_eval = evaluate(i)
        m.update(run.last_eval)
      run.writer.write(step + 1, m)
      if not np.isfinite(m.get("actor/loss", 0.0)):
        _LOG.warning("%s step %d: non-finite loss, update skipped",
                     run.label, step + 1)
      run.consecutive_skips = (run.consecutive_skips + 1
                               if m["train/update_finite"] < 1.0 else 0)
      if i == 0:
        bar.set_postfix(reward=f"{m['critic/score/mean']:.3f}",
                        H=f"{m['actor/entropy']:.3f}",
                        acc=f"{run.last_eval['val/greedy_acc']:.3f}",
                        s=f"{step_s:.2f}")
    worst = max(runs, key=lambda r: r.consecutive_skips)
    if worst.consecutive_skips >= t.max_consecutive_skips:
      # Leave the process as a normal return would: the caller's SIGTERM
      # handler back, pending saves committed, metrics flushed.
      preempted.restore()
      for run in runs:
        run.ckpt.close()
        run.writer.close()
      where = "" if not stacked else f" (replica {worst.label})"
      raise FloatingPointError(
          f"{worst.consecutive_skips} consecutive steps skipped updates "
          f"because of non-finite loss or gradients{where} "
          f"(train.max_consecutive_skips={t.max_consecutive_skips}); "
          f"aborting at step {step + 1}. The checkpoints hold only finite "
          "states; see train/update_finite in metrics.jsonl.")
    # A SIGTERM seen by any process stops all of them at the same step (the
    # save is collective).
    force = step + 1 == t.steps or stop
    for i, run in enumerate(runs):
      run.summary["last_eval"] = run.last_eval
      if not (force or run.ckpt.should_save(step + 1)):
        continue  # Slicing a replica out of the stack costs a state copy.
      run.ckpt.save(step + 1, state_lib.without_frozen(
                    replicas_lib.unstack(state, i) if stacked else state),
                    data_state=run.train_iter.get_state(),
                    meta={"config": run.config.to_dict(),
                          "summary": run.summary},
                    metrics={k: v for k, v in run.last_eval.items()
                             if k.startswith("val/")} if do_eval else {},
                    force=force)
      # A bucket's metrics.jsonl is uploaded whole; keep it at least as far
      # as the checkpoints, which a relaunch truncates it to.
      run.writer.flush()
    if stop:
      _LOG.warning("SIGTERM received: saved step %d, exiting cleanly; the "
                   "next launch with this workdir continues from it.",
                   step + 1)
      for run in runs:
        run.summary["preempted_at"] = step + 1
      break
  preempted.restore()
  wall_s = time.perf_counter() - launched
  for run in runs:
    run.ckpt.close()  # Waits for the last async save.
    run.writer.close()
    run.summary["final_eval"] = run.last_eval
    run.summary["steps"] = t.steps
    run.summary["wall_time_s"] = run.summary.get("wall_time_s", 0.0) + wall_s
    if is_main:
      storage.write_text(run.dir / "summary.json",
                         json.dumps(run.summary, indent=2))
      storage.write_text(run.dir / "summary.txt", run_summary.text(
          run.summary, metrics_lib.read_jsonl(run.dir), run.dir,
          wall_s=wall_s, tensorboard=config.tensorboard) + "\n")
  if not stacked:
    return runs[0].summary
  summary = {"workdir": str(workdir),
             "replicas": {run.label: run.summary for run in runs}}
  if is_main:
    storage.write_text(workdir / "summary.json",
                       json.dumps(summary, indent=2))
  return summary
