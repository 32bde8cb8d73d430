"""LoRA and QLoRA on the stacked decoder weights.

A LoRA model is a `DecoderLM` whose `layers` module gained, for each target
projection `w` [L, *in, *out], two trainable factors of the `Adapter`
variable type,

  w_lora_a [L, *in, r]   (PEFT's Kaiming-uniform init)
  w_lora_b [L, r, *out]  (zeros: the model is the base model exactly at init)

and a static `LoraSpec` (`layers.lora`). The effective weight of layer l is

  W_l + (alpha / r) · A_l @ B_l,

computed per layer inside the training scan (one layer's merged weight is
live at a time) and once per rollout in `DecoderLM.decode_weights`, with the
same ops in both, so the rollout samples from exactly the function training
differentiates. The merged form costs the base's weight-gradient matmul in
the backward pass (dW_eff, one layer at a time) that an unmerged
`x@W + s·(x@A)@B` would avoid; it was chosen for the exact rollout/train
match and because the decode path (which works on merged, unstacked
weights) then needs nothing LoRA-specific.

The base weights stay `nnx.Param` (or become `QuantizedBase` with QLoRA)
and `rl.state.split_model` puts them with the non-trainable rest: the
optimizer, `TrainState.params`, the entropy controllers and the exact
dynamics see only the adapters. The KL reference policy is the same model
with the initial (B = 0) adapters, i.e. the base — no second copy of the
weights.

Why not `qwix.apply_lora_to_model`: qwix intercepts `dot_general`/`einsum`
inside a module and finds the weight operand by identity among the
module's own parameters (`qwix._src.utils.flax_util.find_param`), creating
per-call adapters lazily. Our projections run inside `lax.scan` over
slices of stacked `[L, ...]` parameters, so the operand is a scan slice
that matches no parameter (no adapter would be created), and adapters
must be stacked `[L, ...]` to be scanned anyway. The quantisation of the
QLoRA base does come from qwix (`qwix.quantize`/`qwix.dequantize`: int8
absmax, or NF4 with 64-wide blocks along the input dimension as in QLoRA).

Axis legend: L layers, r LoRA rank; in/out are a projection's input and
output axes (`D` → `N, H` for q, `N, H` → `D` for o, `D` → `F` for gate/up).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Target module (config / PEFT name) -> our stacked parameter.
TARGETS = {"q_proj": "q_w", "k_proj": "k_w", "v_proj": "v_w",
           "o_proj": "o_w", "gate_proj": "gate_w", "up_proj": "up_w",
           "down_proj": "down_w"}
ALL_TARGETS = tuple(TARGETS)
# Number of per-layer input axes of each projection (the rest are outputs).
_IN_AXES = {"q_w": 1, "k_w": 1, "v_w": 1, "o_w": 2, "gate_w": 1, "up_w": 1,
            "down_w": 1}
QUANT = ("none", "int8", "nf4")
_QTYPES = {"int8": jnp.int8, "nf4": "nf4"}
RANK_AXIS = "lora_rank"


class Adapter(nnx.Variable):
  """A trainable LoRA factor (not an `nnx.Param`: see `rl.state.split_model`)."""


class QuantizedBase(nnx.Variable):
  """A frozen quantised base weight: `<name>_qvalue` and `<name>_scale`."""


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """Static LoRA settings stored on the model (hashable: part of the graph).

  Attributes:
    rank: r.
    alpha: scaling numerator; the update is (alpha / rank) · A @ B.
    targets: PEFT module names (`TARGETS` keys) that get adapters.
    quant: base weights' storage: "none", "int8" or "nf4" (QLoRA).
    block: NF4 block size along the input dimension.
    quantized: stacked names stored as `QuantizedBase` (all seven
      projections under QLoRA, whether targeted or not).
  """
  rank: int
  alpha: float
  targets: tuple[str, ...]
  quant: str = "none"
  block: int = 64
  quantized: tuple[str, ...] = ()

  @property
  def scale(self) -> float:
    return float(self.alpha) / self.rank

  @property
  def weights(self) -> tuple[str, ...]:
    return tuple(TARGETS[t] for t in self.targets)


def spec_of(model) -> LoraSpec | None:
  """The model's `LoraSpec`, or None for a plain model."""
  return getattr(model.layers, "lora", None)


# ---------------------------------------------------------------------------
# Quantisation (qwix).

def quantize(w, quant: str, block: int = 64, n_in: int = 1):
  """(qvalue, scale) of a stacked weight [L, *in, *out] with qwix.

  int8: absmax per layer and output channel (over the whole input). NF4:
  per block of `block` rows of the last input axis (QLoRA's 64), per layer,
  output channel and any other input axis (o's heads); a last input axis
  that `block` does not split gets one scale per channel.
  """
  import qwix  # pylint: disable=g-import-not-at-top
  last = n_in  # index of the last input axis in [L, *in, *out]
  if quant == "int8":
    channel = (0,) + tuple(range(1 + n_in, w.ndim))
    tiled = None
  else:
    channel = tuple(i for i in range(w.ndim) if i != last)
    d = w.shape[last]
    tiled = {last: block} if d % block == 0 and d > block else None
  q = qwix.quantize(w.astype(jnp.float32), _QTYPES[quant],
                    channelwise_axes=channel, tiled_axes=tiled)
  return q.qvalue, q.scale


def dequantize(qvalue, scale, quant: str, dtype):
  """The weight back from `quantize`'s (qvalue, scale), in `dtype`.

  NF4 is decoded here rather than by `qwix.dequantize`, which looks the
  16-entry table up with a gather over every weight: XLA:TPU compiles that
  gather slowly and into huge code (one [2, 1536, 8960] weight: 86 s and
  29 MB of code for v5e; the Qwen2.5-1.5B QLoRA job did not finish in
  30 min and took 22 GB of host memory). A 4-level select tree over the
  code's bits is 15 elementwise selects that fuse into the consumer. Same
  values as qwix's (tests/models/lora_test.py).
  """
  if quant == "nf4":
    return _times_scale(_nf4_values(qvalue), scale).astype(dtype)
  import qwix  # pylint: disable=g-import-not-at-top
  q = qwix.QArray(qvalue, scale, None, _QTYPES[quant])
  return qwix.dequantize(q).astype(dtype)


# The NF4 code book (QLoRA, arXiv:2305.14314 Appendix E), as qwix stores it
# (`qwix._src.core.numerics.get_nf4_buckets`; tests/models/lora_test.py
# checks the decode against qwix's bit for bit). Python floats, not a jnp
# array: the AOT check traces with compile-only TPU devices, on which no
# constant array can be made.
_NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495,
        0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
        0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
        0.7229568362236023, 1.0)


def _nf4_values(codes):
  """float32 NF4 value of each 4-bit code, without a gather."""
  c = codes.astype(jnp.uint8)
  level = list(_NF4)
  for bit in range(4):  # Bit 0 picks within pairs, bit 3 between halves.
    on = ((c >> bit) & 1).astype(bool)
    level = [jnp.where(on, jnp.float32(level[2 * k + 1]),
                       jnp.float32(level[2 * k]))
             for k in range(len(level) // 2)]
  return level[0]


def _times_scale(values, scale):
  """`values * scale` with qwix's broadcast: a scale axis of size 1 or of
  the value's size broadcasts; a smaller one is one scale per tile."""
  shape, sshape = [], []
  for d, s in zip(values.shape, scale.shape):
    if s in (1, d):
      shape.append(d)
      sshape.append(s)
    else:
      shape += [s, d // s]
      sshape += [s, 1]
  return (values.reshape(shape) * scale.astype(jnp.float32).reshape(sshape)
          ).reshape(values.shape)


def _scale_axes(axes, scale_shape, w_shape):
  """A scale keeps its weight's logical axis on every dimension it did not
  reduce to 1 (blocked dimensions too: the sharding rules leave one the
  mesh does not divide whole)."""
  del w_shape
  return tuple(a if s > 1 else None for a, s in zip(axes, scale_shape))


# ---------------------------------------------------------------------------
# Building a LoRA model.

def make_spec(rank: int = 8, alpha: float = 16.0, targets=ALL_TARGETS,
              quant: str = "none", block: int = 64) -> LoraSpec:
  targets = tuple(targets)
  bad = [t for t in targets if t not in TARGETS]
  if bad or not targets:
    raise ValueError(f"lora.targets {list(targets)}: expected a non-empty "
                     f"subset of {list(TARGETS)}.")
  if quant not in QUANT:
    raise ValueError(f"lora.quant={quant!r}; expected one of {QUANT}.")
  if int(rank) < 1:
    raise ValueError(f"lora.rank={rank!r} must be >= 1.")
  quantized = tuple(TARGETS.values()) if quant != "none" else ()
  return LoraSpec(rank=int(rank), alpha=float(alpha), targets=targets,
                  quant=quant, block=int(block), quantized=quantized)


def _adapter_axes(axes, n_in):
  return (axes[0],) + tuple(axes[1:1 + n_in]) + (RANK_AXIS,), (
      axes[0], RANK_AXIS) + tuple(axes[1 + n_in:])


def add_lora(model, spec: LoraSpec, *, seed: int = 0):
  """Adds adapters (and quantises the base under QLoRA) to `model` in place.

  Returns the model. Run it under `jax.jit` with sharded outputs for large
  models (`lora_sharded`); here every array is created where its inputs are.
  """
  if spec_of(model) is not None:
    raise ValueError("the model already has LoRA adapters.")
  layers = model.layers
  key = jax.random.key(seed)
  for i, name in enumerate(spec.weights):
    w = getattr(layers, name)
    axes = w.get_metadata().get("logical_axes")
    value = w[...]
    n_in = _IN_AXES[name]
    in_shape = value.shape[1:1 + n_in]
    out_shape = value.shape[1 + n_in:]
    fan_in = int(np.prod(in_shape))
    # PEFT: kaiming_uniform_(a=sqrt(5)) on lora_A, i.e. U(±1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    a = jax.random.uniform(jax.random.fold_in(key, i),
                           (value.shape[0],) + in_shape + (spec.rank,),
                           jnp.float32, -bound, bound)
    b = jnp.zeros((value.shape[0], spec.rank) + out_shape, jnp.float32)
    a_axes, b_axes = _adapter_axes(axes, n_in)
    setattr(layers, name + "_lora_a", Adapter(a, logical_axes=a_axes))
    setattr(layers, name + "_lora_b", Adapter(b, logical_axes=b_axes))
  for name in spec.quantized:
    w = getattr(layers, name)
    axes = w.get_metadata().get("logical_axes")
    qvalue, scale = quantize(w[...], spec.quant, spec.block, _IN_AXES[name])
    delattr(layers, name)
    setattr(layers, name + "_qvalue", QuantizedBase(qvalue,
                                                    logical_axes=axes))
    setattr(layers, name + "_scale", QuantizedBase(
        scale, logical_axes=_scale_axes(axes, scale.shape, qvalue.shape)))
  layers.lora = spec
  return model


def lora_sharded(model, spec: LoraSpec, mesh=None, *, seed: int = 0,
                 rules=None):
  """`add_lora` as one jitted program whose outputs follow the sharding
  rules (logical axes -> mesh) on `mesh`; returns the LoRA model."""
  from jaxrl_ent import sharding  # pylint: disable=g-import-not-at-top
  graphdef, state = nnx.split(model)

  def build(state):
    return add_lora(nnx.merge(graphdef, state), spec, seed=seed)

  new_graphdef, abs_state = nnx.split(nnx.eval_shape(build, state))
  shardings = (None if mesh is None else sharding.state_shardings(
      abs_state, mesh, rules or sharding.DEFAULT_RULES))
  new_state = jax.jit(lambda s: nnx.state(build(s)),
                      out_shardings=shardings)(state)
  return nnx.merge(new_graphdef, new_state)


# ---------------------------------------------------------------------------
# The forward pass (used by `decoder`).

def stacked_inputs(layers, names, dtype) -> dict:
  """The arrays the layer scan slices: base weights (in `dtype`, or their
  quantised parts), adapters; one dict, stacked on [L, ...]."""
  spec = getattr(layers, "lora", None)
  if spec is None:
    return {n: getattr(layers, n)[...].astype(dtype) for n in names}
  out = {}
  for n in names:
    if n in spec.quantized:
      out[n + "_qvalue"] = getattr(layers, n + "_qvalue")[...]
      out[n + "_scale"] = getattr(layers, n + "_scale")[...]
    else:
      out[n] = getattr(layers, n)[...].astype(dtype)
  for n in spec.weights:
    out[n + "_lora_a"] = getattr(layers, n + "_lora_a")[...]
    out[n + "_lora_b"] = getattr(layers, n + "_lora_b")[...]
  return out


def delta(name: str, a, b, scale: float):
  """(alpha/r) · A @ B in float32 for one layer: A [*in, r], B [r, *out]."""
  n_in = _IN_AXES[name]
  in_shape, out_shape = a.shape[:n_in], b.shape[1:]
  d = jnp.dot(a.reshape(-1, a.shape[-1]).astype(jnp.float32),
              b.reshape(b.shape[0], -1).astype(jnp.float32),
              precision=jax.lax.Precision.HIGHEST)
  return (scale * d).reshape(in_shape + out_shape)


def layer_weights(spec: LoraSpec | None, raw: dict, dtype) -> dict:
  """One layer's effective weights from a slice of `stacked_inputs`."""
  if spec is None:
    return raw
  p = {}
  for k, v in raw.items():
    if k.endswith(("_lora_a", "_lora_b", "_scale")):
      continue
    if k.endswith("_qvalue"):
      n = k[:-len("_qvalue")]
      p[n] = dequantize(v, raw[n + "_scale"], spec.quant, dtype)
    else:
      p[k] = v
  for n in spec.weights:
    base = p[n]
    p[n] = (base.astype(jnp.float32) + delta(
        n, raw[n + "_lora_a"], raw[n + "_lora_b"], spec.scale)).astype(dtype)
  return p


# ---------------------------------------------------------------------------
# Merging and export.

def merged_weights(model, dtype=None) -> dict:
  """name -> stacked [L, ...] effective weight (base + adapter, dequantised)."""
  from jaxrl_ent.models import decoder  # pylint: disable=g-import-not-at-top
  cfg = model.cfg
  dtype = dtype or cfg.param_dtype
  spec = spec_of(model)
  names = decoder.layer_param_names(cfg)
  raw = stacked_inputs(model.layers, names, jnp.float32)
  merged = jax.vmap(lambda r: layer_weights(spec, r, jnp.float32))(raw)
  return {n: merged[n].astype(dtype) for n in names}


def merge(model):
  """A plain `DecoderLM` (no adapters) whose weights are the effective ones
  of `model` (in the base's parameter dtype)."""
  from jaxrl_ent.models import decoder  # pylint: disable=g-import-not-at-top
  spec = spec_of(model)
  if spec is None:
    return model
  cfg = model.cfg
  plain = nnx.eval_shape(lambda: decoder.DecoderLM(cfg, rngs=nnx.Rngs(0)))
  graphdef, abs_state = nnx.split(plain)
  weights = merged_weights(model, cfg.param_dtype)
  flat = []
  for path, var in nnx.to_flat_state(abs_state):
    if path[0] == "layers":
      value = (weights[path[1]] if path[1] in weights
               else getattr(model.layers, path[1])[...])
    else:
      value = getattr(model, path[0])[...]
    flat.append((path, var.replace(value)))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def base_model(model):
  """A plain `DecoderLM` with the frozen base weights (dequantised under
  QLoRA): the model the adapters are relative to."""
  return merge(zeroed(model))


def zeroed(model):
  """A copy of `model` whose B factors are zero (the base function)."""
  graphdef, state = nnx.split(model)
  flat = []
  for path, var in nnx.to_flat_state(state):
    if path[-1].endswith("_lora_b"):
      var = var.replace(jnp.zeros_like(var[...]))
    flat.append((path, var))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def peft_tensors(model) -> dict[str, np.ndarray]:
  """The adapters as PEFT `adapter_model.safetensors` tensors (float32).

  PEFT computes W_hf + s · B_peft @ A_peft with W_hf [out, in]; ours is
  W [in, out] + s · A @ B, so lora_A.weight = Aᵀ [r, in] and
  lora_B.weight = Bᵀ [out, r] (inputs and outputs flattened as in
  `hf_io._to_hf`).
  """
  spec = spec_of(model)
  out = {}
  for target in spec.targets:
    n = TARGETS[target]
    a = np.asarray(jax.device_get(getattr(model.layers, n + "_lora_a")[...]),
                   np.float32)
    b = np.asarray(jax.device_get(getattr(model.layers, n + "_lora_b")[...]),
                   np.float32)
    block = "self_attn" if target in ("q_proj", "k_proj", "v_proj",
                                      "o_proj") else "mlp"
    for i in range(a.shape[0]):
      prefix = f"base_model.model.model.layers.{i}.{block}.{target}"
      out[prefix + ".lora_A.weight"] = np.ascontiguousarray(
          a[i].reshape(-1, spec.rank).T)
      out[prefix + ".lora_B.weight"] = np.ascontiguousarray(
          b[i].reshape(spec.rank, -1).T)
  return out


def peft_config(spec: LoraSpec, base_path: str = "") -> dict:
  """PEFT `adapter_config.json` content."""
  return {"peft_type": "LORA", "task_type": "CAUSAL_LM",
          "base_model_name_or_path": str(base_path), "r": spec.rank,
          "lora_alpha": spec.alpha, "lora_dropout": 0.0,
          "target_modules": list(spec.targets), "bias": "none",
          "fan_in_fan_out": False, "use_rslora": False,
          "init_lora_weights": True, "modules_to_save": None}


def save_peft(model, path, *, base_path: str = ""):
  """Writes a PEFT adapter folder (`adapter_config.json`,
  `adapter_model.safetensors`); returns the path. Process 0 writes."""
  import json  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  spec = spec_of(model)
  if spec is None:
    raise ValueError("the model has no LoRA adapters to export.")
  tensors = peft_tensors(model)
  path = pathlib.Path(path)
  if jax.process_index() != 0:
    return path
  path.mkdir(parents=True, exist_ok=True)
  (path / "adapter_config.json").write_text(json.dumps(
      peft_config(spec, base_path), indent=2))
  save_file(tensors, str(path / "adapter_model.safetensors"),
            metadata={"format": "pt"})
  return path


def num_adapter_params(model) -> int:
  state = nnx.state(model, Adapter)
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))


def verify_peft(model, path) -> bool:
  """Reads `path`'s adapter tensors back; raises unless bit-identical."""
  import pathlib  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  want = peft_tensors(model)
  if jax.process_index() != 0:
    return True
  have = load_file(str(pathlib.Path(path) / "adapter_model.safetensors"))
  bad = sorted(k for k in want if k not in have
               or not np.array_equal(have[k], want[k]))
  if bad or set(have) != set(want):
    raise RuntimeError(f"{path}: the adapter tensors do not read back "
                       f"identically: {bad or sorted(set(have) ^ set(want))}")
  return True
