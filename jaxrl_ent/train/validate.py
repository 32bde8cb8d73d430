"""Checks an RL training config in one pass, before anything expensive.

`validate_config(config)` is the first thing `launch/train.py` and
`rl_loop.train_and_evaluate` do: before the policy is built, the supervised
warm start runs or anything is jitted. It reads the config (and, cheaply, the
file system for `model_path`/data paths) and raises ONE `ConfigError` that
lists every problem it found, each naming the dotted field, the bad value and
what is allowed — so a typo in a launch command costs seconds, not a
compilation (or a pod-slice allocation) per mistake.

Every field of the shipped configs is checked for type and range whether or
not the selected method reads it (`entropy.coef=-0.5` is refused with
`entropy.method=none` too); `unchecked_fields(config)` lists the leaves no
check covers, and a test keeps it empty for `configs/grpo_tiny.py`. Fields
this module does not know (added by newer code) are left alone.
`ignored_field_warnings(config, fields)` names overridden fields that the
selected methods do not read, and which method would.

The kernels and factories keep their own checks (they are also called
without a config); this module mirrors them with config field names, and adds
what only the whole config can see: the mesh against the device count, batch
divisibility across data parallelism / mini- and micro-batches, and prompt +
completion length against the model's context.

Unknown keys and unparseable values given as `--config.x=y` are refused
earlier, in one line, by `jaxrl_ent.launch_flags` (every launcher parses its
flags with it); the type checks here catch configs built or edited in Python.
"""

import inspect
import json
import math
import os
import re
import string

import jax

from jaxrl_ent import sharding
from jaxrl_ent.aot import chips
from jaxrl_ent.data import records
from jaxrl_ent.data import tokenization
from jaxrl_ent.models import config as config_lib
from jaxrl_ent.models import decode_attention
from jaxrl_ent.models import lora as lora_lib
from jaxrl_ent.rewards import registry as reward_registry
from jaxrl_ent.rewards import scoring
from jaxrl_ent.rewards import tasks
from jaxrl_ent.rl import critic as critic_lib
from jaxrl_ent.rl import hparams as hparams_lib
from jaxrl_ent.rl import kl
from jaxrl_ent.rl import registry
from jaxrl_ent.train import checker
from jaxrl_ent.train import factories
from jaxrl_ent.train import replicas

ConfigError = checker.ConfigError
_MISSING = checker.MISSING
_Checker = checker.Checker
_get = checker.get
_is_int = checker.is_int

_LR_SCHEDULES = hparams_lib.LR_SCHEDULES
# Allowed values that their owners check inline rather than export
# (policy_setup, controllers, reweighting); every other list is imported
# from its owner, so it cannot drift.
_DTYPES = ("float32", "bfloat16")
_ADAPTIVE_RULES = ("bang_bang", "lagrangian")
_ADAPTIVE_MEASURES = ("old_logp", "entropy")
_STEER_MODES = ("exponential", "linear")
_STEER_SCORES = ("reference", "exact")
# models/tiny_hf.tiny_tokenizer: 256 byte symbols + 4 special tokens is the
# smallest vocabulary it builds (a smaller request silently gives 260).
_MIN_TOKENIZER_VOCAB = 260
_MAX_TOKENIZER_VOCAB = 1 << 20

ENTROPY_METHODS = getattr(factories, "ENTROPY_METHODS", ())
ANNEALS = getattr(factories, "ANNEALS", ())
# The methods whose coefficient `rl.hparams.annealed` schedules.
ANNEALED_METHODS = tuple(hparams_lib.ANNEALED)


def _entropy_readers() -> dict[str, tuple[str, ...]]:
  """entropy.<field> -> the methods that read it: the coefficients each
  method keeps as hyperparameters (`rl.hparams.ENTROPY_HPARAMS`), its
  structural choices, and the anneal kind."""
  readers = {}
  structural = {"adaptive_entropy": ("rule", "measure"),
                "steer": ("steer_mode", "steer_score")}
  for method, fields in hparams_lib.ENTROPY_HPARAMS.items():
    for field in fields + structural.get(method, ()):
      readers.setdefault(field, ())
      readers[field] += (method,)
  readers["anneal"] = ANNEALED_METHODS
  return readers


ENTROPY_READERS = _entropy_readers()
# entropy.anneal_<x> -> the `entropy.anneal` kinds that read it.
ANNEAL_READERS = {
    "anneal_steps": ("linear", "cosine"), "anneal_end": ("linear", "cosine"),
    "anneal_tau": ("inverse_power",), "anneal_power": ("inverse_power",),
}


# ------------------------------------------------------------------ sections
def _check_mesh(c: _Checker, num_devices: int):
  mesh = c.value("mesh")
  if mesh is _MISSING:
    return None
  if not hasattr(mesh, "items"):
    c.add("mesh", f"got {mesh!r}; allowed: a dict of axis sizes over "
          f"{sharding.MESH_AXES}")
    return None
  sizes = dict.fromkeys(sharding.MESH_AXES, 1)
  ok = True
  for name, size in mesh.items():
    if name not in sharding.MESH_AXES:
      c.add(f"mesh.{name}", f"unknown mesh axis; allowed axes: "
            f"{sharding.MESH_AXES}")
      ok = False
    elif not _is_int(size) or (size < 1 and size != -1):
      c.add(f"mesh.{name}", f"got {size!r}; allowed: a positive int or -1 "
            "(all remaining devices)")
      ok = False
    else:
      sizes[name] = int(size)
  if not ok:
    return None
  auto = [n for n, s in sizes.items() if s == -1]
  fixed = math.prod(s for s in sizes.values() if s != -1)
  shown = ", ".join(f"{k}={v}" for k, v in sizes.items())
  if len(auto) > 1:
    c.add("mesh", f"{shown}: {len(auto)} axes are -1 ({auto}); allowed: at "
          "most one axis set to -1")
    return None
  if auto:
    if num_devices % fixed:
      c.add("mesh", f"{shown}: the fixed axes multiply to {fixed}, which does "
            f"not divide the {num_devices} device(s); allowed: sizes whose "
            f"product divides {num_devices}")
      return None
    sizes[auto[0]] = num_devices // fixed
  elif fixed != num_devices:
    c.add("mesh", f"{shown} multiply to {fixed} but there are {num_devices} "
          f"devices; allowed: sizes multiplying to {num_devices}, or one "
          "axis set to -1")
    return None
  return sizes


def _data_parallel_size(c: _Checker, sizes) -> int | None:
  """Product of the mesh axes the batch (`act_batch`) is sharded over."""
  rules = c.value("sharding.rules", required=False)
  if rules not in (_MISSING, None) and not hasattr(rules, "keys"):
    c.add("sharding.rules", f"{rules!r}; allowed: a mapping logical axis -> "
          f"mesh axes in {sharding.MESH_AXES} (or None)")
    return None
  try:
    merged = dict(sharding.merge_rules(
        dict(rules) if rules not in (_MISSING, None) else None))
  except (ValueError, TypeError) as e:
    c.add("sharding.rules", f"{e}; allowed: logical axis -> mesh axes in "
          f"{sharding.MESH_AXES} (or None)")
    return None
  axes = merged.get("act_batch")
  axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
  return math.prod(sizes.get(a, 1) for a in axes)


def _check_model(c: _Checker) -> int | None:
  """Model fields; returns the context length when it can be known."""
  c.str_("model.dtype", choices=_DTYPES, required=False)
  c.bool_("model.remat", required=False)
  model_path = c.str_("model_path")
  # The tiny model's dimensions are checked even when a checkpoint's
  # config.json decides (ignored_field_warnings says so for overrides).
  dims = {n: c.int_(f"model.{n}", low=1, required=not model_path) for n in (
      "hidden_size", "intermediate_size", "num_layers", "num_heads",
      "num_kv_heads", "max_position_embeddings")}
  c.bool_("model.tie_word_embeddings", required=False)
  # Fields of the TPU ahead-of-time configs (configs/tpu_grpo.py), which
  # describe the checkpoint's model without reading it.
  c.str_("model.model_type", choices=config_lib.SUPPORTED_MODEL_TYPES,
         required=False)
  c.str_("model.param_dtype", choices=_DTYPES, required=False)
  for n in ("head_dim", "vocab_size"):
    c.int_(f"model.{n}", low=1, required=False)
  for n in ("rms_norm_eps", "rope_theta"):
    c.num(f"model.{n}", low=0.0, low_open=True, required=False)
  c.str_("job", required=False)
  topology = c.str_("topology", required=False, nonempty=True)
  if isinstance(topology, str) and topology:
    try:
      chips.parse_topology(topology, field="topology")
    except ValueError as e:
      c.add("topology", str(e))
  h, nh, nkv = dims["hidden_size"], dims["num_heads"], dims["num_kv_heads"]
  if _MISSING not in (h, nh) and h % nh:
    c.add("model.hidden_size", f"{h} is not divisible by model.num_heads="
          f"{nh}; allowed: a multiple of num_heads")
  if _MISSING not in (nh, nkv) and nh % nkv:
    c.add("model.num_kv_heads", f"{nkv} does not divide model.num_heads="
          f"{nh}; allowed: a divisor of num_heads")
  if model_path not in (_MISSING, ""):
    if "://" in model_path:  # Remote folders are checked when loaded.
      return None
    cfg_file = os.path.join(model_path, "config.json")
    if not os.path.isfile(cfg_file):
      c.add("model_path", f"{model_path!r} has no config.json; allowed: a "
            "local Hugging Face checkpoint folder")
      return None
    try:
      with open(cfg_file, encoding="utf-8") as f:
        hf = json.load(f)
      context = hf.get("max_position_embeddings")
    except (OSError, ValueError, AttributeError, RecursionError) as e:
      c.add("model_path", f"cannot read {cfg_file} ({e}); allowed: a "
            "folder with a valid Hugging Face config.json")
      return None
    return int(context) if _is_int(context) else None
  if model_path == "" and _get(c.config, "data.task") == "":
    c.add("model_path", "empty and data.task is empty; allowed: a local HF "
          "checkpoint folder, or a synthetic data.task to build a tiny "
          "model for")
    return None
  ctx = dims["max_position_embeddings"]
  return None if ctx is _MISSING else ctx


def _check_paths(c: _Checker, field: str, task):
  paths = c.value(field)
  if paths is _MISSING:
    return
  if isinstance(paths, str):
    paths = [paths] if paths else []
  elif not (isinstance(paths, (list, tuple)) and
            all(isinstance(p, str) and p for p in paths)):
    c.add(field, f"got {paths!r}; allowed: a path/glob or a list of them")
    return
  if task not in (_MISSING, "") and paths:
    c.add(field, f"set together with data.task={task!r}; allowed: exactly "
          "one source, prompt files or a synthetic task")
  elif task == "" and not paths:
    c.add(field, "empty and data.task is empty; allowed: JSONL/Parquet "
          "paths, or set data.task")
  elif paths and not any("://" in p for p in paths):
    try:
      records.expand_paths(paths)
    except (FileNotFoundError, OSError, ValueError) as e:
      c.add(field, f"{e}; allowed: existing files, or glob patterns "
            "that match some")


def _check_knob_types(c: _Checker, task: str, kwargs: dict):
  """Each difficulty knob has the type of the task's default for it."""
  params = inspect.signature(tasks.TASKS[task].make).parameters
  for name, value in kwargs.items():
    if name not in params or params[name].default is inspect.Parameter.empty:
      continue  # Unknown knobs: tasks.generate names them below.
    default = params[name].default
    field = f"data.task_kwargs.{name}"
    if isinstance(default, bool) or isinstance(value, bool):
      ok = isinstance(value, bool) == isinstance(default, bool)
    elif isinstance(default, float):
      ok = checker.is_num(value) and math.isfinite(value)
    elif isinstance(default, (tuple, list)):
      ok = isinstance(value, (tuple, list, str))
    else:
      ok = isinstance(value, type(default))
    if not ok:
      c.add(field, f"got {value!r} ({type(value).__name__}); allowed: a "
            f"{type(default).__name__} like the task's default {default!r}")


def _check_data(c: _Checker):
  task = c.str_("data.task", choices=("",) + tuple(sorted(tasks.TASKS)))
  for field in ("data.train_paths", "data.eval_paths"):
    _check_paths(c, field, task)
  c.int_("data.task_size", low=1)
  seed = c.int_("data.task_seed")
  kwargs = c.value("data.task_kwargs", required=False)
  if kwargs not in (_MISSING, None) and not hasattr(kwargs, "keys"):
    c.add("data.task_kwargs", f"got {kwargs!r}; allowed: a dict of the "
          "task's difficulty knobs")
  elif task not in (_MISSING, "") and kwargs is not _MISSING and (
      seed is not _MISSING):
    _check_knob_types(c, task, dict(kwargs or {}))
    try:  # One example: catches unknown difficulty knobs in milliseconds.
      tasks.generate(task, 1, seed=seed, **dict(kwargs or {}))
    except Exception as e:  # pylint: disable=broad-except
      knobs = [p.name for p in inspect.signature(
          tasks.TASKS[task].make).parameters.values()
               if p.kind is p.KEYWORD_ONLY]
      c.add("data.task_kwargs", f"{dict(kwargs or {})!r} rejected by task "
            f"{task!r} ({type(e).__name__}: {e}); allowed: keyword "
            f"arguments among {knobs} with valid values")
  c.int_("data.tokenizer_vocab_size", low=_MIN_TOKENIZER_VOCAB,
         high=_MAX_TOKENIZER_VOCAB, required=False,
         why=" (the tiny byte-level BPE tokenizer: 256 bytes + 4 special "
         "tokens at least)")
  c.str_("data.prompt_field", nonempty=True)
  for field in ("data.answer_field", "data.id_field", "data.system_prompt"):
    c.str_(field)
  template = c.str_("data.template", nonempty=True)
  if isinstance(template, str) and template:
    try:
      names = [n for _, n, _, _ in string.Formatter().parse(template)
               if n is not None]
    except ValueError as e:
      c.add("data.template", f"{template!r} is not a format string ({e}); "
            "allowed: text with {prompt} / {<record field>} placeholders "
            "(write {{ and }} for braces)")
    else:
      if any(not n or not n.isidentifier() for n in names):
        c.add("data.template", f"{template!r} has a positional or "
              "non-identifier placeholder; allowed: named fields such as "
              "{prompt}")
      elif not names:
        c.add("data.template", f"{template!r} has no placeholder, so every "
              "prompt would be this same text; allowed: a template with "
              "{prompt} (or another record field)")
  chat = c.bool_("data.chat_template")
  system = _get(c.config, "data.system_prompt")
  if chat is False and isinstance(system, str) and system:
    c.add("data.system_prompt", "set while data.chat_template=False; allowed: "
          "a system prompt only with the chat template")
  c.str_("data.on_overlong", choices=tokenization.OVERLONG_POLICIES)
  return c.int_("data.max_prompt_length", low=1)


def _check_entropy(c: _Checker):
  """Every entropy field, whichever method is selected (a wrong value of an
  unused field is a wrong belief about the run); cross-field rules too."""
  method = c.str_("entropy.method", choices=ENTROPY_METHODS or None)
  anneal = c.str_("entropy.anneal", choices=ANNEALS or None, required=False)
  fn_ok = anneal in (_MISSING, "constant")  # Only then may a base be a fn.
  # `rl.hparams.annealed` multiplies the base value, so it must be a number.
  no_fn = "" if fn_ok else (f" (entropy.anneal={anneal!r} scales a number; "
                            "give a schedule only with anneal='constant')")
  req = lambda *methods: method in methods
  c.num("entropy.coef", low=0.0, allow_schedule=fn_ok, why=no_fn,
        required=req("entropy_bonus", "kl_cov"))
  c.num("entropy.ratio", low=0.0, high=1.0, low_open=True,
        allow_schedule=fn_ok and method != "kl_cov",
        why=" (fraction of tokens clipped or penalised)" + no_fn,
        required=req("clip_cov", "kl_cov"))
  lb = c.num("entropy.clip_cov_lb", required=req("clip_cov"))
  ub = c.num("entropy.clip_cov_ub", required=req("clip_cov"))
  if _MISSING not in (lb, ub) and not lb < ub:
    c.add("entropy.clip_cov_lb", f"{lb:g} >= entropy.clip_cov_ub={ub:g}; "
          "allowed: clip_cov_lb < clip_cov_ub (the covariance window "
          "(lb, ub) must be non-empty)")
  c.num("entropy.quantile", low=0.0, high=1.0, low_open=True,
        allow_schedule=True, why=" (kept top fraction of tokens)",
        required=req("high_entropy_tokens"))
  adaptive = req("adaptive_entropy")
  c.str_("entropy.rule", choices=_ADAPTIVE_RULES, required=adaptive)
  c.num("entropy.target", low=0.0, allow_schedule=True, required=adaptive)
  c.num("entropy.delta", low=0.0, required=adaptive)
  c.num("entropy.lr", low=0.0, required=req("adaptive_entropy", "aent"))
  c.str_("entropy.measure", choices=_ADAPTIVE_MEASURES, required=False)
  c.ordered("entropy.coef_min", "entropy.coef_max", required=adaptive)
  c.num("entropy.w_min", low=0.0, high=1.0, low_open=True, required=False)
  c.num("entropy.w_max", low=0.0, low_open=True, required=False)
  w_lo, w_hi = _get(c.config, "entropy.w_min"), _get(c.config, "entropy.w_max")
  if (checker.is_num(w_lo) and checker.is_num(w_hi) and
      not c.bad("entropy.w_min") and not c.bad("entropy.w_max") and
      w_lo > w_hi):
    c.add("entropy.w_min", f"{w_lo:g} > entropy.w_max={w_hi:g}; allowed: "
          "w_min <= w_max")
  c.str_("entropy.steer_mode", choices=_STEER_MODES, required=False)
  c.str_("entropy.steer_score", choices=_STEER_SCORES, required=False)
  c.num("entropy.coef_init", low=0.0, required=False)
  c.ordered("entropy.h_low", "entropy.h_high", required=False)
  c.ordered("entropy.coef_min_aent", "entropy.coef_max_aent", required=False)
  # Anneal parameters: ranges always, cosine's end fraction when used.
  annealing = method in ANNEALED_METHODS
  timed = annealing and anneal in ("linear", "cosine")
  c.int_("entropy.anneal_steps", low=1, required=timed)
  if timed and anneal == "cosine":
    c.num("entropy.anneal_end", low=0.0, high=1.0,
          why=" (cosine's final fraction)")
  else:
    c.num("entropy.anneal_end", low=0.0, required=timed,
          why=" (end = value·anneal_end)")
  power = annealing and anneal == "inverse_power"
  c.num("entropy.anneal_tau", low=0.0, low_open=True, required=power)
  c.num("entropy.anneal_power", low=0.0, low_open=True, required=power)


def _check_loss_and_rl(c: _Checker):
  c.registry("advantage.estimator", registry.ADVANTAGE_ESTIMATORS)
  c.registry("loss.policy_loss", registry.POLICY_LOSSES)
  c.registry("loss.agg_mode", registry.AGG_MODES)
  c.registry("loss.kl_kind", registry.KL_ESTIMATORS)
  c.str_("loss.kl_in_reward_kind", choices=kl.KL_KINDS, required=False)
  c.num("loss.clip_eps_low", low=0.0, high=1.0)
  c.num("loss.clip_eps_high", low=0.0)
  c.num("loss.clip_ratio_c", low=1.0, low_open=True, allow_none=True,
        required=False, why=" (dual-clip bound; None disables it)")
  c.num("loss.kl_coef", low=0.0)
  c.num("loss.kl_in_reward_coef", low=0.0, required=False)
  c.int_("loss.token_chunk", low=1)
  c.int_("loss.vocab_chunk", low=1, allow_none=True, required=False)
  c.num("loss.gspo_eps_low", low=0.0, required=False)
  c.num("loss.gspo_eps_high", low=0.0, required=False)
  # Derived from rollout.temperature by get_config (may disappear).
  loss_t = c.num("loss.temperature", low=0.0, low_open=True, required=False)
  roll_t = c.num("rollout.temperature", low=0.0, low_open=True)
  if _MISSING not in (loss_t, roll_t) and loss_t != roll_t:
    # get_config copies rollout.temperature into the loss; overriding only
    # one of them on the command line silently changes the PPO ratios.
    c.add("loss.temperature", f"{loss_t:g} differs from rollout.temperature="
          f"{roll_t:g}; allowed: the same value (the loss scores tokens at "
          "the sampling temperature)")
  c.num("rollout.top_p", low=0.0, high=1.0, low_open=True)
  c.int_("rollout.top_k", low=0)
  c.int_("rollout.max_new_tokens", low=1)
  c.bool_("rollout.continuous", required=False)
  c.int_("rollout.num_slots", low=0, required=False)
  c.str_("rollout.decode_attention", choices=decode_attention.CHOICES,
         required=False)
  spec = c.value("reward.spec")
  if spec is not _MISSING and not isinstance(spec, (str, dict)) and not (
      hasattr(spec, "keys")):
    c.add("reward.spec", f"got {spec!r}; allowed: a reward name or a "
          "weighted spec like 'math:1.0,format:0.1'")
  elif spec is not _MISSING and spec:
    try:
      reward_registry.get_reward_fn(spec)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
      c.add("reward.spec", f"{spec!r}: {e}; allowed: one of those names, "
            "or a weighted spec like 'math:1.0,format:0.1'")
  elif spec is not _MISSING and not _get(c.config, "data.task"):
    c.add("reward.spec", "empty and data.task is empty; allowed: a reward "
          f"name in {sorted(reward_registry.REWARDS)} or a weighted spec")
  c.str_("reward.backend", choices=scoring.BACKENDS)
  c.num("reward.timeout_s", low=0.0, low_open=True,
        why=" (seconds per reward call)")
  c.num("reward.batch_timeout_s", low=0.0, low_open=True, allow_none=True,
        required=False, why=" (seconds to score one batch; None: no budget)")
  c.num("optim.lr", low=0.0, low_open=True)
  c.int_("optim.warmup_steps", low=0)
  c.str_("optim.schedule", choices=_LR_SCHEDULES)
  c.str_("optim.name", choices=("adamw", "sgd"), required=False)
  c.num("optim.weight_decay", low=0.0)
  c.num("optim.b1", low=0.0, high=1.0, high_open=True)
  c.num("optim.b2", low=0.0, high=1.0, high_open=True)
  c.num("optim.grad_clip", low=0.0, low_open=True, allow_none=True)


def _check_critic(c: _Checker):
  """GAE's γ, λ and the `critic` block (`rl.critic`): ranges always,
  required when the estimator reads a critic (`gae`)."""
  estimator = _get(c.config, "advantage.estimator")
  used = isinstance(estimator, str) and estimator in (
      registry.CRITIC_ESTIMATORS)
  for field in ("advantage.gamma", "advantage.lam"):
    c.num(field, low=0.0, high=1.0, required=False)
  if used and _get(c.config, "critic") is _MISSING:
    c.add("critic", f"missing with advantage.estimator={estimator!r}; "
          "allowed: a critic block (configs/grpo_tiny.critic_config)")
    return
  if used and _get(c.config, "lora.enabled") is True:
    c.add("advantage.estimator", f"{estimator!r} trains a critic, which a "
          "LoRA policy does not support yet (lora.enabled=True); allowed: "
          "a critic-free estimator with LoRA")
  c.str_("critic.kind", choices=critic_lib.KINDS, required=used)
  c.num("critic.lr", low=0.0, low_open=True, required=used)
  warmup = c.int_("critic.warmup_steps", low=0, required=False)
  steps = _get(c.config, "train.steps")
  if used and _is_int(warmup) and _is_int(steps) and warmup >= steps:
    c.add("critic.warmup_steps", f"{warmup} >= train.steps={steps}: the "
          f"policy would never train; allowed: fewer than {steps}")
  c.num("critic.cliprange_value", low=0.0, low_open=True, required=False,
        why=" (verl cliprange_value)")
  c.registry("critic.agg_mode", registry.AGG_MODES, required=False)
  c.num("critic.weight_decay", low=0.0, required=False)
  c.num("critic.grad_clip", low=0.0, low_open=True, allow_none=True,
        required=False)


def _check_lora(c: _Checker):
  """The `lora` block (configs/common.lora_config, models/lora.py)."""
  if _get(c.config, "lora") is _MISSING:
    return
  on = c.bool_("lora.enabled")
  c.int_("lora.rank", low=1, required=on is True)
  c.num("lora.alpha", low=0.0, low_open=True, required=on is True)
  c.str_("lora.quant", choices=lora_lib.QUANT, required=on is True)
  c.int_("lora.seed", low=0, required=False)
  c.num("lora.dropout", low=0.0, high=0.0, required=False,
        why=" (a dropout mask would make the trained policy differ from the "
        "one that sampled the rollout)")
  sweep = [_get(c.config, f) for f in ("sweep.seeds", "sweep.grid")]
  if on is True and any(isinstance(v, str) and v.strip() for v in sweep):
    # The stacked rollout closes over the model's rest, which for LoRA is
    # the (donated) frozen base; one run per process for now.
    c.add("lora.enabled", "True with sweep.seeds / sweep.grid set; allowed: "
          "LoRA runs without replicas (run the seeds as separate runs)")
  targets = c.str_("lora.targets", required=on is True)
  if isinstance(targets, str):
    names = [t.strip() for t in targets.split(",") if t.strip()]
    bad = [t for t in names if t not in lora_lib.TARGETS]
    if bad or not names:
      c.add("lora.targets", f"got {targets!r}; allowed: comma-separated "
            f"names from {tuple(lora_lib.TARGETS)}")


def _check_batches(c: _Checker, dp: int | None, num_processes: int):
  t = {n: c.int_(f"train.{n}", low=1) for n in (
      "steps", "prompts_per_step", "ppo_epochs", "num_mini_batches",
      "max_consecutive_skips")}
  c.int_("train.measure_every", low=0)
  c.bool_("train.recompute_old_logp")
  n = c.int_("rollout.n_samples", low=1)
  micro = c.int_("loss.num_micro_batches", low=1)
  prompts, minis = t["prompts_per_step"], t["num_mini_batches"]
  if prompts is not _MISSING and prompts % num_processes:
    c.add("train.prompts_per_step", f"{prompts} is not divisible by the "
          f"{num_processes} processes; allowed: a multiple of {num_processes}")
  if _MISSING in (prompts, minis, n, micro):
    return
  rows = prompts * n
  per_micro = rows / (minis * micro)
  if rows % (minis * micro):
    c.add("train.num_mini_batches", f"train.prompts_per_step × "
          f"rollout.n_samples = {rows} rows do not split into "
          f"train.num_mini_batches={minis} × loss.num_micro_batches={micro} "
          f"equal micro-batches; allowed: a product dividing {rows}")
  elif dp and per_micro % dp:
    c.add("loss.num_micro_batches", f"micro-batches of {int(per_micro)} rows "
          f"(train.prompts_per_step={prompts} × rollout.n_samples={n} / "
          f"(train.num_mini_batches={minis} × loss.num_micro_batches="
          f"{micro})) do not split over the data-parallel size {dp} (mesh "
          "axes of `act_batch`); allowed: micro-batch rows a multiple of "
          f"{dp}")


def _check_distributed(c: _Checker):
  """The optional `distributed` block (train/distributed.py)."""
  # Imported here: the module is tiny, but keeps this file's imports to
  # what every check needs.
  from jaxrl_ent.train import distributed  # pylint: disable=g-import-not-at-top
  c.str_("distributed.initialize", choices=distributed.MODES, required=False)
  address = c.str_("distributed.coordinator_address", required=False)
  if isinstance(address, str) and address and not re.fullmatch(
      r"(\[[0-9a-fA-F:]+\]|[^\s:\[\]]+):\d{1,5}", address):
    c.add("distributed.coordinator_address", f"got {address!r}; allowed: '' "
          "(unset) or host:port, e.g. 10.0.0.2:1234")
  num = c.int_("distributed.num_processes", low=0, required=False)
  pid = c.int_("distributed.process_id", low=-1, required=False)
  if _is_int(num) and _is_int(pid) and num > 0 and pid >= num:
    c.add("distributed.process_id", f"{pid} with distributed.num_processes="
          f"{num}; allowed: -1 (unset) or an id in [0, {num})")


def _check_wandb(c: _Checker):
  """The optional `wandb` block (train/wandb_writer.py)."""
  if _get(c.config, "wandb") is _MISSING:
    return
  # pylint: disable=g-import-not-at-top
  import importlib.util
  from jaxrl_ent.train import wandb_writer
  on = c.bool_("wandb.enabled")
  c.str_("wandb.project", required=False, nonempty=on is True)
  for name in ("entity", "name", "group", "notes", "dir"):
    c.str_(f"wandb.{name}", required=False)
  c.str_("wandb.mode", choices=wandb_writer.MODES, required=False)
  tags = c.value("wandb.tags", required=False)
  if tags is not _MISSING and not (
      isinstance(tags, (list, tuple)) and
      all(isinstance(t, str) and t for t in tags)):
    c.add("wandb.tags", f"got {tags!r}; allowed: a list of non-empty "
          "strings")
  if on is True and importlib.util.find_spec("wandb") is None:
    c.add("wandb.enabled", "True but the wandb package is not installed; "
          "allowed: False, or pip install -e '.[wandb]'")


def _check_rest(c: _Checker, context, max_prompt, sft_on):
  c.int_("seed")
  c.str_("resume_from")
  resume = _get(c.config, "resume_from")
  if isinstance(resume, str) and resume and "://" not in resume and (
      not os.path.isdir(resume)):
    c.add("resume_from", f"{resume!r} is not a directory; allowed: '' or a "
          "checkpoint directory (or one step directory in it)")
  c.bool_("tensorboard", required=False)
  c.int_("checkpoint.every", low=1)
  c.int_("checkpoint.keep", low=1)
  c.bool_("checkpoint.async_save", required=False)
  c.int_("eval.every", low=0)
  c.int_("eval.num_examples", low=1)
  c.int_("eval.batch_size", low=1)
  pass_k = c.int_("eval.pass_k", low=0)
  n = c.int_("eval.num_samples", low=0, required=False,
             why=" (0 = pass_k samples per prompt)")
  if n is not _MISSING and pass_k is not _MISSING and 0 < n < pass_k:
    c.add("eval.num_samples", f"{n} < eval.pass_k={pass_k}; the unbiased "
          "pass@k needs n >= k samples (allowed: 0 or >= eval.pass_k)")
  c.num("eval.success_threshold")
  steps = c.int_("sft.steps", low=0)
  # The warm start runs only for the tiny model (no model_path); its fields
  # are range-checked regardless, required only when it runs.
  used = sft_on and steps not in (_MISSING, 0)
  c.num("sft.lr", low=0.0, low_open=True, required=used)
  c.int_("sft.batch_size", low=1, required=used)
  c.int_("sft.num_examples", low=1, required=used)
  seq = c.int_("sft.seq_len", low=2, required=used)
  acc = c.num("sft.demo_accuracy", low=0.0, high=1.0, required=False)
  task = _get(c.config, "data.task")
  if (used and isinstance(acc, (int, float)) and acc < 1.0
      and isinstance(task, str) and task in tasks.TASKS
      and tasks.TASKS[task].mistake is None):
    c.add("sft.demo_accuracy", f"{acc} < 1 needs a task with a typical "
          f"mistake to demonstrate; data.task={task!r} has none (allowed: "
          f"1.0, or a task among "
          f"{sorted(k for k, t in tasks.TASKS.items() if t.mistake)})")
  if used:
    if context is not None and seq is not _MISSING and seq > context:
      c.add("sft.seq_len", f"{seq} exceeds the model's context of {context} "
            f"tokens; allowed: at most {context}")
  new = _get(c.config, "rollout.max_new_tokens")
  if (context is not None and max_prompt is not _MISSING and _is_int(new)
      and new >= 1 and max_prompt + new > context):
    c.add("data.max_prompt_length", f"data.max_prompt_length ({max_prompt}) "
          f"+ rollout.max_new_tokens ({new}) = {max_prompt + new} exceeds the "
          f"model's context of {context} tokens; allowed: a sum of at most "
          f"{context}")


def validate_config(config, num_devices: int | None = None,
                    num_processes: int | None = None) -> checker.Checker:
  """Raises `ConfigError` listing every problem of an RL training config.

  Checks types, ranges and allowed names of every field the trainer reads,
  the entropy method's own fields, annealing schedules, the mesh against
  the device count, batch divisibility (processes, data parallelism, mini-
  and micro-batches), the reward spec, the data source (files exist), and
  prompt + completion length against the context. Compiles nothing and
  builds no model.

  Args:
    config: the `ml_collections.ConfigDict` of `configs/grpo_*.py`.
    num_devices: devices the mesh must cover (default `jax.device_count()`).
    num_processes: host processes (default `jax.process_count()`).

  Returns:
    The `checker.Checker` (its `seen` fields were all checked).

  Raises:
    ConfigError: (a `ValueError`) with one line per problem:
      `<dotted.field>: <bad value>; allowed: <what is allowed>`.
  """
  c = _Checker(config)
  num_devices = jax.device_count() if num_devices is None else num_devices
  num_processes = (jax.process_count() if num_processes is None
                   else num_processes)
  _run_checks(c, num_devices, num_processes)
  if c.problems:
    raise ConfigError(c.problems)
  return c


def _run_checks(c: _Checker, num_devices: int, num_processes: int):
  sizes = _check_mesh(c, num_devices)
  dp = _data_parallel_size(c, sizes or {})
  dp = dp if sizes is not None else None
  context = _check_model(c)
  max_prompt = _check_data(c)
  _check_entropy(c)
  _check_loss_and_rl(c)
  _check_critic(c)
  _check_lora(c)
  _check_batches(c, dp, num_processes)
  _check_distributed(c)
  _check_wandb(c)
  model_path = _get(c.config, "model_path")
  _check_rest(c, context, max_prompt, sft_on=not model_path)
  _check_sweep(c, num_processes)


def _check_sweep(c: _Checker, num_processes: int):
  """`sweep.seeds` / `sweep.grid` parse, and name hparams of this run."""
  if _get(c.config, "sweep") is _MISSING:
    return
  seeds = c.str_("sweep.seeds", required=False)
  grid = c.str_("sweep.grid", required=False)
  if c.bad("sweep.seeds") or c.bad("sweep.grid"):
    return
  if isinstance(seeds, str) and seeds.strip():
    try:
      replicas._parse_seeds(seeds)  # pylint: disable=protected-access
    except ValueError as e:
      c.add("sweep.seeds", str(e).split(": ", 1)[-1])
  if isinstance(grid, str) and grid.strip():
    try:
      allowed = factories.initial_hparams(c.config)
    except Exception:  # pylint: disable=broad-except
      return  # The fields it reads are reported by their own checks.
    try:
      replicas._parse_grid(grid, allowed)  # pylint: disable=protected-access
    except ValueError as e:
      c.add("sweep.grid", str(e).split(": ", 1)[-1])
  if num_processes > 1 and any(isinstance(v, str) and v.strip()
                               for v in (seeds, grid)):
    c.add("sweep.seeds", "replicas run in one process; allowed: empty in a "
          "multi-process run")


def unchecked_fields(config) -> list[str]:
  """Leaves of `config` that no check of `validate_config` looks at.

  Empty for the shipped RL configs (tests/train/validate_fuzz_test.py); a
  new config field should come with its check here.
  """
  c = _Checker(config)
  try:
    _run_checks(c, 1, 1)
  except Exception:  # pylint: disable=broad-except
    pass  # Only which fields were looked at matters here.
  return c.unchecked()


# ------------------------------------------------------------ ignored fields
def _readers(config, field: str) -> tuple[str, bool] | None:
  """(`who reads field`, read by this config?) for the conditional fields."""
  get = lambda f: _get(config, f)
  block, _, name = field.partition(".")
  method = get("entropy.method")
  if block == "entropy" and name in ENTROPY_READERS:
    users = ENTROPY_READERS[name]
    return ("entropy.method in " + "|".join(users), method in users)
  if block == "entropy" and name in ANNEAL_READERS:
    kinds = ANNEAL_READERS[name]
    return (f"entropy.anneal in {'|'.join(kinds)} with entropy.method in "
            f"{'|'.join(ANNEALED_METHODS)}",
            method in ANNEALED_METHODS and get("entropy.anneal") in kinds)
  loss = get("loss.policy_loss")
  if field in ("loss.clip_eps_low", "loss.clip_eps_high"):
    return ("loss.policy_loss=ppo_clip or entropy.method=clip_cov",
            loss == "ppo_clip" or method == "clip_cov")
  if field == "loss.clip_ratio_c":
    return "loss.policy_loss=ppo_clip", loss == "ppo_clip"
  if field in ("loss.gspo_eps_low", "loss.gspo_eps_high"):
    return "loss.policy_loss=gspo", loss == "gspo"
  if field == "loss.kl_kind":
    return "loss.kl_coef > 0", _positive(get("loss.kl_coef"))
  if field == "loss.kl_in_reward_kind":
    return ("loss.kl_in_reward_coef > 0",
            _positive(get("loss.kl_in_reward_coef")))
  estimator = get("advantage.estimator")
  if block == "critic" or field in ("advantage.gamma", "advantage.lam"):
    return ("advantage.estimator=gae (PPO with a critic)",
            isinstance(estimator, str) and registry.needs_critic(estimator)
            if estimator in registry.ADVANTAGE_ESTIMATORS else False)
  tiny = get("model_path") == ""
  if block == "model" and name not in ("dtype", "remat"):
    return "the tiny model (model_path='')", tiny
  if field == "data.tokenizer_vocab_size":
    return "the tiny model's tokenizer (model_path='')", tiny
  if block == "sft":
    steps = get("sft.steps")
    if name == "steps":
      return "the warm start of the tiny model (model_path='')", tiny
    return ("the warm start (model_path='' and sft.steps > 0)",
            tiny and _positive(steps))
  if field in ("data.task_kwargs", "data.task_size", "data.task_seed"):
    return "a synthetic data.task", bool(get("data.task"))
  return None


def _positive(v) -> bool:
  return checker.is_num(v) and v > 0


def ignored_field_warnings(config, fields) -> list[str]:
  """One line per field in `fields` that this config does not read.

  Args:
    config: the (validated) config.
    fields: the fields the user set, e.g. `launch_flags.overrides()` or
      `changed_fields(config, default_config)`.

  Returns:
    E.g. `entropy.coef=0.5 is not used: entropy.method='none' does not read
    it (read by entropy.method in entropy_bonus|kl_cov)`.
  """
  out = []
  for field in sorted(set(fields)):
    who = _readers(config, field)
    if who is None or who[1]:
      continue
    value = _get(config, field)
    method = _get(config, "entropy.method")
    context = (f"entropy.method={method!r}" if field.startswith("entropy.")
               else "this config")
    out.append(f"{field}={value!r} is not used: {context} does not read it "
               f"(read with {who[0]})")
  return out


def changed_fields(config, reference) -> list[str]:
  """Leaves whose value differs from `reference` (e.g. `get_config()`)."""
  out = []
  for leaf in checker.leaves(config):
    if _get(reference, leaf) != _get(config, leaf):
      out.append(leaf)
  return out
