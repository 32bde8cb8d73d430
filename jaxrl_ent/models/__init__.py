"""Flax NNX decoder LMs (Llama 3, Qwen 2/2.5, Qwen 3) and HF checkpoint I/O."""

from jaxrl_ent.models.config import ModelConfig, from_hf_config
from jaxrl_ent.models.decoder import DecoderLM, KVCache, init_cache, init_model
from jaxrl_ent.models.hf_io import (CheckpointError, from_pretrained,
                                    init_sharded,
                                    load_tokenizer, save_pretrained)
