"""Runs a launcher's absl `main` in-process, as `python launch/<name>.py`.

In-process runs share this test process's jit settings (conftest.py) and
registered rewards, so a launcher test takes seconds. Every launcher defines
`--config` and `--workdir` on the global absl FLAGS; two launchers loaded in
one pytest worker would clash, so `launcher()` sets aside same-named flags
while the module is in use and removes the module's flags afterwards.
"""

import atexit
import contextlib
import functools
import importlib.util
import os
import sys
import tempfile
from unittest import mock

from absl import flags
# Imported here so that its absl flags exist before any launcher runs: the
# flags defined while a launcher is in use are removed afterwards, and grain
# (first imported by a launcher's data pipeline) reads its own on every
# iteration.
import grain  # pylint: disable=unused-import

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
FLAGS = flags.FLAGS


def _flag_objects() -> dict:
  return {name: FLAGS[name] for name in FLAGS}


@contextlib.contextmanager
def launcher(name: str):
  """Yields `launch/<name>.py` loaded as a fresh module."""
  path = os.path.join(ROOT, "launch", name + ".py")
  set_aside = {}
  before = _flag_objects()
  for _ in range(50):  # One retry per clashing flag name, at most.
    spec = importlib.util.spec_from_file_location(f"launch_{name}", path)
    module = importlib.util.module_from_spec(spec)
    try:
      spec.loader.exec_module(module)
      break
    except flags.DuplicateFlagError as e:
      # Undo this attempt's definitions, set the clashing flag aside, retry.
      for flag_name in set(FLAGS) - set(before):
        delattr(FLAGS, flag_name)
      clash = next(n for n in before if f"'{n}'" in str(e) and n in FLAGS)
      set_aside[clash] = FLAGS[clash]
      delattr(FLAGS, clash)
  else:
    raise RuntimeError(f"could not load {path}")
  defined = set(FLAGS) - (set(before) - set(set_aside))
  try:
    yield module
  finally:
    if FLAGS.is_parsed():
      FLAGS.unparse_flags()
    for flag_name in defined:
      if flag_name in FLAGS:
        delattr(FLAGS, flag_name)
    for flag_name, flag in set_aside.items():
      FLAGS[flag_name] = flag
    FLAGS.mark_as_parsed()


def run_main(module, name: str, *args: str):
  """Parses `args` as the command line of launch/<name>.py and runs main."""
  argv = [name, *args]
  before = set(FLAGS)
  try:
    # ml_collections reads `--config.x=y` overrides from sys.argv itself,
    # and registers one flag per override while parsing.
    with mock.patch.object(sys, "argv", argv):
      FLAGS(argv)
    return module.main([name])
  finally:
    FLAGS.unparse_flags()
    for flag_name in set(FLAGS) - before:
      delattr(FLAGS, flag_name)
    FLAGS.mark_as_parsed()


# ---------------------------------------------------------------------------
# One seconds-long training run shared by the launcher tests of a process.

LENGTH_REWARD = "launcher_test_length"
# The run's config as command-line arguments of the launchers (they need the
# config the run was trained with; `sft.steps=0` is part of it).
RUN_CONFIG_ARGS = (
    f"--config={ROOT}/configs/grpo_tiny.py:runlocal",
    "--config.reward.backend=inline", f"--config.reward.spec={LENGTH_REWARD}",
    "--config.sft.steps=0")


def _length_reward(completion, reference):
  # Partial credit in [0, 1] that varies within every group (so each update
  # moves the policy) and between policies (so equal evaluation numbers mean
  # equal generations, not two zeros).
  del reference
  return min(len(completion), 8) / 8.0


def register_length_reward():
  from jaxrl_ent import rewards  # pylint: disable=g-import-not-at-top
  rewards.register(LENGTH_REWARD, _length_reward, overwrite=True)


def run_config():
  """The config `RUN_CONFIG_ARGS` describe, plus an evaluation every step."""
  from configs import grpo_tiny  # pylint: disable=g-import-not-at-top
  config = grpo_tiny.get_config("runlocal")
  config.reward.backend = "inline"
  config.reward.spec = LENGTH_REWARD
  config.sft.steps = 0  # A random policy: the tests check plumbing.
  config.tensorboard = False
  config.eval.every = 1  # A logged evaluation for every saved step.
  return config


@functools.cache
def tiny_run() -> str:
  """Workdir of a 2-step GRPO run with checkpoints at steps 1 and 2."""
  from jaxrl_ent.train import rl_loop  # pylint: disable=g-import-not-at-top
  register_length_reward()
  tmp = tempfile.TemporaryDirectory(prefix="launcher_test_run_")
  atexit.register(tmp.cleanup)
  workdir = os.path.join(tmp.name, "run")
  rl_loop.train_and_evaluate(run_config(), workdir)
  return workdir
