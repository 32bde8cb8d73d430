"""`import jaxrl_ent` is cheap and configures nothing globally."""

import subprocess
import sys

from absl.testing import absltest

_PROBE = """
import sys
import jaxrl_ent
heavy = sorted(m for m in ("jax", "flax", "torch", "transformers", "optax")
               if m in sys.modules)
print("HEAVY", heavy)
import jaxrl_ent.models, jaxrl_ent.sharding, jaxrl_ent.entropy
import jax
print("X64", jax.config.jax_enable_x64)
print("NOOPT", jax.config.read("jax_disable_most_optimizations"))
print("DEVICES", jax.device_count())
"""


class ImportTest(absltest.TestCase):

  def test_import_is_lazy_and_side_effect_free(self):
    out = subprocess.run([sys.executable, "-c", _PROBE], check=True,
                         capture_output=True, text=True).stdout
    self.assertIn("HEAVY []", out)
    self.assertIn("X64 False", out)
    self.assertIn("NOOPT False", out)
    self.assertIn("DEVICES 1", out)


if __name__ == "__main__":
  absltest.main()
