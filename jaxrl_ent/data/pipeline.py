"""Checkpointable prompt batches through grain, sharded by process.

The pipeline is a grain `MapDataset` over *indices* of the tokenised prompts:

    range(N) -> shuffle(seed) -> repeat(num_epochs) -> [global truncation or
    padding to whole global batches] -> batch(global_batch, batch_fn=collate
    rows [p·b, (p+1)·b) of the global batch, b = global_batch // count)

Because the global stream is built the same way on every host and host p
takes the p-th contiguous block of each global batch, padded to the bucket
of the *whole* global batch, the blocks of all hosts stacked in order are
exactly the batch a single process reads (same rows, same order, same
padded length): `jax.make_array_from_process_local_data` then assembles the
global batch, whatever the number of hosts. Hosts read disjoint rows, and
all hosts yield the same number of batches. The iterator's state is grain's (`get_state()` /
`set_state()`, a small dict), saved with the train state as its `data` item.

A batch is a dict:
  tokens, mask, positions: int32 [B, P] (`tokenization.left_pad`);
  valid: bool [B] (False on rows that only pad the last eval batch: copies
    of example 0, to be ignored in metrics);
  index: int64 [B] (row in the tokenised prompt list; -1 on padding rows);
  ids, texts: lists of B strings; references: list of B dicts (for rewards).
"""

import dataclasses
from typing import Mapping, Sequence

import grain
import numpy as np

from jaxrl_ent.data import records as records_lib
from jaxrl_ent.data import tokenization


@dataclasses.dataclass(frozen=True)
class PromptDataConfig:
  """Where prompts come from and how they are batched.

  Set exactly one of `paths` (JSONL/Parquet files or globs) and `task` (a
  synthetic task from `rewards.tasks`).
  """
  paths: Sequence[str] | str | None = None
  prompt_field: str = "prompt"
  answer_field: str | None = "answer"
  id_field: str | None = "id"
  task: str | None = None
  task_split: str = "train"
  task_size: int = 10_000
  task_seed: int = 0
  task_kwargs: Mapping = dataclasses.field(default_factory=dict)
  template: str = "{prompt}"
  chat_template: bool = False
  system_prompt: str | None = None
  max_prompt_length: int = 256
  buckets: Sequence[int] | None = None  # Default: powers of two.
  on_overlong: str = "skip"
  batch_size: int = 8  # Global, over all processes.
  shuffle: bool = True
  seed: int = 0
  num_epochs: int | None = None  # None: repeat forever.
  drop_remainder: bool = True  # False: pad the last batch (valid=False).
  prefetch: int = 2  # Batches prepared ahead by one grain thread; 0 = none.


def collate(examples: Sequence[tokenization.TokenizedPrompt],
            indices: Sequence[int], buckets: Sequence[int], pad_id: int,
            block: tuple[int, int] = (0, 1)) -> dict:
  """One batch dict from dataset indices (-1 = a padding row).

  With `block = (p, count)`, only the p-th of `count` contiguous blocks of
  `indices` is collated, padded to the bucket of all of `indices`.
  """
  rows = [examples[i] if i >= 0 else examples[0] for i in indices]
  length = tokenization.bucket_length(max(len(r.tokens) for r in rows),
                                      buckets)
  size = len(indices) // block[1]
  indices = list(indices)[block[0] * size:(block[0] + 1) * size]
  rows = rows[block[0] * size:(block[0] + 1) * size]
  out = tokenization.left_pad([r.tokens for r in rows], (length,), pad_id)
  # Padding rows are copies of example 0 with real tokens (an all-pad row
  # could give NaN attention); only `valid` marks them.
  valid = np.asarray([i >= 0 for i in indices], bool)
  out.update(valid=valid, index=np.asarray(indices, np.int64),
             ids=[r.record.id for r in rows],
             texts=[r.text for r in rows],
             references=[r.record.reference for r in rows])
  return out


def index_stream(n: int, *, global_batch: int, shuffle: bool, seed: int,
                 num_epochs: int | None, drop_remainder: bool
                 ) -> grain.MapDataset:
  """The global stream of example indices (the same on every process)."""
  order = grain.MapDataset.range(n)
  if shuffle:
    order = order.shuffle(seed=seed)
  order = order.repeat(num_epochs)
  if num_epochs is not None:
    total = n * num_epochs
    if drop_remainder:
      order = order[:total // global_batch * global_batch]
    else:
      padded = -(-total // global_batch) * global_batch
      inner = order
      order = grain.MapDataset.range(padded).map(
          lambda k: inner[k] if k < total else -1)
  return order


def make_prompt_dataset(examples: Sequence[tokenization.TokenizedPrompt], *,
                        batch_size: int, buckets: Sequence[int], pad_id: int,
                        shuffle: bool = True, seed: int = 0,
                        num_epochs: int | None = None,
                        drop_remainder: bool = True, process_index: int = 0,
                        process_count: int = 1) -> grain.MapDataset:
  """A grain `MapDataset` of this process's batches (see module docstring).

  Args:
    examples: tokenised prompts (the same list on every process).
    batch_size: global batch size; must divide by `process_count`.
    buckets: allowed padded prompt lengths.
    pad_id: padding token id.
    shuffle, seed: shuffle each epoch (reseeded per epoch) from `seed`.
    num_epochs: passes over the data, None for an endless stream.
    drop_remainder: drop the last partial global batch, else pad it with
      rows marked `valid=False` (for evaluation).
    process_index, process_count: this process's block of each global batch
      and the number of blocks (`jax.process_index()`, `jax.process_count()`
      for a batch split over all processes; see
      `sharding.process_row_block`).

  Raises:
    ValueError: bad sizes, or too few examples for one batch.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in "
                     f"[0, {process_count})")
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} must be a positive multiple "
                     f"of process_count {process_count}")
  if not examples:
    raise ValueError("no examples")
  if num_epochs is not None and drop_remainder and (
      len(examples) * num_epochs < batch_size):
    raise ValueError(f"{len(examples)} examples x {num_epochs} epochs make "
                     f"no full batch of {batch_size}")
  examples = list(examples)
  buckets = tuple(buckets)
  stream = index_stream(
      len(examples), global_batch=batch_size, shuffle=shuffle, seed=seed,
      num_epochs=num_epochs, drop_remainder=drop_remainder)
  block = (process_index, process_count)
  return stream.batch(
      batch_size, drop_remainder=drop_remainder,
      batch_fn=lambda idx: collate(examples, idx, buckets, pad_id, block))


def to_iterator(ds: grain.MapDataset, prefetch: int = 2
                ) -> grain.DatasetIterator:
  """A checkpointable iterator; `prefetch` batches ahead in one thread.

  (grain's default would read 500 elements ahead with 16 threads: far too
  much memory for batches of long prompts.)
  """
  options = grain.ReadOptions(num_threads=1 if prefetch else 0,
                              prefetch_buffer_size=max(prefetch, 0))
  return iter(ds.to_iter_dataset(options))


def load_examples(cfg: PromptDataConfig, tokenizer
                  ) -> tuple[list[tokenization.TokenizedPrompt], int]:
  """Reads (or generates) and tokenises the prompts of `cfg`.

  Returns:
    `(tokenised prompts, number skipped as over-long)`.
  """
  if (cfg.paths is None) == (cfg.task is None):
    raise ValueError("set exactly one of `paths` and `task`")
  if cfg.task is not None:
    from jaxrl_ent.rewards import tasks  # pylint: disable=g-import-not-at-top
    examples = tasks.generate(cfg.task, cfg.task_size, split=cfg.task_split,
                              seed=cfg.task_seed, **dict(cfg.task_kwargs))
    recs = records_lib.records_from_examples(
        examples, source=f"task:{cfg.task}/{cfg.task_split}")
  else:
    recs = records_lib.load_records(
        cfg.paths, prompt_field=cfg.prompt_field,
        answer_field=cfg.answer_field, id_field=cfg.id_field)
  return tokenization.tokenize_records(
      recs, tokenizer, max_length=cfg.max_prompt_length,
      template=cfg.template, chat_template=cfg.chat_template,
      system_prompt=cfg.system_prompt, on_overlong=cfg.on_overlong)


def make_prompt_iterator(cfg: PromptDataConfig | Mapping, tokenizer, *,
                         process_index: int | None = None,
                         process_count: int | None = None
                         ) -> grain.DatasetIterator:
  """The checkpointable batch iterator for `cfg` (a config or a mapping).

  Args:
    cfg: a `PromptDataConfig`, or a mapping of its fields (e.g.
      `config.data.to_dict()`).
    tokenizer: a HF tokenizer.
    process_index, process_count: default `jax.process_index()` /
      `jax.process_count()`, so multi-host runs read disjoint rows.

  Returns:
    A grain `DatasetIterator` of batch dicts, with `get_state()` /
    `set_state()`; `iterator.num_skipped` is the count of over-long prompts.
  """
  if not isinstance(cfg, PromptDataConfig):
    cfg = PromptDataConfig(**dict(cfg))
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
  examples, num_skipped = load_examples(cfg, tokenizer)
  buckets = tuple(cfg.buckets or tokenization.default_buckets(
      cfg.max_prompt_length))
  if max(buckets) < cfg.max_prompt_length:
    raise ValueError(f"largest bucket {max(buckets)} < max_prompt_length "
                     f"{cfg.max_prompt_length}")
  ds = make_prompt_dataset(
      examples, batch_size=cfg.batch_size, buckets=buckets,
      pad_id=tokenization.pad_id_of(tokenizer), shuffle=cfg.shuffle,
      seed=cfg.seed, num_epochs=cfg.num_epochs,
      drop_remainder=cfg.drop_remainder, process_index=process_index,
      process_count=process_count)
  iterator = to_iterator(ds, cfg.prefetch)
  iterator.num_skipped = num_skipped
  return iterator


def repeat_groups(batch: Mapping, group_size: int) -> dict:
  """Each prompt row repeated `group_size` times, groups contiguous (GRPO).

  Arrays are repeated along axis 0 ([B, ...] -> [B * G, ...]) and lists
  element-wise; adds `group` int32 [B * G], the prompt row of each sample.
  """
  if group_size < 1:
    raise ValueError(f"group_size must be >= 1, got {group_size}")
  out = {}
  size = None
  for key, value in batch.items():
    if isinstance(value, np.ndarray):
      out[key] = np.repeat(value, group_size, axis=0)
      size = value.shape[0]
    elif isinstance(value, (list, tuple)):
      out[key] = [v for v in value for _ in range(group_size)]
      size = len(value)
    else:
      out[key] = value
  if size is not None:
    out["group"] = np.repeat(np.arange(size, dtype=np.int32), group_size)
  return out
