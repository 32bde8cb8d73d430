"""Prompt records from JSONL / Parquet files, with errors naming file and line.

A record is one prompt: `id`, raw `prompt` text, `answer`, and the
`reference` handed to the reward function (the source row as a dict, with
`answer` set). Every problem in the data is a `DataError` (or
`FileNotFoundError`) whose message starts with `path:line:`.

JSONL files are UTF-8, one JSON object per line; a UTF-8 byte-order mark at
the start of the file and blank lines are skipped. An object with a repeated
key, text with an unpaired surrogate (`"\\ud800"`) and a non-finite number
(`NaN`) as an answer or id are errors rather than silently picking a value.

Paths and glob patterns may be local or in a bucket (`gs://bucket/data/
*.jsonl.gz`; `jaxrl_ent/storage.py`).
"""

import dataclasses
import gzip
import json
import math
import os
import zlib
from typing import Iterable, Iterator, Mapping, Sequence

from jaxrl_ent import storage
from jaxrl_ent import strict_json


class DataError(ValueError):
  """Bad prompt data; the message names the file and line (or row)."""


@dataclasses.dataclass(frozen=True)
class PromptRecord:
  """One prompt.

  Attributes:
    id: unique id (from `id_field`, else `path:line`).
    prompt: the raw prompt text (before any template).
    answer: the reference answer text, or None without an `answer_field`.
    reference: what the reward function gets: the source row, with `answer`.
    source: `path:line` (JSONL) or `path:row N` (Parquet), for messages.
  """
  id: str
  prompt: str
  answer: str | None
  reference: dict
  source: str


def expand_paths(paths: str | Sequence[str]) -> list[str]:
  """Paths and glob patterns -> sorted, existing files.

  Raises:
    FileNotFoundError: a path does not exist, or a pattern matches nothing.
  """
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  out = []
  for p in map(str, paths):
    if storage.has_magic(p):
      matches = [m for m in storage.glob(p) if storage.isfile(m)]
      if not matches:
        raise FileNotFoundError(f"no prompt files match pattern {p!r}")
      out.extend(matches)
    elif not storage.isfile(p):
      raise FileNotFoundError(f"prompt file not found: {p}")
    else:
      out.append(p)
  return out


def _file_format(path: str) -> str:
  name = path.lower()
  if name.endswith(".parquet"):
    return "parquet"
  if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")):
    return "jsonl"
  raise DataError(f"{path}: unknown file type (expected .jsonl[.gz], .json, "
                  f".ndjson or .parquet)")


def _gzip_lines(f, path: str) -> Iterator[bytes]:
  """Lines of a gzip stream; a corrupt or cut-off stream is a DataError
  (gzip raises BadGzipFile, EOFError or zlib.error mid-iteration)."""
  lineno = 0
  lines = iter(f)
  while True:
    try:
      raw = next(lines)
    except StopIteration:
      return
    except (OSError, EOFError, zlib.error) as e:
      raise DataError(f"{path}:{lineno + 1}: corrupt or truncated gzip data "
                      f"({e})") from None
    lineno += 1
    yield raw


def _read_jsonl(path: str) -> Iterator[tuple[str, dict]]:
  with storage.path(path).open("rb") as raw_file:
    f = (_gzip_lines(gzip.GzipFile(fileobj=raw_file), path)
         if path.lower().endswith(".gz") else raw_file)
    for lineno, raw in enumerate(f, start=1):
      where = f"{path}:{lineno}"
      if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # A UTF-8 BOM (Windows editors write one).
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(
            f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column "
            f"{e.start + 1})") from None
      if not line.strip():
        continue
      try:
        row = strict_json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON: {e.msg} (column {e.colno}); "
                        "each line must hold one JSON object") from None
      except strict_json.DuplicateKeyError as e:
        raise DataError(f"{where}: duplicate key {e.key!r} in a JSON "
                        "object") from None
      except (ValueError, RecursionError) as e:
        # ValueError: an integer over Python's 4300-digit limit;
        # RecursionError: nesting deeper than the parser's stack.
        raise DataError(f"{where}: invalid JSON: {type(e).__name__}: "
                        f"{str(e)[:200]}") from None
      if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got "
                        f"{type(row).__name__}")
      yield where, row


def _read_parquet(path: str) -> Iterator[tuple[str, dict]]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  try:
    with storage.path(path).open("rb") as f:
      # to_pylist inside the try: it decodes the strings (bad UTF-8 in a
      # string column surfaces here).
      rows = pq.read_table(f).to_pylist()
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"{path}: cannot read Parquet: {e}") from None
  for i, row in enumerate(rows, start=1):
    yield f"{path}:row {i}", row


def read_rows(path: str) -> Iterator[tuple[str, dict]]:
  """`(location, row)` for each record of one JSONL or Parquet file."""
  fmt = _file_format(path)
  return _read_jsonl(path) if fmt == "jsonl" else _read_parquet(path)


_MISSING = object()


def get_field(row: Mapping, field: str):
  """`row[field]`; a dotted name (`meta.answer`) walks nested dicts."""
  if field in row:
    return row[field]
  value = row
  for part in field.split("."):
    if not isinstance(value, Mapping) or part not in value:
      return _MISSING
    value = value[part]
  return value


def _text_field(row, field, where, kind, allow_numbers):
  value = get_field(row, field)
  if value is _MISSING:
    raise DataError(
        f"{where}: record has no {kind} field {field!r} (fields: "
        f"{sorted(row)}); set {kind}_field to the right name")
  if isinstance(value, str):
    try:
      value.encode("utf-8")
    except UnicodeEncodeError as e:
      # JSON can spell a lone surrogate ("\ud800"); no tokenizer can encode
      # it, so it fails here, with the line, instead of deep in a rollout.
      raise DataError(f"{where}: {kind} field {field!r} has an unpaired "
                      f"surrogate U+{ord(value[e.start]):04X} at character "
                      f"{e.start + 1} (not valid Unicode text)") from None
    return value
  if allow_numbers and isinstance(value, (int, float)) and not isinstance(
      value, bool):
    if isinstance(value, float) and not math.isfinite(value):
      # NaN / Infinity (or 1e999) would become the text "nan" / "inf".
      raise DataError(f"{where}: {kind} field {field!r} is {value}, expected "
                      "text or a finite number")
    return str(value)
  kind_name = "null" if value is None else type(value).__name__
  raise DataError(f"{where}: {kind} field {field!r} is {kind_name}, expected "
                  "text")


def records_from_rows(rows: Iterable[tuple[str, dict]], *,
                      prompt_field: str = "prompt",
                      answer_field: str | None = "answer",
                      id_field: str | None = "id",
                      seen_ids: dict | None = None) -> list[PromptRecord]:
  """Validates `(location, row)` pairs into `PromptRecord`s.

  Args:
    rows: `(location, row dict)` pairs, e.g. from `read_rows`.
    prompt_field: name of the prompt text field (dotted for nested).
    answer_field: name of the answer field, or None for none.
    id_field: name of the id field, or None to use the location.
    seen_ids: ids already taken (id -> location), shared across files.

  Returns:
    The records, in order.

  Raises:
    DataError: a missing or non-text field, or a duplicate id.
  """
  seen = {} if seen_ids is None else seen_ids
  out = []
  for where, row in rows:
    prompt = _text_field(row, prompt_field, where, "prompt", False)
    answer = None
    if answer_field is not None:
      answer = _text_field(row, answer_field, where, "answer", True)
    rid = where if id_field is None else _text_field(row, id_field, where,
                                                     "id", True)
    if rid in seen:
      raise DataError(f"{where}: duplicate id {rid!r} (first at {seen[rid]})")
    seen[rid] = where
    reference = dict(row)
    if answer is not None:
      reference["answer"] = answer
    out.append(PromptRecord(rid, prompt, answer, reference, where))
  return out


def load_records(paths: str | Sequence[str], *, prompt_field: str = "prompt",
                 answer_field: str | None = "answer",
                 id_field: str | None = "id") -> list[PromptRecord]:
  """Reads and validates prompt records from JSONL / Parquet files.

  Args:
    paths: files or glob patterns (`.jsonl`, `.jsonl.gz`, `.json` as JSON
      lines, `.parquet`).
    prompt_field: field holding the prompt text.
    answer_field: field holding the reference answer (None: no answers).
    id_field: field holding a unique id (None: `path:line`).

  Returns:
    All records, files in the given (glob-sorted) order.

  Raises:
    FileNotFoundError: a missing file or a pattern matching nothing.
    DataError: empty data, invalid JSON or UTF-8, missing fields, duplicate
      ids; the message names the file and line.
  """
  files = expand_paths(paths)
  seen, out = {}, []
  for path in files:
    out += records_from_rows(read_rows(path), prompt_field=prompt_field,
                             answer_field=answer_field, id_field=id_field,
                             seen_ids=seen)
  if not out:
    raise DataError(f"no prompt records in {', '.join(files)} (empty files?)")
  return out


def records_from_examples(examples: Sequence[Mapping], *,
                          source: str = "<examples>") -> list[PromptRecord]:
  """Records from in-memory example dicts (`id`, `prompt`, `answer`), such
  as `rewards.tasks.generate(...)`; the example dict is the reference."""
  rows = ((f"{source}:{i + 1}", dict(ex)) for i, ex in enumerate(examples))
  out = records_from_rows(rows, prompt_field="prompt", answer_field="answer",
                          id_field="id")
  if not out:
    raise DataError(f"no prompt records in {source}")
  return out
