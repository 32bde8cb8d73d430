"""Tiny random HF checkpoints built with transformers + PyTorch.

For tests and examples only: it needs the `test` extra (torch). Nothing is
downloaded; the weights are random.
"""

import pathlib

TINY_DIMS = dict(vocab_size=97, hidden_size=32, intermediate_size=64,
                 num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128)

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}


def hf_config(model_type: str, tie: bool = False, **overrides):
  """A tiny transformers config of the given family."""
  import transformers  # pylint: disable=g-import-not-at-top
  kw = dict(TINY_DIMS, tie_word_embeddings=tie)
  if model_type == "qwen3":
    kw["head_dim"] = 16  # Qwen 3 decouples head_dim from hidden/heads.
  if model_type == "llama":
    kw["rope_parameters"] = dict(LLAMA3_ROPE)
  kw.update(overrides)
  cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
         "qwen3": transformers.Qwen3Config}[model_type]
  return cls(**kw)


def write_checkpoint(path, model_type: str, tie: bool = False, seed: int = 0,
                     **overrides):
  """Writes a random tiny `*ForCausalLM` to `path`; returns the torch model.

  Norm weights and biases are randomised too (HF initialises them to 1/0),
  so a parity test exercises every parameter.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  cfg = hf_config(model_type, tie, **overrides)
  model = transformers.AutoModelForCausalLM.from_config(cfg)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p))
  model.eval()
  path = pathlib.Path(path)
  model.save_pretrained(str(path))
  return model
