"""Prompt data: JSONL/Parquet records, tokenisation, checkpointable batches.

`make_prompt_iterator(PromptDataConfig(...), tokenizer)` gives a grain
iterator of left-padded prompt batches with `get_state()` / `set_state()`;
`repeat_groups` expands a batch into contiguous GRPO groups.
"""

from jaxrl_ent.data.pipeline import make_prompt_dataset
from jaxrl_ent.data.pipeline import make_prompt_iterator
from jaxrl_ent.data.pipeline import PromptDataConfig
from jaxrl_ent.data.pipeline import repeat_groups
from jaxrl_ent.data.pipeline import to_iterator
from jaxrl_ent.data.records import DataError
from jaxrl_ent.data.records import load_records
from jaxrl_ent.data.records import PromptRecord
from jaxrl_ent.data.tokenization import left_pad
from jaxrl_ent.data.tokenization import tokenize_records
