"""Checks an RL training config in one pass, before anything expensive.

`validate_config(config)` is the first thing `launch/train.py` and
`rl_loop.train_and_evaluate` do: before the policy is built, the supervised
warm start runs or anything is jitted. It reads the config (and, cheaply, the
file system for `model_path`/data paths) and raises ONE `ConfigError` that
lists every problem it found, each naming the dotted field, the bad value and
what is allowed — so a typo in a launch command costs seconds, not a
compilation (or a pod-slice allocation) per mistake.

The kernels and factories keep their own checks (they are also called
without a config); this module mirrors them with config field names, and adds
what only the whole config can see: the mesh against the device count, batch
divisibility across data parallelism / mini- and micro-batches, and prompt +
completion length against the model's context.

Unknown keys and wrong types given as `--config.x=y` are refused earlier, by
ml_collections' locked, type-safe ConfigDict (`lock_config=True` in the
launcher); the type checks here catch configs built or edited in Python.
"""

import inspect
import json
import math
import os
import jax
import numpy as np

from jaxrl_ent import sharding
from jaxrl_ent.data import records
from jaxrl_ent.data import tokenization
from jaxrl_ent.rewards import registry as reward_registry
from jaxrl_ent.rewards import scoring
from jaxrl_ent.rewards import tasks
from jaxrl_ent.rl import kl
from jaxrl_ent.rl import registry
from jaxrl_ent.train import factories

_MISSING = object()

# Allowed values that their owners check inline rather than export
# (policy_setup, optim.lr_schedule, controllers, reweighting); every other
# list is imported from its owner, so it cannot drift.
_DTYPES = ("float32", "bfloat16")
_LR_SCHEDULES = ("constant", "linear", "cosine")
_ADAPTIVE_RULES = ("bang_bang", "lagrangian")
_ADAPTIVE_MEASURES = ("old_logp", "entropy")
_STEER_MODES = ("exponential", "linear")
_STEER_SCORES = ("reference", "exact")


class ConfigError(ValueError):
  """An invalid config; `problems` is the list of `(field, message)` pairs."""

  def __init__(self, problems):
    self.problems = list(problems)
    lines = "\n".join(f"  - {field}: {msg}" for field, msg in self.problems)
    n = len(self.problems)
    super().__init__(f"invalid config, {n} problem{'s' if n > 1 else ''}:\n"
                     f"{lines}")


def _get(config, path: str):
  node = config
  for part in path.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return _MISSING
  return node


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return (isinstance(v, (int, float, np.integer, np.floating))
          and not isinstance(v, bool))


def _interval(low, high, low_open, high_open) -> str:
  lo = "-inf" if low is None else f"{low:g}"
  hi = "inf" if high is None else f"{high:g}"
  return (("(" if low_open or low is None else "[") + f"{lo}, {hi}" +
          (")" if high_open or high is None else "]"))


class _Checker:
  """Collects problems; every check names its dotted field."""

  def __init__(self, config):
    self.config = config
    self.problems: list[tuple[str, str]] = []

  def add(self, field: str, msg: str):
    self.problems.append((field, msg))

  def value(self, field: str, *, required: bool = True):
    v = _get(self.config, field)
    if v is _MISSING and required:
      self.add(field, "missing (the trainer reads this field)")
    return v

  def bool_(self, field, required=True):
    v = self.value(field, required=required)
    if v is not _MISSING and not isinstance(v, (bool, np.bool_)):
      self.add(field, f"got {v!r}; allowed: True or False")
    return v

  def str_(self, field, *, choices=None, required=True, nonempty=False):
    v = self.value(field, required=required)
    if v is _MISSING:
      return v
    if not isinstance(v, str):
      self.add(field, f"got {v!r} ({type(v).__name__}); allowed: a string"
               + (f" in {tuple(choices)}" if choices else ""))
      return _MISSING
    if choices is not None and v not in choices:
      self.add(field, f"got {v!r}; allowed: {tuple(choices)}")
      return _MISSING
    if nonempty and not v:
      self.add(field, "got ''; allowed: a non-empty string")
      return _MISSING
    return v

  def int_(self, field, *, low=None, high=None, required=True,
           allow_none=False):
    """An int in [low, high]; returns it, or _MISSING if absent/bad."""
    v = self.value(field, required=required)
    if v is _MISSING or (allow_none and v is None):
      return v
    rng = _interval(low, high, False, False)
    if not _is_int(v):
      self.add(field, f"got {v!r} ({type(v).__name__}); allowed: an int in "
               f"{rng}" + (" or None" if allow_none else ""))
      return _MISSING
    if (low is not None and v < low) or (high is not None and v > high):
      self.add(field, f"got {v}; allowed: an int in {rng}"
               + (" or None" if allow_none else ""))
      return _MISSING
    return int(v)

  def num(self, field, *, low=None, high=None, low_open=False,
          high_open=False, required=True, allow_none=False,
          allow_schedule=False, why=""):
    """A finite number in the interval (or a schedule, when allowed)."""
    v = self.value(field, required=required)
    if v is _MISSING or (allow_none and v is None):
      return v
    rng = _interval(low, high, low_open, high_open)
    allowed = f"a finite number in {rng}" + (
        " or None" if allow_none else "") + (
            " or a schedule `count -> value`" if allow_schedule else "")
    if allow_schedule and callable(v):
      return self._schedule(field, v, low, high, low_open, high_open)
    if not _is_num(v) or not math.isfinite(float(v)):
      self.add(field, f"got {v!r}; allowed: {allowed}{why}")
      return _MISSING
    v = float(v)
    bad = ((low is not None and (v <= low if low_open else v < low)) or
           (high is not None and (v >= high if high_open else v > high)))
    if bad:
      self.add(field, f"got {v:g}; allowed: {allowed}{why}")
      return _MISSING
    return v

  def _schedule(self, field, fn, low, high, low_open, high_open):
    # A schedule is evaluated by the controller at its int32 step count
    # inside jit; a callable that fails or gives a non-scalar there would
    # only surface at the first compile, so probe it here on the host.
    rng = _interval(low, high, low_open, high_open)
    try:
      values = [np.asarray(fn(np.int32(c)), np.float64) for c in (0, 1, 100)]
    except Exception as e:  # pylint: disable=broad-except
      self.add(field, f"the schedule {fn!r} fails at count 0 "
               f"({type(e).__name__}: {e}); allowed: a schedule "
               "`count -> scalar`, e.g. from jaxrl_ent.entropy.schedules")
      return _MISSING
    if any(v.shape != () for v in values):
      self.add(field, f"the schedule {fn!r} returns shape "
               f"{values[0].shape}; allowed: a scalar per count")
      return _MISSING
    for v in values:
      v = float(v)
      if not math.isfinite(v) or (low is not None and (
          v <= low if low_open else v < low)) or (high is not None and (
              v >= high if high_open else v > high)):
        self.add(field, f"the schedule {fn!r} gives {v:g}; allowed: values "
                 f"in {rng}")
        return _MISSING
    return fn

  def registry(self, field, registry_, required=True):
    v = self.value(field, required=required)
    if v is not _MISSING and v not in registry_:
      self.add(field, f"got {v!r}; allowed: {registry_.names()}")
      return _MISSING
    return v


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
        context = json.load(f).get("max_position_embeddings")
    except (OSError, ValueError) as e:
      c.add("model_path", f"cannot read {cfg_file} ({e}); allowed: a "
            "folder with a valid Hugging Face config.json")
      return None
    return int(context) if _is_int(context) else None
  if model_path == "" and _get(c.config, "data.task") == "":
    c.add("model_path", "empty and data.task is empty; allowed: a local HF "
          "checkpoint folder, or a synthetic data.task to build a tiny "
          "model for")
    return None
  dims = {n: c.int_(f"model.{n}", low=1) for n in (
      "hidden_size", "intermediate_size", "num_layers", "num_heads",
      "num_kv_heads", "max_position_embeddings")}
  c.bool_("model.tie_word_embeddings", required=False)
  h, nh, nkv = dims["hidden_size"], dims["num_heads"], dims["num_kv_heads"]
  if _MISSING not in (h, nh) and h % nh:
    c.add("model.hidden_size", f"{h} is not divisible by model.num_heads="
          f"{nh}; allowed: a multiple of num_heads")
  if _MISSING not in (nh, nkv) and nh % nkv:
    c.add("model.num_kv_heads", f"{nkv} does not divide model.num_heads="
          f"{nh}; allowed: a divisor of num_heads")
  ctx = dims["max_position_embeddings"]
  return None if ctx is _MISSING else ctx


def _check_data(c: _Checker):
  task = c.str_("data.task", choices=("",) + tuple(sorted(tasks.TASKS)))
  for field in ("data.train_paths", "data.eval_paths"):
    paths = c.value(field)
    if paths is _MISSING:
      continue
    if isinstance(paths, str):
      paths = [paths] if paths else []
    elif not (isinstance(paths, (list, tuple)) and
              all(isinstance(p, str) for p in paths)):
      c.add(field, f"got {paths!r}; allowed: a path/glob or a list of them")
      continue
    if task not in (_MISSING, "") and paths:
      c.add(field, f"set together with data.task={task!r}; allowed: exactly "
            "one source, prompt files or a synthetic task")
    elif task == "" and not paths:
      c.add(field, "empty and data.task is empty; allowed: JSONL/Parquet "
            "paths, or set data.task")
    elif paths and not any("://" in p for p in paths):
      try:
        records.expand_paths(paths)
      except FileNotFoundError as e:
        c.add(field, f"{e}; allowed: existing files, or glob patterns "
              "that match some")
  if task not in (_MISSING, ""):
    c.int_("data.task_size", low=1)
    seed = c.int_("data.task_seed")
    kwargs = c.value("data.task_kwargs", required=False)
    if kwargs is not _MISSING and seed is not _MISSING:
      try:  # One example: catches unknown difficulty knobs in milliseconds.
        tasks.generate(task, 1, seed=seed, **dict(kwargs or {}))
      except (TypeError, ValueError) as e:
        knobs = [p.name for p in inspect.signature(
            tasks.TASKS[task].make).parameters.values()
                 if p.kind is p.KEYWORD_ONLY]
        c.add("data.task_kwargs", f"{dict(kwargs or {})!r} rejected by task "
              f"{task!r} ({e}); allowed: keyword arguments among {knobs} "
              "with valid values")
  c.str_("data.prompt_field", nonempty=True)
  for field in ("data.answer_field", "data.id_field", "data.template",
                "data.system_prompt"):
    c.str_(field)
  chat = c.bool_("data.chat_template")
  system = _get(c.config, "data.system_prompt")
  if chat is False and isinstance(system, str) and system:
    c.add("data.system_prompt", "set while data.chat_template=False; allowed: "
          "a system prompt only with the chat template")
  c.str_("data.on_overlong", choices=tokenization.OVERLONG_POLICIES)
  return c.int_("data.max_prompt_length", low=1)


def _check_entropy(c: _Checker):
  method = c.str_("entropy.method", choices=factories.ENTROPY_METHODS)
  anneal = c.str_("entropy.anneal", choices=factories.ANNEALS,
                  required=False)
  annealed = method in ("entropy_bonus", "clip_cov", "kl_cov")
  sched = anneal in (_MISSING, "constant")  # Only then may a base be a fn.
  # `factories.anneal` multiplies the base value, so it must be a number.
  no_fn = "" if sched else (f" (entropy.anneal={anneal!r} scales a number; "
                            "give a schedule only with anneal='constant')")
  if annealed and anneal == "linear":
    c.int_("entropy.anneal_steps", low=1)
    c.num("entropy.anneal_end", low=0.0, why=" (end = value·anneal_end)")
  elif annealed and anneal == "cosine":
    c.int_("entropy.anneal_steps", low=1)
    c.num("entropy.anneal_end", low=0.0, high=1.0,
          why=" (cosine's final fraction)")
  elif annealed and anneal == "inverse_power":
    c.num("entropy.anneal_tau", low=0.0, low_open=True)
    c.num("entropy.anneal_power", low=0.0, low_open=True)
  if method == "entropy_bonus":
    c.num("entropy.coef", low=0.0, allow_schedule=sched, why=no_fn)
  elif method == "clip_cov":
    c.num("entropy.ratio", low=0.0, high=1.0, low_open=True,
          allow_schedule=sched,
          why=" (fraction of tokens clipped)" + no_fn)
    lb = c.num("entropy.clip_cov_lb")
    ub = c.num("entropy.clip_cov_ub")
    if _MISSING not in (lb, ub) and not lb < ub:
      c.add("entropy.clip_cov_lb", f"{lb:g} >= entropy.clip_cov_ub={ub:g}; "
            "allowed: clip_cov_lb < clip_cov_ub (the covariance window "
            "(lb, ub) must be non-empty)")
  elif method == "kl_cov":
    c.num("entropy.ratio", low=0.0, high=1.0, low_open=True,
          why=" (fraction of tokens penalised)")
    c.num("entropy.coef", low=0.0, allow_schedule=sched, why=no_fn)
  elif method == "high_entropy_tokens":
    c.num("entropy.quantile", low=0.0, high=1.0, low_open=True,
          allow_schedule=True, why=" (kept top fraction of tokens)")
  elif method == "adaptive_entropy":
    c.str_("entropy.rule", choices=_ADAPTIVE_RULES)
    c.num("entropy.target", low=0.0, allow_schedule=True)
    c.num("entropy.delta", low=0.0)
    c.num("entropy.lr", low=0.0)
    c.str_("entropy.measure", choices=_ADAPTIVE_MEASURES, required=False)
    _ordered(c, "entropy.coef_min", "entropy.coef_max")
  elif method == "steer":
    c.num("entropy.w_min", low=0.0, high=1.0, low_open=True, required=False)
    c.num("entropy.w_max", low=0.0, low_open=True, required=False)
    c.str_("entropy.steer_mode", choices=_STEER_MODES, required=False)
    c.str_("entropy.steer_score", choices=_STEER_SCORES, required=False)
  elif method == "aent":
    c.num("entropy.coef_init", low=0.0, required=False)
    c.num("entropy.lr", low=0.0)
    _ordered(c, "entropy.h_low", "entropy.h_high", required=False)
    _ordered(c, "entropy.coef_min_aent", "entropy.coef_max_aent",
             required=False)


def _ordered(c: _Checker, low_field, high_field, required=True):
  lo = c.num(low_field, low=0.0, required=required)
  hi = c.num(high_field, low=0.0, required=required)
  if _MISSING not in (lo, hi) and lo > hi:
    c.add(low_field, f"{lo:g} > {high_field}={hi:g}; allowed: "
          f"{low_field} <= {high_field}")


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
  loss_t = c.num("loss.temperature", low=0.0, low_open=True)
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
  spec = c.value("reward.spec")
  if spec is not _MISSING and spec:
    try:
      reward_registry.get_reward_fn(spec)
    except (ValueError, TypeError, KeyError) as e:
      c.add("reward.spec", f"{spec!r}: {e}; allowed: one of those names, "
            "or a weighted spec like 'math:1.0,format:0.1'")
  elif spec is not _MISSING and not _get(c.config, "data.task"):
    c.add("reward.spec", "empty and data.task is empty; allowed: a reward "
          f"name in {sorted(reward_registry.REWARDS)} or a weighted spec")
  c.str_("reward.backend", choices=scoring.BACKENDS)
  c.num("reward.timeout_s", low=0.0, low_open=True)
  c.num("optim.lr", low=0.0, low_open=True)
  c.int_("optim.warmup_steps", low=0)
  c.str_("optim.schedule", choices=_LR_SCHEDULES)
  c.num("optim.weight_decay", low=0.0)
  c.num("optim.b1", low=0.0, high=1.0, high_open=True)
  c.num("optim.b2", low=0.0, high=1.0, high_open=True)
  c.num("optim.grad_clip", low=0.0, low_open=True, allow_none=True)


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
  c.str_("distributed.coordinator_address", required=False)
  num = c.int_("distributed.num_processes", low=0, required=False)
  pid = c.int_("distributed.process_id", low=-1, required=False)
  if _is_int(num) and _is_int(pid) and num > 0 and pid >= num:
    c.add("distributed.process_id", f"{pid} with distributed.num_processes="
          f"{num}; allowed: -1 (unset) or an id in [0, {num})")


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
  c.int_("eval.pass_k", low=0)
  c.num("eval.success_threshold")
  steps = c.int_("sft.steps", low=0)
  if sft_on and steps not in (_MISSING, 0):
    c.num("sft.lr", low=0.0, low_open=True)
    c.int_("sft.batch_size", low=1)
    c.int_("sft.num_examples", low=1)
    seq = c.int_("sft.seq_len", low=2)
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
                    num_processes: int | None = None) -> None:
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

  Raises:
    ConfigError: (a `ValueError`) with one line per problem:
      `<dotted.field>: <bad value>; allowed: <what is allowed>`.
  """
  c = _Checker(config)
  num_devices = jax.device_count() if num_devices is None else num_devices
  num_processes = (jax.process_count() if num_processes is None
                   else num_processes)
  sizes = _check_mesh(c, num_devices)
  dp = _data_parallel_size(c, sizes) if sizes is not None else None
  context = _check_model(c)
  max_prompt = _check_data(c)
  _check_entropy(c)
  _check_loss_and_rl(c)
  _check_batches(c, dp, num_processes)
  _check_distributed(c)
  model_path = _get(c.config, "model_path")
  _check_rest(c, context, max_prompt, sft_on=not model_path)
  if c.problems:
    raise ConfigError(c.problems)
