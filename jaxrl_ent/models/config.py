"""Model hyper-parameters for the decoder-only LM families we support.

`ModelConfig` is the only thing the model reads; `from_hf_config` maps a
transformers config (Llama 3, Qwen 2/2.5, Qwen 3) onto it and refuses anything
it cannot represent faithfully.
"""

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
# Kept here (not imported from `attention`/`decoder`) so the config stays a
# leaf module; tests check they match.
ATTENTION_IMPLS = ("auto", "xla_naive", "blockwise", "splash", "cudnn")
# How the model is run rather than what it is: not in config.json, set by
# the run's `model` block (`train.config_blocks.Model.options`).
EXECUTION_FIELDS = ("remat", "remat_policy", "attention_impl", "scan_unroll")
REMAT_POLICIES = ("none", "full", "dots_saveable",
                  "dots_with_no_batch_dims_saveable", "save_names")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only LM (hashable: a static jit argument).

  Attributes:
    model_type: one of SUPPORTED_MODEL_TYPES; used to name tensors on save.
    vocab_size: V.
    hidden_size: D.
    intermediate_size: F, the SwiGLU width.
    num_layers: L.
    num_heads: N, query heads.
    num_kv_heads: K, key/value heads (GQA when K < N).
    head_dim: H.
    rms_norm_eps: epsilon of every RMSNorm.
    rope_theta: RoPE base.
    rope_scaling: None, or a tuple of (key, value) pairs of a `llama3` scaling
      (factor, low_freq_factor, high_freq_factor,
      original_max_position_embeddings).
    max_position_embeddings: context length the checkpoint was trained for.
    tie_word_embeddings: LM head shares the embedding matrix.
    qkv_bias: biases on the q/k/v projections (Qwen 2).
    o_bias: bias on the output projection (Llama `attention_bias`).
    mlp_bias: biases in the MLP (Llama `mlp_bias`).
    qk_norm: per-head RMSNorm on q and k before RoPE (Qwen 3).
    dtype: compute dtype of activations (params keep `param_dtype`).
    param_dtype: storage dtype of parameters.
    remat: rematerialise each layer in the backward pass (saves activations);
      the legacy switch, `remat_policy="full"` when True and no policy is set.
    remat_policy: what the layer scan keeps for the backward pass, one of
      REMAT_POLICIES (None: from `remat`); see `decoder.remat_layer` for
      the trade-offs.
    attention_impl: the training forward's attention kernel, one of
      `attention.IMPLS` ("auto": splash on TPU, cuDNN on GPU, blockwise
      XLA elsewhere).
    scan_unroll: layers per iteration of the layer scan (1: the plain scan,
      compile time flat in depth, MaxText's `scan_layers`). Unrolling every
      layer measured within noise on XLA:CPU (5M Qwen2, 2 rows, body fwd +
      bwd, median of 5 interleaved calls: 702 vs 737 ms at T = 1024, 4474
      vs 4725 ms at 4096), and the whole train step was slower with it in
      one `benchmarks/long_context.py --speed` run, so 1 is the default.
  """

  model_type: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: tuple[tuple[str, float], ...] | None = None
  max_position_embeddings: int = 4096
  tie_word_embeddings: bool = False
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: bool = False
  remat_policy: str | None = None
  attention_impl: str = "auto"
  scan_unroll: int = 1

  def __post_init__(self):
    if not isinstance(self.scan_unroll, int) or self.scan_unroll < 1:
      raise ValueError(f"ModelConfig.scan_unroll={self.scan_unroll!r}; "
                       "expected an int >= 1.")
    if self.remat_policy is not None and (
        self.remat_policy not in REMAT_POLICIES):
      raise ValueError(f"ModelConfig.remat_policy={self.remat_policy!r}; "
                       f"expected one of {REMAT_POLICIES}.")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"ModelConfig.attention_impl={self.attention_impl!r}; "
                       f"expected one of {ATTENTION_IMPLS}.")
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
          f"model_type={self.model_type!r} is not supported; expected one of "
          f"{SUPPORTED_MODEL_TYPES}.")
    for name in ("vocab_size", "hidden_size", "intermediate_size",
                 "num_layers", "num_heads", "num_kv_heads", "head_dim"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got "
                         f"{value!r}.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"ModelConfig.num_heads={self.num_heads} must be a multiple of "
          f"num_kv_heads={self.num_kv_heads} (grouped-query attention).")
    if self.head_dim % 2:
      raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even "
                       "for rotary embeddings.")

  @property
  def effective_remat_policy(self) -> str:
    """`remat_policy`, or the legacy `remat` bool mapped to full/none."""
    if self.remat_policy is not None:
      return self.remat_policy
    return "full" if self.remat else "none"

  @property
  def rope_scaling_dict(self) -> dict[str, float] | None:
    return None if self.rope_scaling is None else dict(self.rope_scaling)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Parameter count (closed form, no allocation)."""
    d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
    n, k, v = self.num_heads, self.num_kv_heads, self.vocab_size
    attn = d * h * (n + 2 * k) + n * h * d
    attn += self.qkv_bias * h * (n + 2 * k) + self.o_bias * d
    attn += self.qk_norm * 2 * h
    mlp = 3 * d * f + self.mlp_bias * (2 * f + d)
    per_layer = attn + mlp + 2 * d
    head = 0 if self.tie_word_embeddings else d * v
    return self.num_layers * per_layer + v * d + d + head


def _get(hf_config, name, default=None):
  return getattr(hf_config, name, default)


def _rope(hf_config) -> tuple[float, tuple[tuple[str, float], ...] | None]:
  """Reads RoPE settings from transformers 4 (`rope_theta`/`rope_scaling`) or
  transformers 5 (`rope_parameters`) style configs."""
  params = dict(_get(hf_config, "rope_parameters", None) or {})
  legacy = _get(hf_config, "rope_scaling", None) or {}
  params = {**legacy, **params}
  theta = params.pop("rope_theta", None) or _get(hf_config, "rope_theta",
                                                  10000.0)
  rope_type = params.pop("rope_type", None) or params.pop("type", "default")
  if rope_type == "default":
    return float(theta), None
  if rope_type != "llama3":
    raise ValueError(
        f"rope type {rope_type!r} is not supported (supported: 'default', "
        "'llama3').")
  keys = ("factor", "low_freq_factor", "high_freq_factor",
          "original_max_position_embeddings")
  missing = [k for k in keys if k not in params]
  if missing:
    raise ValueError(f"llama3 rope scaling is missing {missing}.")
  return float(theta), tuple((k, float(params[k])) for k in keys)


def from_hf_config(hf_config, *, dtype=jnp.float32, param_dtype=None,
                   options=None) -> ModelConfig:
  """Maps a transformers `PretrainedConfig` to a `ModelConfig`.

  `options`: values of `EXECUTION_FIELDS` (remat, attention kernel, …),
  which config.json does not hold.

  Raises:
    ValueError: unsupported `model_type` or feature (sliding-window attention,
      non-SiLU activations, unknown RoPE scaling).
  """
  model_type = _get(hf_config, "model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(
        f"config.json: model_type={model_type!r} is not supported; expected "
        f"one of {SUPPORTED_MODEL_TYPES}.")
  act = _get(hf_config, "hidden_act", "silu")
  if act != "silu":
    raise ValueError(f"config.json: hidden_act={act!r} is not supported "
                     "(only 'silu').")
  if _get(hf_config, "use_sliding_window", False):
    raise ValueError("config.json: use_sliding_window=True is not supported.")
  num_heads = _get(hf_config, "num_attention_heads")
  head_dim = _get(hf_config, "head_dim", None) or (
      _get(hf_config, "hidden_size") // num_heads)
  theta, scaling = _rope(hf_config)
  attention_bias = bool(_get(hf_config, "attention_bias", False))
  return ModelConfig(
      model_type=model_type,
      vocab_size=_get(hf_config, "vocab_size"),
      hidden_size=_get(hf_config, "hidden_size"),
      intermediate_size=_get(hf_config, "intermediate_size"),
      num_layers=_get(hf_config, "num_hidden_layers"),
      num_heads=num_heads,
      num_kv_heads=_get(hf_config, "num_key_value_heads", None) or num_heads,
      head_dim=head_dim,
      rms_norm_eps=float(_get(hf_config, "rms_norm_eps", 1e-6)),
      rope_theta=theta,
      rope_scaling=scaling,
      max_position_embeddings=_get(hf_config, "max_position_embeddings", 4096),
      tie_word_embeddings=bool(_get(hf_config, "tie_word_embeddings", False)),
      # Qwen 2 always has q/k/v biases; Llama and Qwen 3 put one flag on all
      # four projections.
      qkv_bias=model_type == "qwen2" or attention_bias,
      o_bias=model_type != "qwen2" and attention_bias,
      mlp_bias=bool(_get(hf_config, "mlp_bias", False)),
      qk_norm=model_type == "qwen3",
      dtype=dtype,
      param_dtype=param_dtype or dtype,
      **execution_options(options),
  )


def execution_options(options) -> dict[str, Any]:
  """`options` checked to be `EXECUTION_FIELDS` only (None = defaults)."""
  options = dict(options or {})
  unknown = sorted(set(options) - set(EXECUTION_FIELDS))
  if unknown:
    raise ValueError(f"model options {unknown} are not execution options; "
                     f"allowed: {EXECUTION_FIELDS}.")
  return options


def to_hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
  """The `config.json` content transformers needs to rebuild `cfg`."""
  arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
          "qwen3": "Qwen3ForCausalLM"}[cfg.model_type]
  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  if cfg.rope_scaling is not None:
    rope = {"rope_type": "llama3", "rope_theta": cfg.rope_theta,
            **cfg.rope_scaling_dict}
    rope["original_max_position_embeddings"] = int(
        rope["original_max_position_embeddings"])
  d = {
      "architectures": [arch],
      "model_type": cfg.model_type,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "rms_norm_eps": cfg.rms_norm_eps,
      "rope_theta": cfg.rope_theta,
      "rope_parameters": rope,
      "max_position_embeddings": cfg.max_position_embeddings,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "torch_dtype": jnp.dtype(cfg.param_dtype).name,
  }
  if cfg.rope_scaling is not None:
    d["rope_scaling"] = rope
  if cfg.model_type != "qwen2":
    d["attention_bias"] = cfg.qkv_bias
  if cfg.model_type == "llama":
    d["mlp_bias"] = cfg.mlp_bias
  return d


def llama3_inv_freq(head_dim: int, theta: float, scaling) -> Any:
  """RoPE inverse frequencies [H/2], with Llama 3.1 frequency scaling."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) /
                         head_dim))
  if scaling is None:
    return inv
  s = dict(scaling)
  factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
  old_len = s["original_max_position_embeddings"]
  low_wavelen, high_wavelen = old_len / lo, old_len / hi
  wavelen = 2 * math.pi / inv
  scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
  smooth = (old_len / wavelen - lo) / (hi - lo)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, smoothed, scaled)
