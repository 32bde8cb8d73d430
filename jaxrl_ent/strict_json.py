"""`json.loads` that refuses a repeated key in any object.

Python's json keeps the last of repeated keys silently; in a prompt file a
row with two "prompt"s is more likely a bad merge than a choice, and
safetensors refuses repeated tensor names in a header. The prompt reader
(data/records.py) and the checkpoint reader (models/hf_io.py) both load
through this and turn `DuplicateKeyError` into their own error naming the
file.
"""

import json


class DuplicateKeyError(ValueError):
  """A JSON object repeats `key`."""

  def __init__(self, key: str):
    super().__init__(f"duplicate key {key!r} in a JSON object")
    self.key = key


def _no_duplicate_keys(pairs):
  obj = dict(pairs)
  if len(obj) != len(pairs):
    seen = set()
    for key, _ in pairs:
      if key in seen:
        raise DuplicateKeyError(key)
      seen.add(key)
  return obj


def loads(text):
  """`json.loads(text)`, raising `DuplicateKeyError` for a repeated key."""
  return json.loads(text, object_pairs_hook=_no_duplicate_keys)
