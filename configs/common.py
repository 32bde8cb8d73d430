"""Shared config helpers: `parse_arg` for `get_config(arg)` variants."""

import ml_collections


def parse_arg(arg: str | None, **defaults):
  """Parses `"size=tiny,runlocal"` into a ConfigDict with typed defaults.

  A bare name sets a boolean default to True. Values are cast to the type
  of their default.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    if not item:
      continue
    if "=" in item:
      name, value = item.split("=", 1)
    else:
      name, value = item, "True"
    if name not in defaults:
      raise ValueError(f"config argument {name!r} is not one of "
                       f"{sorted(defaults)}.")
    kind = type(defaults[name])
    if kind is bool:
      out[name] = value.lower() in ("1", "true", "yes")
    else:
      out[name] = kind(value)
  return out
