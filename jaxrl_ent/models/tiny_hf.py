"""Tiny random HF checkpoints (transformers + PyTorch) and tokenizers.

For tests and examples only: `write_checkpoint` needs the `test` extra
(torch). Nothing is downloaded; weights are random and the tokenizer is a
byte-level BPE trained in-process.
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


DEFAULT_CORPUS = (
    "the policy samples a token and the verifier checks the answer",
    "entropy falls when likely tokens get positive advantages",
    "clip cov and kl cov act on a few high covariance tokens",
    "an entropy bonus is dense and biases the optimum",
)

# A minimal ChatML template, the format Qwen checkpoints use.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer(corpus=DEFAULT_CORPUS, vocab_size: int = 256):
  """A byte-level BPE `PreTrainedTokenizerFast` trained on `corpus`.

  Byte-level, so any text encodes; special tokens `<|endoftext|>` (eos/pad),
  `<|im_start|>`, `<|im_end|>`, and a ChatML chat template.
  """
  import tokenizers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
      add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False)
  tok.train_from_iterator(list(corpus) * 4, trainer)
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>",
      pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE,
      additional_special_tokens=["<|im_start|>", "<|im_end|>"])
