"""Flag parsing for the launchers: one line for a bad flag, never a traceback.

`launch_flags.run(main)` replaces `absl.app.run(main)` in every `launch/*.py`.
It parses the flags itself, so that the three ways a command line goes
wrong end in ONE line on stderr and exit status 2, before anything is built:

* an unknown config key (`--config.train.stepz=3`): ml_collections raises a
  chained `AttributeError` from deep inside absl; here the override is
  checked against the loaded config and answered with a did-you-mean
  (`--config.train.steps`) or the block's field names;
* an unparseable value (`--config.train.steps=abc`, a `None`-typed field
  given a value): absl's message, with the field's expected type;
* an unknown plain flag, or a config file / `get_config(arg)` that fails.

`overrides(name)` lists the dotted config fields set on the command line,
for `validate.ignored_field_warnings`; `fail(message)` ends a launcher with
the same one-line format (e.g. for a `validate.ConfigError`).
"""

import difflib
import importlib.util
import os
import re
import sys

from absl import app
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as _config_flags_impl

EXIT_USAGE = 2


def _prog(argv) -> str:
  return os.path.basename(argv[0]) if argv else "launcher"


def fail(message: str, argv=None) -> None:
  """Prints `<prog>: error: <message>` to stderr and exits with status 2."""
  prog = _prog(sys.argv if argv is None else argv)
  # One line: a multi-line message (e.g. a ConfigError listing several
  # fields) keeps its lines, but gets no traceback and no usage text.
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(EXIT_USAGE)


def warn(message: str, argv=None) -> None:
  """Prints `<prog>: warning: <message>` to stderr."""
  prog = _prog(sys.argv if argv is None else argv)
  print(f"{prog}: warning: {message}", file=sys.stderr)


def config_flag_names() -> list[str]:
  """Names of the registered ml_collections config flags."""
  return [name for name, flag in flags.FLAGS._flags().items()  # pylint: disable=protected-access
          if _config_flags_impl.is_config_flag(flag)]


def _flag_value(argv, name: str) -> str | None:
  """The value of `--name=v` / `--name v` on the command line (last wins)."""
  value = None
  for i, arg in enumerate(argv):
    m = re.match(rf"^--?{re.escape(name)}(=(.*))?$", arg)
    if m:
      if m.group(1) is not None:
        value = m.group(2)
      elif i + 1 < len(argv):
        value = argv[i + 1]
  return value


def _override_args(argv, name: str) -> list[tuple[str, str]]:
  """[(dotted path, the argument as typed)] of `--name.<path>[=v]`."""
  out = []
  for arg in argv:
    m = re.match(rf"^--?{re.escape(name)}\.([^=]+)", arg)
    if m:
      out.append((m.group(1), arg))
  return out


def load_config_file(spec: str):
  """`get_config(arg)` of a `path[:arg]` config spec, as config_flags does."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found")
  module_spec = importlib.util.spec_from_file_location(
      "_jaxrl_ent_config_probe", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _paths(node, prefix="") -> list[str]:
  out = []
  if hasattr(node, "items"):
    for key, value in node.items():
      path = f"{prefix}{key}"
      out.append(path)
      out += _paths(value, path + ".")
  return out


def _children(node):
  return sorted(node.keys()) if hasattr(node, "keys") else []


# Fields that existed once, and where their value lives now.
REMOVED = {
    "loss.temperature": "the loss scores tokens at the sampling temperature; "
                        "set --{name}.rollout.temperature",
}


def unknown_key_message(config, name: str, path: str) -> str | None:
  """None if `path` names a field of `config`, else the one-line answer."""
  if path in REMOVED and path not in _paths(config):
    return (f"--{name}.{path} was removed: "
            f"{REMOVED[path].format(name=name)}")
  node, parts = config, path.split(".")
  for k, part in enumerate(parts):
    parent = ".".join(parts[:k])
    if not hasattr(node, "keys"):
      return (f"--{name}.{path}: {parent} is a {type(node).__name__} value, "
              "not a block with fields")
    if part not in node:
      where = f"block {parent!r}" if parent else "the config"
      siblings = _children(node)
      close = [f"{parent}.{c}" if parent else c for c in
               difflib.get_close_matches(part, siblings, n=1, cutoff=0.6)]
      rest = ".".join(parts[k + 1:])
      if close and rest and f"{close[0]}.{rest}" in _paths(config):
        close = [f"{close[0]}.{rest}"]
      if not close and not parent:  # A typo in the block name, say.
        close = difflib.get_close_matches(path, _paths(config), n=1,
                                          cutoff=0.6)
      hint = (f"did you mean --{name}.{close[0]}?" if close else
              f"fields of {where}: {', '.join(siblings[:30])}")
      return (f"unknown config field --{name}.{path} ({where} has no "
              f"{part!r}); {hint}")
    node = node[part]
  return None


def _value_type(config, path: str) -> str | None:
  *parents, leaf = path.split(".")
  node = config
  try:
    for part in parents:
      node = node[part]
    kind = node.get_type(leaf) if hasattr(node, "get_type") else type(
        node[leaf])
  except (KeyError, TypeError, AttributeError):
    return None
  return kind.__name__


def explain(argv, error: BaseException, names=None) -> str:
  """The one-line message for a flag-parsing failure.

  Args:
    argv: the command line.
    error: what `flags.FLAGS(argv)` raised.
    names: the config flags' names (default: the registered ones).
  """
  for name in config_flag_names() if names is None else names:
    spec = _flag_value(argv, name)
    overrides = _override_args(argv, name)
    if spec is None:
      if overrides:
        return f"--{name}.* overrides given but no --{name}=<file>"
      continue
    try:
      config = load_config_file(spec)
    except Exception as e:  # pylint: disable=broad-except
      # The file or its get_config(arg) fails: that is the problem to show.
      return f"--{name}={spec}: {type(e).__name__}: {_first_line(e)}"
    for path, arg in overrides:
      msg = unknown_key_message(config, name, path)
      if msg:
        return msg
    text = _first_line(error)
    for path, arg in overrides:
      if f"{name}.{path}" in text:
        kind = _value_type(config, path)
        if kind == "NoneType":
          return (f"{arg}: {name}.{path} defaults to None and has no type to "
                  "parse a command-line value into; set it in the config "
                  "file (or give the field a typed default)")
        short = re.sub(r"^flag --\S+: ", "", text)
        return f"{arg}: cannot parse the value as {kind}: {short}"
  return _first_line(error)


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  if isinstance(error, KeyError) and error.args:
    text = str(error.args[0]).strip("'\"")
  line = text.splitlines()[0] if text else type(error).__name__
  return line[:500]


def parse_flags(argv):
  """An `absl.app.run` `flags_parser`: one line and exit 2 on any failure."""
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    # Flag parsing builds nothing; whatever failed here is the command line
    # (or the config file it names), so it gets one line, not a traceback.
    fail(explain(argv, e), argv)
  for name in config_flag_names():
    # ml_collections defers a config file that fails to load (missing file,
    # syntax error) to the first attribute access, deep in the launcher.
    spec = _flag_value(argv, name)
    value = flags.FLAGS[name].value
    if spec is not None and not hasattr(type(value), "keys"):
      try:
        load_config_file(spec)
        msg = f"--{name}={spec}: the config file did not load"
      except Exception as e:  # pylint: disable=broad-except
        msg = f"--{name}={spec}: {type(e).__name__}: {_first_line(e)}"
      fail(msg, argv)
  return rest


def run(main) -> None:
  """`absl.app.run(main)` with `parse_flags` as the flag parser."""
  app.run(main, flags_parser=parse_flags)


def overrides(name: str = "config") -> list[str]:
  """Dotted config fields set on the command line with `--name.<field>=`."""
  return sorted(config_flags.get_override_values(flags.FLAGS[name]))
