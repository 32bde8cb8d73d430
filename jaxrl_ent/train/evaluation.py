"""Held-out evaluation, a library the training loop (and the evaluate, sft
and export launchers) use: greedy accuracy and pass@k on fixed prompts, plus
the prompt-data and reward plumbing shared with the loop.

Multi-host: each process reads and scores its block of every batch; the
scores are gathered so every process returns the same numbers.
"""

import jax
import numpy as np

from jaxrl_ent import rewards as rewards_lib
from jaxrl_ent import rollout
from jaxrl_ent import sharding
from jaxrl_ent.analysis import stats
from jaxrl_ent.data import pipeline
from jaxrl_ent.train import distributed

# Held-out evaluations use this fixed key, so any saved step re-evaluated
# (launch/evaluate.py) gives exactly the run's val/* numbers.
EVAL_KEY_SEED = 10_000


def data_config(config, *, split: str, size: int, batch: int, eval_: bool):
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


def row_block(mesh, num_rows) -> tuple[int, int]:
  """This process's block of a batch's rows; (0, 1) on one process."""
  if jax.process_count() == 1:
    return 0, 1
  if mesh is None:
    raise ValueError("a multi-process run needs the mesh to place its "
                     "batches; pass `mesh`.")
  return sharding.process_row_block(mesh, num_rows)


def global_prompts(batch, mesh, block):
  """(tokens, mask) for `rollout.generate`: the batch itself on one
  process; on several, global arrays built from every process's block."""
  if jax.process_count() == 1:
    return batch["tokens"], batch["mask"]
  return tuple(sharding.global_batch(mesh, batch[k], block)
               for k in ("tokens", "mask"))


def own_rows(x, block) -> np.ndarray:
  """This process's block of the rows of per-row array `x` (all of it on one
  process). Groups are contiguous, so block p of the completions samples
  block p of the prompts."""
  x = sharding.to_host(x)
  size = x.shape[0] // block[1]
  return x[block[0] * size:(block[0] + 1) * size]


def all_rows(local, block):
  """Per-row host values of every block, in row order (`local` itself on
  one process). A ScoreResult is merged with `ScoreResult.concatenate`."""
  if jax.process_count() == 1:
    return local
  parts = distributed.gather_blocks(local, block)
  if isinstance(local, rewards_lib.ScoreResult):
    return rewards_lib.ScoreResult.concatenate(parts)
  return np.concatenate(parts)


def decode(tokenizer, completion, lengths) -> list[str]:
  completion, lengths = np.asarray(completion), np.asarray(lengths)
  return tokenizer.batch_decode(
      [row[:n] for row, n in zip(completion, lengths)],
      skip_special_tokens=True)


def pass_ks(eval_config) -> tuple[int, ...]:
  """The k reported as `val/pass_at_<k>`: `eval.pass_k` and every power of 4
  up to the samples drawn (1, 4, 16, ...), all from the same samples."""
  n = num_samples(eval_config)
  ks = {eval_config.pass_k}
  k = 1
  while k <= n:
    ks.add(k)
    k *= 4
  return tuple(sorted(ks))


def num_samples(eval_config) -> int:
  """Samples drawn per prompt for pass@k: `eval.num_samples`, or pass_k when
  it is 0 or absent (configs saved before the field existed)."""
  return eval_config.get("num_samples", 0) or eval_config.pass_k


class Evaluator:
  """Held-out greedy accuracy and pass@k on fixed prompts: pass@k (for each k
  of `pass_ks`) is the unbiased estimator (Chen et al. 2021) from
  `num_samples(config.eval)` sampled completions per prompt."""

  def __init__(self, config, tokenizer, reward_fn, scorer, mesh=None):
    e = config.eval
    self.cfg = config
    self.tokenizer, self.reward_fn, self.scorer = tokenizer, reward_fn, scorer
    data_cfg = data_config(config, split="test", size=e.num_examples,
                           batch=e.batch_size, eval_=True)
    # Multi-host: each process reads (and scores) its block of every batch;
    # without a mesh, block p of P (the usual process-major layout).
    self.block = ((jax.process_index(), jax.process_count()) if mesh is None
                  else row_block(mesh, e.batch_size))
    self.batches = list(pipeline.make_prompt_iterator(
        data_cfg, tokenizer, process_index=self.block[0],
        process_count=self.block[1]))

  def _budget(self):
    r = self.cfg.reward
    return {"timeout_s": r.timeout_s,
            "batch_timeout_s": r.get("batch_timeout_s", None)}

  def __call__(self, policy, key, mesh) -> dict[str, float]:
    e, r = self.cfg.eval, self.cfg.rollout
    block = self.block
    if block != row_block(mesh, e.batch_size):
      raise ValueError(f"Evaluator: this process read row block {block} but "
                       f"the mesh puts block {row_block(mesh, e.batch_size)}"
                       " of each batch here; pass the mesh to Evaluator().")
    greedy, passk = [], []
    for i, batch in enumerate(self.batches):
      kw = dict(max_new_tokens=r.max_new_tokens,
                stop_token_ids=[self.tokenizer.eos_token_id],
                pad_id=self.tokenizer.pad_token_id or 0,
                prompt_buckets=(batch["tokens"].shape[1],), mesh=mesh)
      prompts = global_prompts(batch, mesh, block)
      valid = batch["valid"]
      out = rollout.generate(policy, prompts, key, greedy=True, **kw)
      texts = decode(self.tokenizer, own_rows(out.completion, block),
                     own_rows(out.lengths, block))
      res = self.scorer.score(self.reward_fn, texts, batch["references"],
                              **self._budget())
      greedy.append(all_rows(res.rewards[valid], block))
      if e.pass_k > 0:
        n = num_samples(e)
        out = rollout.generate(policy, prompts, jax.random.fold_in(key, i),
                               temperature=r.temperature, n_samples=n, **kw)
        texts = decode(self.tokenizer, own_rows(out.completion, block),
                       own_rows(out.lengths, block))
        refs = [ref for ref in batch["references"] for _ in range(n)]
        res = self.scorer.score(self.reward_fn, texts, refs, **self._budget())
        solved = res.rewards.reshape(-1, n) >= e.success_threshold
        # The unbiased estimator from n >= k samples (with n = k: whether
        # any sample solved the prompt).
        passk.append(np.stack([all_rows(stats.pass_at_k(
            n, solved.sum(axis=1), k)[valid], block) for k in pass_ks(e)],
                              axis=1))
    g = np.concatenate(greedy)
    out = {"val/greedy_acc": float(np.mean(g >= e.success_threshold)),
           "val/greedy_reward": float(np.mean(g)),
           "val/num_prompts": float(len(g))}
    if passk:
      means = np.mean(np.concatenate(passk), axis=0)
      out.update({f"val/pass_at_{k}": float(m)
                  for k, m in zip(pass_ks(e), means)})
    return out


def make_reward_fn(config):
  """`config.reward.spec`, else the reward of the synthetic `data.task`."""
  if not config.reward.spec and not config.data.task:
    raise ValueError("config.reward.spec is empty and there is no "
                     "config.data.task to take the reward from.")
  return rewards_lib.get_reward_fn(
      config.reward.spec or rewards_lib.TASKS[config.data.task].reward)
