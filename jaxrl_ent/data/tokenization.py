"""Prompt rendering (format template or chat template), tokenisation, padding.

Axis legend: B prompts in a batch, P padded prompt length (a bucket).
Prompts are left-padded, so every row's last prompt token sits at column
P - 1 and decoding starts at the same column for the whole batch.
"""

import dataclasses
import logging

_LOG = logging.getLogger(__name__)
from typing import Sequence

import numpy as np

from jaxrl_ent.data import records as records_lib
from jaxrl_ent.rollout import padding

OVERLONG_POLICIES = ("skip", "error")


@dataclasses.dataclass(frozen=True)
class TokenizedPrompt:
  """A record and its prompt token ids (int32 [L], L <= max_length)."""
  record: records_lib.PromptRecord
  text: str
  tokens: np.ndarray


def render_prompt(record: records_lib.PromptRecord, *,
                  template: str = "{prompt}", tokenizer=None,
                  chat_template: bool = False,
                  system_prompt: str | None = None) -> str:
  """The prompt text the model sees.

  Args:
    record: the prompt record.
    template: Python format string; `{prompt}` is the prompt text and any
      other `{name}` a top-level field of the source row.
    tokenizer: a HF tokenizer (needed for `chat_template`).
    chat_template: wrap the formatted prompt as the user turn of
      `tokenizer.apply_chat_template(..., add_generation_prompt=True)`.
    system_prompt: optional system turn (chat template only).

  Raises:
    DataError: the template names a field the record lacks.
  """
  fields = {k: v for k, v in record.reference.items() if isinstance(k, str)}
  fields["prompt"] = record.prompt
  try:
    text = template.format(**fields)
  except (KeyError, IndexError) as e:
    raise records_lib.DataError(
        f"{record.source}: prompt template {template!r} needs field {e}"
    ) from None
  if not chat_template:
    if system_prompt:
      raise ValueError("system_prompt needs chat_template=True")
    return text
  if tokenizer is None or not getattr(tokenizer, "chat_template", None):
    raise ValueError("chat_template=True needs a tokenizer with a chat "
                     "template")
  messages = [{"role": "user", "content": text}]
  if system_prompt:
    messages.insert(0, {"role": "system", "content": system_prompt})
  return tokenizer.apply_chat_template(messages, tokenize=False,
                                       add_generation_prompt=True)


def tokenize_records(records: Sequence[records_lib.PromptRecord], tokenizer, *,
                     max_length: int, template: str = "{prompt}",
                     chat_template: bool = False,
                     system_prompt: str | None = None,
                     add_special_tokens: bool | None = None,
                     on_overlong: str = "skip"
                     ) -> tuple[list[TokenizedPrompt], int]:
  """Renders and tokenises prompts; handles prompts over `max_length`.

  Args:
    records: prompt records.
    tokenizer: a HF (fast) tokenizer.
    max_length: longest prompt kept, in tokens.
    template, chat_template, system_prompt: see `render_prompt`.
    add_special_tokens: passed to the tokenizer; default: False with a chat
      template (it already has its BOS/markers), else True.
    on_overlong: `skip` (drop, count, and log one warning naming the first
      few) or `error` (raise naming the record).

  Returns:
    `(kept prompts, number skipped)`.

  Raises:
    DataError: an over-long prompt under `error`, an empty prompt, or no
      prompt left after skipping.
  """
  if on_overlong not in OVERLONG_POLICIES:
    raise ValueError(f"on_overlong must be one of {OVERLONG_POLICIES}")
  if max_length < 1:
    raise ValueError(f"max_length must be >= 1, got {max_length}")
  if add_special_tokens is None:
    add_special_tokens = not chat_template
  texts = [render_prompt(r, template=template, tokenizer=tokenizer,
                         chat_template=chat_template,
                         system_prompt=system_prompt) for r in records]
  ids = tokenizer(texts, add_special_tokens=add_special_tokens,
                  return_attention_mask=False)["input_ids"]
  kept, skipped = [], []
  for record, text, toks in zip(records, texts, ids):
    if not toks:
      raise records_lib.DataError(f"{record.source}: prompt is empty after "
                                  f"templating and tokenisation")
    if len(toks) > max_length:
      if on_overlong == "error":
        raise records_lib.DataError(
            f"{record.source}: prompt has {len(toks)} tokens, more than "
            f"max_length={max_length} (raise it, or on_overlong='skip')")
      skipped.append(f"{record.source} ({len(toks)} tokens)")
      continue
    kept.append(TokenizedPrompt(record, text, np.asarray(toks, np.int32)))
  if skipped:
    _LOG.warning("skipped %d of %d prompts longer than %d tokens, e.g. %s",
                    len(skipped), len(records), max_length,
                    "; ".join(skipped[:3]))
  if not kept:
    raise records_lib.DataError(
        f"all {len(records)} prompts are longer than max_length={max_length}")
  return kept, len(skipped)


# Padding lives with the sampler (`rollout/padding.py`); re-exported here
# for the prompt pipeline and callers of the old names.
default_buckets = padding.default_buckets
bucket_length = padding.bucket_length
left_pad = padding.left_pad


def pad_id_of(tokenizer) -> int:
  """The tokenizer's pad id, else its eos id."""
  for name in ("pad_token_id", "eos_token_id"):
    value = getattr(tokenizer, name, None)
    if value is not None:
      return int(value)
  raise ValueError("tokenizer has neither a pad nor an eos token id")
