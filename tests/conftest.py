"""Shared pytest set-up: fast compiles for tiny test programs.

Multi-device tests live in tests/multidevice/ and run in their own pytest
process (see tests/run.sh), because XLA_FLAGS must be set before jax starts.
"""

import jax

# Compile time dominates the tiny programs in this suite.
jax.config.update("jax_disable_most_optimizations", True)

# absltest helpers (create_tempdir, ...) read absl flags; under pytest nobody
# parses them.
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(autouse=True)
def _absl_flags_parsed():
  # A launcher test may parse and then unparse the global absl flags; keep
  # them usable for every test that follows in the same worker.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  yield
