"""launch/colab_quickstart.ipynb runs top to bottom on CPU (nbclient).

The `parameters` cell is replaced by a seconds-long setting (the `runlocal`
variant, 2 steps, a temporary workdir); the install cell must then be a
no-op (jaxrl_ent is importable here), the run must finish, a figure must be
displayed and the final held-out accuracy printed.
"""

import os

from absl.testing import absltest
import nbclient
import nbformat

import launcher_testlib

_NOTEBOOK = os.path.join(launcher_testlib.ROOT, "launch",
                         "colab_quickstart.ipynb")


def _outputs(nb, output_type):
  return [o for cell in nb.cells if cell.cell_type == "code"
          for o in cell.get("outputs", []) if o.output_type == output_type]


class NotebookTest(absltest.TestCase):

  def test_runs_with_a_tiny_config_and_plots(self):
    nb = nbformat.read(_NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    self.assertLen(params, 1)
    for name in ("REPO_URL", "ENTROPY", "STEPS", "RUNLOCAL", "WORKDIR"):
      self.assertRegex(params[0].source, rf"(?m)^{name} = ")
    workdir = os.path.join(self.create_tempdir().full_path, "run")
    params[0].source += (
        "\nRUNLOCAL = True\nSTEPS = 2\n"
        f"WORKDIR = {workdir!r}\n"
        # As tests/conftest.py: compile time dominates these tiny programs.
        "import jax\n"
        "jax.config.update('jax_disable_most_optimizations', True)\n")

    client = nbclient.NotebookClient(
        nb, timeout=240, kernel_name="python3",
        resources={"metadata": {"path": launcher_testlib.ROOT}})
    client.execute()  # Raises CellExecutionError on any failing cell.

    self.assertEmpty(_outputs(nb, "error"))
    stdout = "".join(o.text for o in _outputs(nb, "stream")
                     if o.name == "stdout")
    self.assertIn(f"repository: {launcher_testlib.ROOT}", stdout)
    self.assertNotIn("Cloning", stdout)  # The install cell did nothing.
    self.assertIn("entropy control: clip_cov, GRPO steps: 2", stdout)
    self.assertRegex(stdout, r"final held-out greedy accuracy: \d\.\d{3}")
    self.assertIn("LoRA: rank 8, alpha 16, base none", stdout)  # LoRA cell
    figures = [o for o in _outputs(nb, "display_data")
               if "image/png" in o.get("data", {})]
    self.assertLen(figures, 1)
    self.assertGreater(len(figures[0].data["image/png"]), 1000)
    self.assertTrue(os.path.exists(os.path.join(workdir, "metrics.jsonl")))
    self.assertTrue(os.path.exists(os.path.join(workdir, "summary.json")))


if __name__ == "__main__":
  absltest.main()
