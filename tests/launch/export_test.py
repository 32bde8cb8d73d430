"""launch/export.py writes a folder that PyTorch transformers loads.

The exported parameters must be exactly the checkpoint's (compared with the
per-leaf checksums the trainer wrote into the checkpoint's integrity record,
not through our restore code), and transformers' Qwen2 in PyTorch must give
the same logits as our model on that folder, within 1e-4 in float32.
"""

import contextlib
import io
import json
import os

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
import torch
import transformers
from flax import nnx

from jaxrl_ent import models
from jaxrl_ent.train import checkpoint
from jaxrl_ent.train import policy_setup

import launcher_testlib


def _saved_param_checksums(workdir, step):
  """{param path: fingerprint} from the checkpoint's integrity record."""
  path = os.path.join(workdir, "ckpt", str(step), "integrity", "metadata")
  with open(path) as f:
    record = json.load(f)
  return {leaf["path"][len(".params"):]: leaf["fp"]
          for leaf in record["state"] if leaf["path"].startswith(".params")}


class ExportLaunchTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = launcher_testlib.tiny_run()

  def _export(self, *args):
    stdout = io.StringIO()
    with launcher_testlib.launcher("export") as launcher:
      with contextlib.redirect_stdout(stdout):
        launcher_testlib.run_main(launcher, "export",
                                  *launcher_testlib.RUN_CONFIG_ARGS, *args)
    return stdout.getvalue()

  def test_latest_step_loads_in_transformers_with_equal_logits(self):
    out = self.create_tempdir().full_path
    stdout = self._export(f"--workdir={self.workdir}", f"--output_dir={out}")
    self.assertIn("exported step 2", stdout)
    self.assertIn("read back bit-exact", stdout)
    with open(os.path.join(out, "jaxrl_ent_export.json")) as f:
      info = json.load(f)
    self.assertEqual(info["step"], 2)

    ours = models.from_pretrained(out)
    # Exactly the parameters the trainer saved at step 2, which moved away
    # from step 1 (so this is not the initial policy).
    exported = checkpoint.state_fingerprint(nnx.state(ours, nnx.Param))
    self.assertEqual(exported, _saved_param_checksums(self.workdir, 2))
    self.assertNotEqual(exported, _saved_param_checksums(self.workdir, 1))

    # The tokenizer is the run's (the task's tokenizer).
    config = launcher_testlib.run_config()
    task_tok = policy_setup.build_tokenizer_for_task(config.data)
    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(out)
    prompts = ["Reverse the digits: 4071", "Reverse the digits: 958"]
    ids = [hf_tok(p)["input_ids"] for p in prompts]
    self.assertEqual(ids, [task_tok(p)["input_ids"] for p in prompts])

    torch_model = transformers.AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32)
    torch_model.eval()
    self.assertEqual(type(torch_model).__name__, "Qwen2ForCausalLM")
    for row in ids:
      with torch.no_grad():
        want = torch_model(torch.tensor([row])).logits.numpy()
      got, _ = ours(jnp.asarray([row], jnp.int32))
      np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)

    # EOS for `generate` is the tokenizer's, as in our sampler.
    gen = transformers.GenerationConfig.from_pretrained(out)
    self.assertEqual(gen.eos_token_id, hf_tok.eos_token_id)

  def test_step_flag_dtype_and_default_folder(self):
    f32 = self.create_tempdir().full_path
    self._export(f"--workdir={self.workdir}", "--step=1",
                 f"--output_dir={f32}")
    self.assertEqual(
        checkpoint.state_fingerprint(nnx.state(models.from_pretrained(f32),
                                               nnx.Param)),
        _saved_param_checksums(self.workdir, 1))
    stdout = self._export(f"--workdir={self.workdir}", "--step=1",
                          "--dtype=bfloat16")
    self.assertIn("(bfloat16, read back bit-exact)", stdout)
    bf16 = os.path.join(self.workdir, "export", "step_1")  # The default.
    with open(os.path.join(bf16, "config.json")) as f:
      self.assertEqual(json.load(f)["torch_dtype"], "bfloat16")
    # Tensor by tensor, read with safetensors alone: step 1's float32
    # parameters rounded to bfloat16.
    want = safetensors.numpy.load_file(os.path.join(f32, "model.safetensors"))
    got = safetensors.numpy.load_file(os.path.join(bf16, "model.safetensors"))
    self.assertEqual(sorted(got), sorted(want))
    for name, value in want.items():
      self.assertEqual(got[name].dtype, jnp.bfloat16, name)
      np.testing.assert_array_equal(
          got[name].view(np.uint16),
          value.astype(jnp.bfloat16).view(np.uint16), err_msg=name)

  def test_workdir_without_checkpoints_names_the_path(self):
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(FileNotFoundError,
                                f"no checkpoint directory {empty}/ckpt"):
      self._export(f"--workdir={empty}")


if __name__ == "__main__":
  absltest.main()
