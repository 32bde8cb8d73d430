"""Checks an RL training config in one pass, before anything expensive.

`validate_config(config)` is the first thing `launch/train.py` and
`rl_loop.train_and_evaluate` do: before the policy is built, the supervised
warm start runs or anything is jitted. It reads the config (and, cheaply, the
file system for `model_path`/data paths) and raises ONE `ConfigError` that
lists every problem it found, each naming the dotted field, the bad value and
what is allowed — so a typo in a launch command costs seconds, not a
compilation (or a pod-slice allocation) per mistake.

Field by field, the rules are the typed blocks' own (`config_blocks`, the
entropy methods' parameter classes in `entropy.methods`, the policy losses'
in `rl.registry`): every field of the shipped configs is checked for type
and range whether or not the selected method reads it (`entropy.coef=-0.5`
is refused with `entropy.method=none` too). This module adds what only the
whole config can see: the mesh against the device count, batch divisibility
across data parallelism / mini- and micro-batches, prompt + completion
length against the model's context, the prompt files and the checkpoint
folder on disk, the task's difficulty knobs and the reward spec.
`unchecked_fields(config)` lists the leaves no check covers (a test keeps it
empty for the shipped configs); fields no block knows (added by newer code)
are left alone. `ignored_field_warnings(config, fields)` names overridden
fields that the selected methods do not read, and which method would.

Unknown keys and unparseable values given as `--config.x=y` are refused
earlier, in one line, by `jaxrl_ent.launch_flags` (every launcher parses its
flags with it); the type checks here catch configs built or edited in Python.
"""

import inspect
import json
import math
import os

import jax

from jaxrl_ent import checker
from jaxrl_ent import sharding
from jaxrl_ent.aot import chips
from jaxrl_ent.data import records
from jaxrl_ent.entropy import methods
from jaxrl_ent.models import config as config_lib
from jaxrl_ent.rewards import registry as reward_registry
from jaxrl_ent.rewards import tasks
from jaxrl_ent.rl import registry
from jaxrl_ent.train import config_blocks
from jaxrl_ent.train import factories
from jaxrl_ent.train import replicas

ConfigError = checker.ConfigError
_MISSING = checker.MISSING
_Checker = checker.Checker
_get = checker.get
_is_int = checker.is_int

ENTROPY_METHODS = methods.NAMES
ANNEALS = methods.ANNEALS
# The methods whose coefficient `rl.hparams.annealed` schedules.
ANNEALED_METHODS = tuple(methods.ANNEALED)
# entropy.<field> -> the methods that read it (from their parameter
# classes, `entropy.methods`), and `anneal` -> the annealed methods.
ENTROPY_READERS = methods.readers()
# entropy.anneal_<x> -> the `entropy.anneal` kinds that read it.
ANNEAL_READERS = {}
for _kind, _keys in methods.Anneal.READERS.items():
  for _key in _keys:
    ANNEAL_READERS[_key] = ANNEAL_READERS.get(_key, ()) + (_kind,)
del _kind, _keys, _key


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
  """The topology and the checkpoint folder; returns the context length
  when it can be known."""
  topology = _get(c.config, "topology")
  if isinstance(topology, str) and topology and not c.bad("topology"):
    try:
      chips.parse_topology(topology, field="topology")
    except ValueError as e:
      c.add("topology", str(e))
  model_path = _get(c.config, "model_path")
  if not isinstance(model_path, str):
    return None
  if model_path:
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
  if _get(c.config, "data.task") == "":
    c.add("model_path", "empty and data.task is empty; allowed: a local HF "
          "checkpoint folder, or a synthetic data.task to build a tiny "
          "model for")
    return None
  ctx = _good(c, "model.max_position_embeddings")
  return ctx if _is_int(ctx) else None


def _check_paths(c: _Checker, field: str, task):
  paths = _get(c.config, field)
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
  """The prompt source (files on disk, or the task's generator)."""
  task = _get(c.config, "data.task")
  task = task if isinstance(task, str) and not c.bad("data.task") else (
      _MISSING)
  for field in ("data.train_paths", "data.eval_paths"):
    _check_paths(c, field, task)
  seed = _get(c.config, "data.task_seed")
  kwargs = _get(c.config, "data.task_kwargs")
  if kwargs not in (_MISSING, None) and not hasattr(kwargs, "keys"):
    c.add("data.task_kwargs", f"got {kwargs!r}; allowed: a dict of the "
          "task's difficulty knobs")
  elif task not in (_MISSING, "") and kwargs is not _MISSING and (
      _is_int(seed)):
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


def _check_reward(c: _Checker):
  spec = _get(c.config, "reward.spec")
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


def _check_critic(c: _Checker):
  """A critic block when the estimator needs one; its warm-up shorter than
  the run; no critic with a LoRA policy yet."""
  estimator = _get(c.config, "advantage.estimator")
  if not (isinstance(estimator, str) and
          estimator in registry.CRITIC_ESTIMATORS):
    return
  if _get(c.config, "critic") is _MISSING:
    c.add("critic", f"missing with advantage.estimator={estimator!r}; "
          "allowed: a critic block (configs/grpo_tiny.critic_config)")
    return
  if _get(c.config, "lora.enabled") is True:
    c.add("advantage.estimator", f"{estimator!r} trains a critic, which a "
          "LoRA policy does not support yet (lora.enabled=True); allowed: "
          "a critic-free estimator with LoRA")
  warmup = _good(c, "critic.warmup_steps")
  steps = _good(c, "train.steps")
  if _is_int(warmup) and _is_int(steps) and warmup >= steps:
    c.add("critic.warmup_steps", f"{warmup} >= train.steps={steps}: the "
          f"policy would never train; allowed: fewer than {steps}")


def _check_lora(c: _Checker):
  sweep = [_get(c.config, f) for f in ("sweep.seeds", "sweep.grid")]
  if _get(c.config, "lora.enabled") is True and any(
      isinstance(v, str) and v.strip() for v in sweep):
    # The stacked rollout closes over the model's rest, which for LoRA is
    # the (donated) frozen base; one run per process for now.
    c.add("lora.enabled", "True with sweep.seeds / sweep.grid set; allowed: "
          "LoRA runs without replicas (run the seeds as separate runs)")


def _good(c: _Checker, field: str):
  """The value of `field` if its own check passed (else MISSING): the
  cross-field checks use each field that is valid, even in a block with
  another bad field."""
  v = _get(c.config, field)
  return _MISSING if c.bad(field) else v


def _check_batches(c: _Checker, dp: int | None, num_processes: int):
  prompts = _good(c, "train.prompts_per_step")
  if _is_int(prompts) and prompts % num_processes:
    c.add("train.prompts_per_step", f"{prompts} is not divisible by the "
          f"{num_processes} processes; allowed: a multiple of {num_processes}")
  minis = _good(c, "train.num_mini_batches")
  n, micro = _good(c, "rollout.n_samples"), _good(c, "loss.num_micro_batches")
  if not all(_is_int(v) for v in (prompts, minis, n, micro)):
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


def _check_wandb(c: _Checker):
  # pylint: disable=g-import-not-at-top
  import importlib.util
  if _get(c.config, "wandb.enabled") is True and (
      importlib.util.find_spec("wandb") is None):
    c.add("wandb.enabled", "True but the wandb package is not installed; "
          "allowed: False, or pip install -e '.[wandb]'")


def _check_rest(c: _Checker, context):
  resume = _get(c.config, "resume_from")
  if isinstance(resume, str) and resume and "://" not in resume and (
      not os.path.isdir(resume)):
    c.add("resume_from", f"{resume!r} is not a directory; allowed: '' or a "
          "checkpoint directory (or one step directory in it)")
  steps = _good(c, "sft.steps")
  if _get(c.config, "model_path") == "" and _is_int(steps) and steps > 0:
    task = _get(c.config, "data.task")
    acc = _good(c, "sft.demo_accuracy")
    if (checker.is_num(acc) and acc < 1.0 and isinstance(task, str)
        and task in tasks.TASKS and tasks.TASKS[task].mistake is None):
      c.add("sft.demo_accuracy", f"{acc} < 1 needs a task with a typical "
            f"mistake to demonstrate; data.task={task!r} has none (allowed: "
            f"1.0, or a task among "
            f"{sorted(k for k, t in tasks.TASKS.items() if t.mistake)})")
    seq = _good(c, "sft.seq_len")
    if context is not None and _is_int(seq) and seq > context:
      c.add("sft.seq_len", f"{seq} exceeds the model's context of {context} "
            f"tokens; allowed: at most {context}")
  prompt = _good(c, "data.max_prompt_length")
  new = _good(c, "rollout.max_new_tokens")
  if context is not None and _is_int(prompt) and _is_int(new) and (
      prompt + new > context):
    c.add("data.max_prompt_length", f"data.max_prompt_length ({prompt}) "
          f"+ rollout.max_new_tokens ({new}) = {prompt + new} exceeds the "
          f"model's context of {context} tokens; allowed: a sum of at most "
          f"{context}")


def validate_config(config, num_devices: int | None = None,
                    num_processes: int | None = None) -> checker.Checker:
  """Raises `ConfigError` listing every problem of an RL training config.

  Reads every typed block (`config_blocks`: types, ranges, allowed names,
  each entropy method's and policy loss's parameters, the anneal), then
  checks what only the whole config can: the mesh against the device
  count, batch divisibility (processes, data parallelism, mini- and
  micro-batches), the reward spec, the data source (files exist, the
  task's knobs), the checkpoint folder, and prompt + completion length
  against the context. Compiles nothing and builds no model.

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
  config_blocks.read(c)
  context = _check_model(c)
  _check_data(c)
  _check_reward(c)
  _check_critic(c)
  _check_lora(c)
  _check_batches(c, dp, num_processes)
  if _get(c.config, "wandb") is not _MISSING:
    _check_wandb(c)
  _check_rest(c, context)
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
  losses = registry.POLICY_LOSSES
  users = tuple(n for n in losses.in_order()
                if block == "loss" and name in losses.params(n).keys())
  if users:
    # Clip-Cov clips with the PPO range whichever policy loss runs.
    clip_cov = name in ("clip_eps_low", "clip_eps_high")
    return ("loss.policy_loss in " + "|".join(users) +
            (" or entropy.method=clip_cov" if clip_cov else ""),
            loss in users or (clip_cov and method == "clip_cov"))
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
  if block == "model" and name not in (
      ("dtype",) + config_lib.EXECUTION_FIELDS):
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
