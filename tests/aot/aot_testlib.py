"""Shared set-up of the AOT tests (their own pytest process: tests/run.sh).

Import it first: it pins the CPU platform, makes the repository root
importable, turns XLA's optimisations back on (tests/conftest.py turns most
off for fast CPU tests; a TPU program's memory must be measured as it will
run) and says whether libtpu is installed.
"""

import os

os.environ["JAX_PLATFORMS"] = "cpu"

# pylint: disable=g-import-not-at-top,wrong-import-position
import sys

import jax
from absl.testing import absltest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

jax.config.update("jax_disable_most_optimizations", False)

try:
  import libtpu  # pylint: disable=unused-import
  HAVE_LIBTPU = True
except ImportError:
  HAVE_LIBTPU = False
needs_libtpu = absltest.skipUnless(
    HAVE_LIBTPU, "needs libtpu: pip install -e '.[tpu]'")
