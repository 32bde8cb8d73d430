"""save_pretrained/from_pretrained round trip and bad-checkpoint errors."""

import json
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx

from jaxrl_ent import models
from jaxrl_ent.models import tiny_hf


def _params(model):
  return {"/".join(map(str, k)): np.asarray(v.get_value())
          for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


class RoundTripTest(parameterized.TestCase):

  @parameterized.parameters(("qwen2", False), ("qwen3", True), ("llama", False))
  def test_save_load_is_exact(self, model_type, tie):
    with tempfile.TemporaryDirectory() as d:
      tiny_hf.write_checkpoint(pathlib.Path(d) / "a", model_type, tie=tie)
      a = models.from_pretrained(pathlib.Path(d) / "a")
      models.save_pretrained(a, pathlib.Path(d) / "b")
      b = models.from_pretrained(pathlib.Path(d) / "b")
      # transformers reads what we wrote: same logits as our model.
      ref = transformers.AutoModelForCausalLM.from_pretrained(
          str(pathlib.Path(d) / "b"), local_files_only=True).eval()
    self.assertEqual(a.cfg, b.cfg)
    pa, pb = _params(a), _params(b)
    self.assertEqual(pa.keys(), pb.keys())
    for k in pa:
      np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    tokens = np.arange(12).reshape(2, 6) % a.cfg.vocab_size
    with torch.no_grad():
      expected = ref(input_ids=torch.tensor(tokens)).logits.numpy()
    got, _ = b(jnp.asarray(tokens))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)

  def test_sharded_index_files(self):
    with tempfile.TemporaryDirectory() as d:
      tiny_hf.write_checkpoint(pathlib.Path(d) / "a", "qwen2")
      a = models.from_pretrained(pathlib.Path(d) / "a")
      out = models.save_pretrained(a, pathlib.Path(d) / "b",
                                   max_shard_bytes=20_000)
      files = sorted(p.name for p in out.glob("*.safetensors"))
      self.assertGreater(len(files), 1)
      self.assertTrue((out / "model.safetensors.index.json").exists())
      b = models.from_pretrained(out)
    for k, v in _params(a).items():
      np.testing.assert_array_equal(v, _params(b)[k], err_msg=k)

  def test_bfloat16_storage(self):
    with tempfile.TemporaryDirectory() as d:
      tiny_hf.write_checkpoint(pathlib.Path(d) / "a", "qwen3")
      a = models.from_pretrained(pathlib.Path(d) / "a",
                                 param_dtype=jnp.bfloat16)
      models.save_pretrained(a, pathlib.Path(d) / "b")
      b = models.from_pretrained(pathlib.Path(d) / "b",
                                 param_dtype=jnp.bfloat16)
      header = json.loads(
          (pathlib.Path(d) / "b" / "config.json").read_text())
    self.assertEqual(header["torch_dtype"], "bfloat16")
    self.assertEqual(b.embed.get_value().dtype, jnp.bfloat16)
    for k, v in _params(a).items():
      np.testing.assert_array_equal(v, _params(b)[k], err_msg=k)


class TokenizerTest(absltest.TestCase):

  def test_tokenizer_and_chat_template_round_trip(self):
    # Digit merges (" 1", ...) make the ids depend on the pre-tokenizer:
    # the saved folder also holds a qwen2 config.json, whose tokenizer class
    # would split digits one by one.
    tok = tiny_hf.tiny_tokenizer(["reverse: 1 2 3 = 3 2 1", "7 * 6 = 42"],
                                 vocab_size=300)
    with tempfile.TemporaryDirectory() as d:
      tiny_hf.write_checkpoint(pathlib.Path(d) / "a", "qwen2",
                               vocab_size=len(tok))
      model = models.from_pretrained(pathlib.Path(d) / "a")
      models.save_pretrained(model, pathlib.Path(d) / "b", tokenizer=tok)
      loaded = models.load_tokenizer(pathlib.Path(d) / "b")
    text = "reverse: 1 2 3 = 3 2 1; 7 * 6 = 42"
    self.assertEqual(loaded(text)["input_ids"], tok(text)["input_ids"])
    # The check is meaningful: some ids are multi-character merges.
    self.assertTrue(any(len(tok.decode([i])) > 1
                        for i in tok(text)["input_ids"]))
    self.assertEqual(loaded.decode(loaded(text)["input_ids"]), text)
    chat = loaded.apply_chat_template(
        [{"role": "user", "content": "What is 7 * 6?"}],
        add_generation_prompt=True, tokenize=False)
    self.assertEqual(chat, "<|im_start|>user\nWhat is 7 * 6?<|im_end|>\n"
                     "<|im_start|>assistant\n")
    self.assertEqual(loaded.eos_token, "<|endoftext|>")

  def test_missing_tokenizer_folder(self):
    with self.assertRaisesRegex(models.CheckpointError, "does not exist"):
      models.load_tokenizer("/nonexistent/tokenizer")


class BadCheckpointTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = pathlib.Path(self.create_tempdir().full_path) / "ckpt"
    tiny_hf.write_checkpoint(self.dir, "qwen2")

  def assertFails(self, pattern):
    with self.assertRaisesRegex(models.CheckpointError, pattern):
      models.from_pretrained(self.dir)

  def test_missing_folder(self):
    with self.assertRaisesRegex(models.CheckpointError, "does not exist"):
      models.from_pretrained(self.dir / "nope")

  def test_missing_config(self):
    (self.dir / "config.json").unlink()
    self.assertFails("config.json: missing")

  def test_missing_weights(self):
    (self.dir / "model.safetensors").unlink()
    self.assertFails("no \\*.safetensors")

  def test_unsupported_model_type(self):
    cfg = json.loads((self.dir / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (self.dir / "config.json").write_text(json.dumps(cfg))
    self.assertFails("model_type='gpt2' is not supported")

  def test_shape_mismatch(self):
    cfg = json.loads((self.dir / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (self.dir / "config.json").write_text(json.dumps(cfg))
    self.assertFails(r"model.safetensors: tensor "
                     r"'model.layers.0.mlp.(gate|up|down)_proj.weight' has shape \[\d+, \d+\], expected")

  def test_missing_tensor(self):
    cfg = json.loads((self.dir / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    cfg["layer_types"] = ["full_attention"] * 3
    (self.dir / "config.json").write_text(json.dumps(cfg))
    self.assertFails("tensor 'model.layers.2.*' is missing")

  def test_truncated_file(self):
    f = self.dir / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    self.assertFails("model.safetensors: truncated safetensors file")

  def test_corrupt_header(self):
    f = self.dir / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:12] = b"\xff\xfe\x00\x01"
    f.write_bytes(bytes(data))
    self.assertFails("model.safetensors: corrupt safetensors header")

  def test_index_names_missing_file(self):
    (self.dir / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.norm.weight": "model-00002.safetensors"}}))
    self.assertFails("model-00002.safetensors: listed in")


if __name__ == "__main__":
  absltest.main()
