"""Load and save Hugging Face checkpoints (config.json + *.safetensors).

`from_pretrained` validates the whole checkpoint (files, tensor names, shapes,
truncation) before anything is placed on a device, then builds the model
directly into its target sharding: the model is created abstractly
(`nnx.eval_shape`) and each parameter is assembled on the host, one tensor at
a time, and placed shard by shard with `jax.make_array_from_callback`. No
device ever holds a full unsharded copy of a sharded parameter.

`save_pretrained` writes a folder that transformers (and vLLM, SGLang, ...)
load as an ordinary checkpoint.

Folders may be local or in a bucket (`gs://...`, `jaxrl_ent/storage.py`):
safetensors and transformers read local files, so a remote folder is copied
to a temporary local directory to load it (on every process), and written
locally then uploaded, `config.json` last (the file that makes a folder a
checkpoint for `load_config` and the warm-start cache).
"""

import contextlib
import json
import math
import os
import pathlib
import struct
import tempfile
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_ent import sharding
from jaxrl_ent import storage
from jaxrl_ent import strict_json
from jaxrl_ent.models import config as config_lib
from jaxrl_ent.models import decoder

_SAFETENSORS_INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be loaded (names the file or tensor)."""


# ---------------------------------------------------------------------------
# Name and layout mapping between HF tensors and our parameters.

def _layer_hf_name(name: str, i: int) -> str:
  attn = {"q_w": "q_proj.weight", "k_w": "k_proj.weight",
          "v_w": "v_proj.weight", "o_w": "o_proj.weight",
          "q_b": "q_proj.bias", "k_b": "k_proj.bias", "v_b": "v_proj.bias",
          "o_b": "o_proj.bias", "q_norm": "q_norm.weight",
          "k_norm": "k_norm.weight"}
  mlp = {"gate_w": "gate_proj.weight", "up_w": "up_proj.weight",
         "down_w": "down_proj.weight", "gate_b": "gate_proj.bias",
         "up_b": "up_proj.bias", "down_b": "down_proj.bias"}
  norms = {"attn_norm": "input_layernorm.weight",
           "mlp_norm": "post_attention_layernorm.weight"}
  if name in attn:
    return f"model.layers.{i}.self_attn.{attn[name]}"
  if name in mlp:
    return f"model.layers.{i}.mlp.{mlp[name]}"
  return f"model.layers.{i}.{norms[name]}"


def _to_ours(name: str, hf: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """HF layout (torch Linear is [out, in]) -> ours, for one layer's tensor."""
  if name in ("q_w", "k_w", "v_w", "gate_w", "up_w", "down_w"):
    return hf.T.reshape(shape)
  if name == "o_w":
    return hf.T.reshape(shape)
  return hf.reshape(shape)


def _to_hf(name: str, ours: np.ndarray) -> np.ndarray:
  if name in ("q_w", "k_w", "v_w"):
    return ours.reshape(ours.shape[0], -1).T
  if name == "o_w":
    return ours.reshape(-1, ours.shape[-1]).T
  if name in ("gate_w", "up_w", "down_w"):
    return ours.T
  if name in ("q_b", "k_b", "v_b"):
    return ours.reshape(-1)
  return ours


def _hf_shape(name: str, shape: Sequence[int]) -> tuple[int, ...]:
  """`_to_hf(name, x).shape` for `x` of `shape`, traced abstractly: the
  config.json sizes are not trusted yet, so nothing of that shape is
  allocated, and the layout has one definition (`_to_hf`)."""
  out = jax.eval_shape(lambda x: _to_hf(name, x),
                       jax.ShapeDtypeStruct(tuple(shape), jnp.int8))
  return tuple(out.shape)


# ---------------------------------------------------------------------------
# safetensors headers, read and checked without loading any data.

# Tensor dtypes a weight may have on disk, with their sizes in bytes. The rest
# (integers, bool, fp8) would be cast to floats silently: refused instead.
_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
# safetensors refuses larger headers; checked before reading one.
_MAX_HEADER_BYTES = 100_000_000
# Far past any released model (Llama 3 405B has 126 layers).
_MAX_LAYERS = 4096


def _is_count(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _read_header(file: pathlib.Path) -> dict:
  """Tensor table of a safetensors file, checking that the file is complete.

  Checks what safetensors checks when it opens the file (header size and
  JSON, each entry's dtype, shape and byte range, the ranges tiling the data
  exactly), so that a bad file fails here, naming the file and tensor,
  before any tensor is read; safetensors' own errors name neither.
  """
  size = file.stat().st_size
  with open(file, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise CheckpointError(f"{file}: truncated safetensors file ({size} "
                            "bytes, no header).")
    (n,) = struct.unpack("<Q", raw)
    if 8 + n > size:
      raise CheckpointError(f"{file}: truncated safetensors file (header of "
                            f"{n} bytes, file of {size} bytes).")
    if n > _MAX_HEADER_BYTES:
      raise CheckpointError(f"{file}: corrupt safetensors header (length {n} "
                            f"bytes; safetensors allows {_MAX_HEADER_BYTES}).")
    try:
      header = strict_json.loads(f.read(n))
    except strict_json.DuplicateKeyError as e:
      raise CheckpointError(f"{file}: corrupt safetensors header (tensor "
                            f"{e.key!r} appears twice).") from None
    except (ValueError, RecursionError) as e:  # Incl. bad UTF-8 and JSON.
      raise CheckpointError(f"{file}: corrupt safetensors header ({e}).") from e
  if not isinstance(header, dict):
    raise CheckpointError(f"{file}: corrupt safetensors header (a JSON "
                          f"{type(header).__name__}, expected an object).")
  meta = header.pop("__metadata__", {})
  if not isinstance(meta, dict) or not all(
      isinstance(v, str) for v in meta.values()):
    raise CheckpointError(f"{file}: corrupt safetensors header (__metadata__ "
                          "must map names to strings).")
  spans = []
  for name, info in header.items():
    where = f"{file}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape",
                                          "data_offsets"} <= set(info):
      raise CheckpointError(f"{where}: corrupt header entry {str(info)[:200]} "
                            "(expected dtype, shape and data_offsets).")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in _DTYPE_BYTES:
      raise CheckpointError(f"{where} has dtype {str(dtype)[:50]!r}; weights "
                            f"must be one of {', '.join(_DTYPE_BYTES)}.")
    if not isinstance(shape, list) or not all(map(_is_count, shape)):
      raise CheckpointError(f"{where} has shape {str(shape)[:200]}, not a "
                            "list of non-negative integers.")
    if (not isinstance(offsets, list) or len(offsets) != 2 or
        not all(map(_is_count, offsets)) or offsets[0] > offsets[1]):
      raise CheckpointError(f"{where} has data_offsets {str(offsets)[:200]}, "
                            "not a [begin, end] byte range.")
    nbytes = math.prod(shape) * _DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != nbytes:
      # A mislabelled dtype or shape: the bytes would be read as other values.
      raise CheckpointError(
          f"{where}: {dtype} {shape} is {nbytes} bytes, but its data_offsets "
          f"{offsets} span {offsets[1] - offsets[0]} (wrong dtype or shape "
          "in the header).")
    spans.append((offsets[0], offsets[1], name))
  end = 0
  for begin, stop, name in sorted(spans):
    if begin != end:
      raise CheckpointError(
          f"{file}: tensor {name!r} starts at data byte {begin}, but the "
          f"tensor before it ends at {end} (overlapping or gapped "
          "data_offsets).")
    end = stop
  if 8 + n + end > size:
    raise CheckpointError(
        f"{file}: truncated safetensors file: tensors need {8 + n + end} "
        f"bytes but the file has {size}.")
  if 8 + n + end < size:
    raise CheckpointError(
        f"{file}: {size - 8 - n - end} bytes after the last tensor (a corrupt "
        "header, or a file partly overwritten).")
  return header


def _tensor_table(path: pathlib.Path) -> dict[str, tuple[pathlib.Path, tuple]]:
  """Maps every tensor name to (file, shape), following a sharded index."""
  index = path / _SAFETENSORS_INDEX
  if index.exists():
    try:
      weight_map = json.loads(index.read_text()).get("weight_map")
    except (ValueError, RecursionError, AttributeError) as e:
      raise CheckpointError(f"{index}: not a valid safetensors index "
                            f"({e}).") from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(f, str) and f == pathlib.Path(f).name and f.endswith(
            ".safetensors") for f in weight_map.values()):
      raise CheckpointError(f"{index}: not a valid safetensors index (needs "
                            "a weight_map from tensor names to *.safetensors "
                            "file names in the folder).")
    files = sorted(set(weight_map.values()))
  else:
    files = sorted(p.name for p in path.glob("*.safetensors"))
    weight_map = None
  if not files:
    raise CheckpointError(f"{path}: no *.safetensors files (and no "
                          f"{_SAFETENSORS_INDEX}).")
  for fname in files:  # All listed files first: the clearest error.
    if not (path / fname).exists():
      raise CheckpointError(f"{path / fname}: listed in {_SAFETENSORS_INDEX} "
                            "but missing.")
  table = {}
  for fname in files:
    file = path / fname
    for name, info in _read_header(file).items():
      if weight_map is not None and weight_map.get(name) != fname:
        # The index and the shards disagree: which copy is meant is unclear
        # (transformers and save_pretrained list every tensor).
        listed = (f"lists it in {weight_map[name]}" if name in weight_map
                  else "does not list it")
        raise CheckpointError(f"{file}: tensor {name!r} is in this file but "
                              f"{_SAFETENSORS_INDEX} {listed}.")
      if name in table:
        raise CheckpointError(f"{file}: tensor {name!r} is also in "
                              f"{table[name][0]}; which one is meant?")
      table[name] = (file, tuple(info["shape"]))
  for name, fname in (weight_map or {}).items():
    if name not in table:
      raise CheckpointError(f"{index}: lists tensor {name!r} in {fname}, "
                            "which has no such tensor.")
  return table


def _expected_tensors(cfg: config_lib.ModelConfig, abs_state):
  """[(param path, [(hf name, hf shape), ...] per layer or one)]."""
  out = {}
  flat = nnx.to_flat_state(abs_state)
  for path, var in flat:
    shape = var.get_value().shape
    if path[0] == "layers":
      name = path[1]
      hf_shape = _hf_shape(name, shape[1:])
      per = [(_layer_hf_name(name, i), hf_shape)
             for i in range(cfg.num_layers)]
      out[path] = per
    elif path == ("embed",):
      out[path] = [("model.embed_tokens.weight", tuple(shape))]
    elif path == ("final_norm",):
      out[path] = [("model.norm.weight", tuple(shape))]
    elif path == ("lm_head",):
      out[path] = [("lm_head.weight", tuple(shape[::-1]))]
    else:
      raise AssertionError(f"unmapped parameter {path}")
  return out


# ---------------------------------------------------------------------------

def load_config(path: str | os.PathLike, *, dtype=jnp.float32,
                param_dtype=None, options=None) -> config_lib.ModelConfig:
  """Reads `config.json` with transformers' AutoConfig (local files only);
  `options` sets `config_lib.EXECUTION_FIELDS` (remat, attention, …)."""
  if storage.is_remote(path):
    with _staged(path) as local:
      return load_config(local, dtype=dtype, param_dtype=param_dtype,
                         options=options)
  path = pathlib.Path(path)
  if not path.is_dir():
    raise CheckpointError(f"{path}: checkpoint folder does not exist.")
  if not (path / "config.json").exists():
    raise CheckpointError(f"{path / 'config.json'}: missing.")
  try:
    raw = json.loads((path / "config.json").read_bytes())
  except (ValueError, RecursionError) as e:  # Incl. bad UTF-8.
    raise CheckpointError(f"{path / 'config.json'}: not valid JSON "
                          f"({str(e)[:200]}).") from None
  if not isinstance(raw, dict):
    raise CheckpointError(f"{path / 'config.json'}: a JSON "
                          f"{type(raw).__name__}, expected an object.")
  for field in ("vocab_size", "hidden_size", "intermediate_size",
                "num_hidden_layers", "num_attention_heads"):
    # transformers checks these are ints, not that they are positive; the
    # mapping divides by the head count.
    value = raw.get(field)
    if isinstance(value, int) and not isinstance(value, bool) and value < 1:
      raise CheckpointError(f"{path / 'config.json'}: {field}={value}, "
                            "expected a positive integer.")
  layers = raw.get("num_hidden_layers")
  if _is_count(layers) and layers > _MAX_LAYERS:
    # transformers builds per-layer lists (layer_types) of this length, which
    # for a garbled value takes minutes or all memory.
    raise CheckpointError(f"{path / 'config.json'}: num_hidden_layers="
                          f"{layers} is past the {_MAX_LAYERS} this loader "
                          "accepts.")
  import transformers  # pylint: disable=g-import-not-at-top
  try:
    hf_config = transformers.AutoConfig.from_pretrained(
        str(path), local_files_only=True)
  except Exception as e:  # transformers raises many types for bad configs.
    raise CheckpointError(f"{path / 'config.json'}: {e}") from e
  try:
    return config_lib.from_hf_config(hf_config, dtype=dtype,
                                     param_dtype=param_dtype, options=options)
  except (ValueError, TypeError, ArithmeticError) as e:
    # TypeError/ArithmeticError: a field transformers lets through that the
    # mapping then computes with (heads, head_dim).
    raise CheckpointError(f"{path / 'config.json'}: {e}") from e


def abstract_model(cfg: config_lib.ModelConfig):
  """(graphdef, abstract state) of a model, without allocating anything."""
  abstract = nnx.eval_shape(lambda: decoder.DecoderLM(cfg, rngs=nnx.Rngs(0)))
  return nnx.split(abstract)


def target_shardings(abs_state, mesh=None, rules=sharding.DEFAULT_RULES):
  """Shardings per parameter: by logical axes on `mesh`, else device 0."""
  if mesh is None:
    single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda v: v.replace(single), abs_state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))
  return sharding.state_shardings(abs_state, mesh, rules)


def init_sharded(cfg: config_lib.ModelConfig, mesh=None, *, seed: int = 0,
                 rules=sharding.DEFAULT_RULES) -> decoder.DecoderLM:
  """A randomly initialised model created directly in its target sharding.

  The initialiser is jitted with `out_shardings`, so each device only ever
  materialises its own shards.
  """
  graphdef, abs_state = abstract_model(cfg)
  shardings = target_shardings(abs_state, mesh, rules)

  def init():
    return nnx.state(decoder.DecoderLM(cfg, rngs=nnx.Rngs(seed)))

  state = jax.jit(init, out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def from_pretrained(path: str | os.PathLike, mesh=None, *, dtype=jnp.float32,
                    param_dtype=None, rules=sharding.DEFAULT_RULES,
                    options=None,
                    max_replicated_fraction: float | None = None
                    ) -> decoder.DecoderLM:
  """Loads an HF checkpoint folder into a `DecoderLM`, sharded on `mesh`.

  Args:
    path: local folder with `config.json` and `*.safetensors` (a sharded
      `model.safetensors.index.json` is followed). Nothing is downloaded.
    mesh: optional mesh from `sharding.make_mesh`; None = first device.
    dtype: compute dtype of activations.
    param_dtype: storage dtype of parameters (default: `dtype`).
    rules: logical→mesh rules (see `sharding.DEFAULT_RULES`).
    options: `config_lib.EXECUTION_FIELDS` values (remat policy, attention
      kernel, scan unroll), e.g. `config_blocks.Model.options()`.
    max_replicated_fraction: if set, fail when more than this fraction of
      parameter bytes would be replicated on the mesh.

  Raises:
    CheckpointError: missing folder/file, unsupported model type, missing
      tensor, a tensor config.json has no place for, shape mismatch, a
      header whose dtype, shape and byte range disagree, an index that
      disagrees with its shards, or a truncated file; it names the file or
      tensor, and is raised before any device memory is allocated.
  """
  if storage.is_remote(path):
    with _staged(path) as local:
      return from_pretrained(
          local, mesh, dtype=dtype, param_dtype=param_dtype, rules=rules,
          options=options, max_replicated_fraction=max_replicated_fraction)
  path = pathlib.Path(path)
  cfg = load_config(path, dtype=dtype, param_dtype=param_dtype,
                    options=options)
  table = _tensor_table(path)
  graphdef, abs_state = abstract_model(cfg)
  expected = _expected_tensors(cfg, abs_state)
  # Validate everything first: nothing half-loaded is ever returned.
  for hf_list in expected.values():
    for hf_name, hf_shape in hf_list:
      if hf_name not in table:
        raise CheckpointError(f"{path}: tensor {hf_name!r} is missing from "
                              "the checkpoint.")
      file, shape = table[hf_name]
      if tuple(shape) != tuple(hf_shape):
        raise CheckpointError(
            f"{file}: tensor {hf_name!r} has shape {list(shape)}, expected "
            f"{list(hf_shape)} from config.json.")
  # A tensor the model has no place for means config.json describes another
  # model (fewer layers, no biases, tied embeddings): loading would drop it.
  wanted = {name for hf_list in expected.values() for name, _ in hf_list}
  for name in sorted(set(table) - wanted):
    if name.endswith(".rotary_emb.inv_freq") or (
        name == "lm_head.weight" and cfg.tie_word_embeddings):
      continue  # Derived buffers and tied heads: transformers ignores both.
    raise CheckpointError(
        f"{table[name][0]}: tensor {name!r} has no place in the "
        f"{cfg.model_type} model config.json describes (num_hidden_layers="
        f"{cfg.num_layers}, tie_word_embeddings={cfg.tie_word_embeddings}, "
        f"biases: qkv={cfg.qkv_bias} o={cfg.o_bias} mlp={cfg.mlp_bias}).")

  shardings = target_shardings(abs_state, mesh, rules)
  if mesh is not None and max_replicated_fraction is not None:
    sharding.check_replication(abs_state, shardings, max_replicated_fraction)

  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  handles = {}

  def read(hf_name):
    file = table[hf_name][0]
    if file not in handles:
      handles[file] = safe_open(str(file), framework="np")
    return handles[file].get_tensor(hf_name)

  np_dtype = np.dtype(cfg.param_dtype)
  flat_abs = dict(nnx.to_flat_state(abs_state))
  flat_sh = dict(nnx.to_flat_state(shardings))
  loaded = []
  for param_path, hf_list in expected.items():
    var = flat_abs[param_path]
    shape = var.get_value().shape
    if param_path[0] == "layers":
      host = np.stack([_to_ours(param_path[1], read(n), shape[1:])
                       for n, _ in hf_list])
    elif param_path == ("lm_head",):
      host = read(hf_list[0][0]).T
    else:
      host = read(hf_list[0][0])
    host = np.ascontiguousarray(host.astype(np_dtype))
    arr = _place(host, flat_sh[param_path].get_value())
    loaded.append((param_path, var.replace(arr)))
    del host
  state = nnx.from_flat_state(loaded)
  return nnx.merge(graphdef, state)


def _place(host: np.ndarray, target) -> jax.Array:
  """Places a host array shard by shard (only the addressable shards)."""
  return jax.make_array_from_callback(host.shape, target,
                                      lambda index: host[index])


def _gather(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1 and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def save_pretrained(model: decoder.DecoderLM, path: str | os.PathLike, *,
                    dtype=None, max_shard_bytes: int = 2 * 1024**3,
                    tokenizer=None) -> pathlib.Path:
  """Writes `model` as an HF checkpoint folder (config.json + safetensors).

  Args:
    model: the model.
    path: output folder (created).
    dtype: tensor dtype on disk (default: the parameters' dtype).
    max_shard_bytes: split into several files with an index beyond this.
    tokenizer: optional transformers tokenizer saved alongside.

  Returns:
    The folder. In multi-process runs every process must call this (the
    parameters are gathered collectively); only process 0 writes.
  """
  if storage.is_remote(path):
    return _save_remote(model, path, dtype=dtype,
                        max_shard_bytes=max_shard_bytes, tokenizer=tokenizer)
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  cfg = model.cfg
  path = pathlib.Path(path)
  tensors: dict[str, np.ndarray] = {}
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  out_dtype = np.dtype(dtype or cfg.param_dtype)
  for param_path, var in flat:
    value = _gather(var.get_value()).astype(out_dtype)
    if param_path[0] == "layers":
      for i in range(cfg.num_layers):
        tensors[_layer_hf_name(param_path[1], i)] = np.ascontiguousarray(
            _to_hf(param_path[1], value[i]))
    elif param_path == ("embed",):
      tensors["model.embed_tokens.weight"] = value
    elif param_path == ("final_norm",):
      tensors["model.norm.weight"] = value
    elif param_path == ("lm_head",):
      tensors["lm_head.weight"] = np.ascontiguousarray(value.T)
  if jax.process_index() != 0:
    return path
  path.mkdir(parents=True, exist_ok=True)
  hf_cfg = config_lib.to_hf_config_dict(cfg.replace(param_dtype=out_dtype))
  (path / "config.json").write_text(json.dumps(hf_cfg, indent=2))
  shards, current, size = [], {}, 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = tensors[name]
    size += nbytes
  shards.append(current)
  for old in path.glob("*.safetensors"):
    old.unlink()
  (path / _SAFETENSORS_INDEX).unlink(missing_ok=True)
  meta = {"format": "pt"}
  if len(shards) == 1:
    save_file(shards[0], str(path / "model.safetensors"), metadata=meta)
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, str(path / fname), metadata=meta)
      weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.nbytes for t in tensors.values())
    (path / _SAFETENSORS_INDEX).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map},
        indent=2))
  if tokenizer is not None:
    tokenizer.save_pretrained(str(path))
  return path


def load_tokenizer(path: str | os.PathLike):
  """The checkpoint's tokenizer (with its chat template), local files only."""
  if storage.is_remote(path):
    with _staged(path) as local:
      return load_tokenizer(local)
  import transformers  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  if not path.is_dir():
    raise CheckpointError(f"{path}: tokenizer folder does not exist.")
  # A generic tokenizer (trained with `tokenizers`, saved as
  # TokenizersBackend/PreTrainedTokenizerFast) must load as exactly that:
  # AutoTokenizer would otherwise pick the class of config.json's model_type
  # (e.g. Qwen2Tokenizer) and re-split the text with that model's
  # pre-tokenizer, silently changing the token ids.
  generic = ("TokenizersBackend", "PreTrainedTokenizerFast")
  tok_cfg = path / "tokenizer_config.json"
  cls = transformers.AutoTokenizer
  try:
    if (tok_cfg.exists() and json.loads(tok_cfg.read_text()).get(
        "tokenizer_class") in generic):
      cls = transformers.PreTrainedTokenizerFast
    return cls.from_pretrained(str(path), local_files_only=True)
  except (OSError, ValueError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: cannot load a tokenizer ({e}).") from e


# ---------------------------------------------------------------------------
# Remote folders (gs://...).

@contextlib.contextmanager
def _staged(path):
  """A local copy of remote folder `path`; errors name `path`, not the copy."""
  if not storage.isdir(path):
    raise CheckpointError(f"{path}: checkpoint folder does not exist.")
  with storage.local_copy(path) as local:
    try:
      yield local
    except CheckpointError as e:
      raise CheckpointError(str(e).replace(str(local), str(path))) from None


def _save_remote(model, path, *, dtype, max_shard_bytes, tokenizer):
  """`save_pretrained` to a bucket: written locally, then uploaded."""
  out = storage.path(path)
  with tempfile.TemporaryDirectory(prefix="jaxrl_ent_export_") as tmp:
    save_pretrained(model, tmp, dtype=dtype, max_shard_bytes=max_shard_bytes,
                    tokenizer=tokenizer)
    if jax.process_index() == 0:
      # The folder stops being a checkpoint first, then loses stale shards.
      if out.exists():
        storage.remove_files([out / "config.json"])
        storage.remove_files(list(out.glob("*.safetensors")) +
                             [out / _SAFETENSORS_INDEX])
      storage.upload_dir(tmp, out, last=("config.json",))
  return out
