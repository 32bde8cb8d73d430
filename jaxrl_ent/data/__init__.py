"""Prompt data: JSONL/Parquet records, tokenisation, checkpointable batches.

`make_prompt_iterator(PromptDataConfig(...), tokenizer)` gives a grain
iterator of left-padded prompt batches with `get_state()` / `set_state()`;
`repeat_groups` expands a batch into contiguous GRPO groups.
"""

import importlib

from jaxrl_ent.data.records import DataError
from jaxrl_ent.data.records import load_records
from jaxrl_ent.data.records import PromptRecord
from jaxrl_ent.data.tokenization import left_pad
from jaxrl_ent.data.tokenization import tokenize_records

# The grain-based pipeline loads on first use: the rollout engine imports
# `data.tokenization` and must not need grain (benchmark machines, e.g. the
# GPU box, have JAX but not the data loader's dependencies).
_PIPELINE = ("make_prompt_dataset", "make_prompt_iterator", "PromptDataConfig",
             "repeat_groups", "to_iterator")


def __getattr__(name):
  if name in _PIPELINE:
    return getattr(importlib.import_module("jaxrl_ent.data.pipeline"), name)
  raise AttributeError(f"module 'jaxrl_ent.data' has no attribute {name!r}")
