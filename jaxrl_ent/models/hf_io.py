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
import os
import pathlib
import struct
import tempfile
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_ent import sharding
from jaxrl_ent import storage
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
  return _to_hf(name, np.empty(shape, np.uint8)).shape


# ---------------------------------------------------------------------------
# safetensors headers, read and checked without loading any data.

def _read_header(file: pathlib.Path) -> dict:
  """Tensor table of a safetensors file, checking that the file is complete."""
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
    try:
      header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise CheckpointError(f"{file}: corrupt safetensors header ({e}).") from e
  header.pop("__metadata__", None)
  end = max((t["data_offsets"][1] for t in header.values()), default=0)
  if 8 + n + end > size:
    raise CheckpointError(
        f"{file}: truncated safetensors file: tensors need {8 + n + end} "
        f"bytes but the file has {size}.")
  return header


def _tensor_table(path: pathlib.Path) -> dict[str, tuple[pathlib.Path, tuple]]:
  """Maps every tensor name to (file, shape), following a sharded index."""
  index = path / _SAFETENSORS_INDEX
  if index.exists():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise CheckpointError(f"{index}: not a valid safetensors index ({e}).")
    files = sorted(set(weight_map.values()))
  else:
    files = sorted(p.name for p in path.glob("*.safetensors"))
    weight_map = None
  if not files:
    raise CheckpointError(f"{path}: no *.safetensors files (and no "
                          f"{_SAFETENSORS_INDEX}).")
  table = {}
  for fname in files:
    file = path / fname
    if not file.exists():
      raise CheckpointError(f"{file}: listed in {_SAFETENSORS_INDEX} but "
                            "missing.")
    for name, info in _read_header(file).items():
      if weight_map is not None and weight_map.get(name) != fname:
        continue
      table[name] = (file, tuple(info["shape"]))
  return table


def _expected_tensors(cfg: config_lib.ModelConfig, abs_state):
  """[(param path, [(hf name, hf shape), ...] per layer or one)]."""
  out = {}
  flat = nnx.to_flat_state(abs_state)
  for path, var in flat:
    shape = var.get_value().shape
    if path[0] == "layers":
      name = path[1]
      per = [(_layer_hf_name(name, i), _hf_shape(name, shape[1:]))
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
                param_dtype=None, remat: bool = False
                ) -> config_lib.ModelConfig:
  """Reads `config.json` with transformers' AutoConfig (local files only)."""
  if storage.is_remote(path):
    with _staged(path) as local:
      return load_config(local, dtype=dtype, param_dtype=param_dtype,
                         remat=remat)
  path = pathlib.Path(path)
  if not path.is_dir():
    raise CheckpointError(f"{path}: checkpoint folder does not exist.")
  if not (path / "config.json").exists():
    raise CheckpointError(f"{path / 'config.json'}: missing.")
  import transformers  # pylint: disable=g-import-not-at-top
  try:
    hf_config = transformers.AutoConfig.from_pretrained(
        str(path), local_files_only=True)
  except Exception as e:  # transformers raises many types for bad configs.
    raise CheckpointError(f"{path / 'config.json'}: {e}") from e
  try:
    return config_lib.from_hf_config(hf_config, dtype=dtype,
                                     param_dtype=param_dtype, remat=remat)
  except ValueError as e:
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
                    remat: bool = False,
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
    remat: rematerialise layers in the backward pass.
    max_replicated_fraction: if set, fail when more than this fraction of
      parameter bytes would be replicated on the mesh.

  Raises:
    CheckpointError: missing folder/file, unsupported model type, missing
      tensor, shape mismatch or truncated file; it names the file or tensor,
      and is raised before any device memory is allocated.
  """
  if storage.is_remote(path):
    with _staged(path) as local:
      return from_pretrained(
          local, mesh, dtype=dtype, param_dtype=param_dtype, rules=rules,
          remat=remat, max_replicated_fraction=max_replicated_fraction)
  path = pathlib.Path(path)
  cfg = load_config(path, dtype=dtype, param_dtype=param_dtype, remat=remat)
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
