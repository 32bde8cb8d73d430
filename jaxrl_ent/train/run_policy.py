"""A run's policy: restored from its checkpoints, and evaluated held-out.

Used by the evaluate, export and sft launchers.

`restore_policy(config, ckpt_dir, mesh, step=None)` rebuilds the run's
`TrainState` *abstractly* (no weights are allocated: `nnx.eval_shape` for the
model, `jax.eval_shape` for the optimizer and controller states, shardings
from `sharding.train_state_shardings`, as the trainer places them), restores a
verified step into it with `checkpoint.Checkpointer` (checksums, fallback to
the previous good step) and returns the policy with the restored parameters.

The optimizer and the entropy controller are built exactly as the trainer
builds them, because the checkpoint holds their states and `restore` checks
the whole tree: pass the config the run was launched with (preset and
structural overrides included, e.g. `:entropy=clip_cov`). A mismatch is a
`ValueError` that names the first differing leaf.
"""

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import tqdm
from flax import nnx

from jaxrl_ent import models
from jaxrl_ent import rewards as rewards_lib
from jaxrl_ent import sharding
from jaxrl_ent import storage
from jaxrl_ent.models import hf_io
from jaxrl_ent.train import checkpoint
from jaxrl_ent.train import config_blocks
from jaxrl_ent.train import factories
from jaxrl_ent.train import policy_setup
from jaxrl_ent.train import evaluation
from jaxrl_ent.rl import state as state_lib
from jaxrl_ent.rl import update as update_lib

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_config_and_tokenizer(config):
  """(ModelConfig, tokenizer) of the run's policy, without building weights.

  `config.model_path` (its config.json and tokenizer), else the tiny model of
  `config.model` with the task's tokenizer (deterministic: the same one the
  run built).
  """
  dtype = _DTYPES[config.model.get("dtype", "float32")]
  if config.model_path:
    cfg = hf_io.load_config(config.model_path, dtype=dtype,
                            options=config_blocks.model_options(config))
    return cfg, models.load_tokenizer(config.model_path)
  if not config.data.task:
    raise ValueError("config.model_path is empty and config.data.task is not "
                     "set: cannot tell which model the run trained.")
  tokenizer = policy_setup.build_tokenizer_for_task(config.data)
  return policy_setup.tiny_model_config(config, tokenizer), tokenizer


def abstract_train_state(config, model_cfg, mesh):
  """(graphdef, rest, abstract TrainState with shardings); allocates nothing.

  Returns:
    graphdef and non-parameter state of the model (to merge restored params
    into), and a `TrainState` of `jax.ShapeDtypeStruct`s carrying the
    shardings the trainer's jitted init gives each leaf on `mesh`.
  """
  rules = sharding.merge_rules(dict(config.sharding.rules))
  abstract_model = nnx.eval_shape(
      lambda: models.DecoderLM(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, abs_params, rest = state_lib.split_model(abstract_model)
  if jax.tree.leaves(rest):
    # Today the model holds parameters only; anything else would need real
    # values here, not shapes.
    raise NotImplementedError("the model has non-parameter state "
                              f"{list(nnx.to_flat_state(rest))}.")
  abs_params = checkpoint.abstract_like(
      abs_params, hf_io.target_shardings(abs_params, mesh, rules))
  spec = factories.update_spec(config)
  hparams = factories.initial_hparams(config)

  def create(params):
    return update_lib.init_state(spec, params, hparams)

  # Where the trainer keeps each leaf: the one helper its init and update
  # use too.
  shapes = jax.eval_shape(create, abs_params)
  shardings = sharding.train_state_shardings(shapes, mesh, rules)
  return graphdef, rest, checkpoint.abstract_like(shapes, shardings)


def lora_train_state(config, ckpt_dir, mesh):
  """(graphdef, frozen base, abstract TrainState, tokenizer) of a LoRA run.

  Its checkpoints hold the adapters and their optimizer state only; the
  frozen base is rebuilt from where the run got it (`config.model_path`,
  or the warm-started policy cached in `<workdir>/sft_policy` next to
  `ckpt_dir`), with the adapters the run starts from (`policy_setup`).
  """
  import os  # pylint: disable=g-import-not-at-top
  workdir = os.path.dirname(str(ckpt_dir).rstrip("/"))
  policy, tokenizer = policy_setup.build_policy(config, mesh, workdir)
  graphdef, params, rest = state_lib.split_model(policy)
  rules = sharding.merge_rules(dict(config.sharding.rules))
  spec = factories.update_spec(config)
  hparams = factories.initial_hparams(config)
  shapes = jax.eval_shape(
      lambda p: update_lib.init_state(spec, p, hparams), params)
  shardings = sharding.train_state_shardings(shapes, mesh, rules)
  return graphdef, rest, checkpoint.abstract_like(shapes, shardings), tokenizer


def checkpoint_steps(ckpt_dir) -> list[int]:
  """Finalized steps in `ckpt_dir`, ascending.

  Raises:
    FileNotFoundError: the directory does not exist or holds no finalized
      step; the message names the directory.
  """
  path = storage.path(ckpt_dir)
  if not path.is_dir():
    raise FileNotFoundError(
        f"no checkpoint directory {path}: pass the --workdir of a run "
        "launched with launch/train.py (checkpoints live in <workdir>/ckpt), "
        "or --checkpoint_dir.")
  steps = checkpoint.Checkpointer(path, read_only=True).all_steps()
  if not steps:
    raise FileNotFoundError(f"{path} holds no finalized checkpoint step "
                            "(the run has not saved one yet).")
  return steps


def restore_policy(config, ckpt_dir, mesh, step: int | None = None):
  """The run's policy at `step` (default: the newest verified step).

  Args:
    config: the run's config (see the module docstring).
    ckpt_dir: the run's checkpoint directory (`<workdir>/ckpt`).
    mesh: where to place the parameters (any mesh: orbax reshards).
    step: a saved step; None for the newest one that verifies.

  Returns:
    (policy, tokenizer, restored step, meta dict saved with the step).

  Raises:
    FileNotFoundError: no checkpoint directory, no step in it, or `step` is
      not a saved step (the message lists the saved ones).
    ValueError: `config` does not describe the saved state.
    checkpoint.CheckpointIntegrityError: no step at or below `step` verifies.
  """
  steps = checkpoint_steps(ckpt_dir)
  if step is not None and step not in steps:
    raise FileNotFoundError(f"{ckpt_dir} has no step {step}; saved steps: "
                            f"{steps}.")
  if policy_setup.lora_spec(config) is not None:
    graphdef, rest, abstract, tokenizer = lora_train_state(config, ckpt_dir,
                                                           mesh)
  else:
    model_cfg, tokenizer = model_config_and_tokenizer(config)
    graphdef, rest, abstract = abstract_train_state(config, model_cfg, mesh)
  ckpt = checkpoint.Checkpointer(ckpt_dir, read_only=True)
  try:
    state, _, meta, restored = ckpt.restore(abstract, step=step)
  except ValueError as e:
    diff = config_diff(saved_config(ckpt_dir, step or steps[-1]),
                       config.to_dict())
    raise ValueError(
        f"{e} Pass the config {ckpt_dir} was trained with, with the same "
        "variants and structural overrides; it differs from the saved one in "
        f"{diff or 'no field (the code changed?)'}.") from None
  finally:
    ckpt.close()
  return nnx.merge(graphdef, state.params, rest), tokenizer, restored, meta


def saved_config(ckpt_dir, step: int) -> dict:
  """The config dict saved with `step` (its `meta` item; not verified)."""
  manager = ocp.CheckpointManager(
      ckpt_dir, item_names=("meta",),
      options=ocp.CheckpointManagerOptions(read_only=True, create=False))
  try:
    meta = manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]
  except Exception:  # pylint: disable=broad-except
    return {}  # Only used to explain another error; never raise over it.
  finally:
    manager.close()
  return meta.get("config", {})


def config_diff(saved: dict, given: dict, limit: int = 6) -> str:
  """`field: saved -> given` for the structural fields that differ."""
  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      if isinstance(v, dict):
        out.update(flat(v, f"{prefix}{k}."))
      else:
        out[f"{prefix}{k}"] = v
    return out
  a, b = flat(saved), flat(given)
  structural = ("model.", "entropy.", "optim.", "loss.", "train.")
  # JSON turned tuples into lists; compare like with like.
  norm = lambda v: list(v) if isinstance(v, tuple) else v
  diffs = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
           if k.startswith(structural) and norm(a.get(k)) != norm(b.get(k))]
  more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
  return "; ".join(diffs[:limit]) + more


def evaluate_policy(config, policy, tokenizer, mesh) -> dict[str, float]:
  """The trainer's held-out evaluation of `policy` (`evaluation.Evaluator`).

  Greedy accuracy and reward, and pass@`eval.pass_k` at the rollout
  temperature, on `eval.num_examples` held-out prompts, with the trainer's
  evaluation key.
  """
  reward_fn = evaluation.make_reward_fn(config)
  scorer = rewards_lib.RewardScorer(backend=config.reward.backend)
  evaluator = evaluation.Evaluator(config, tokenizer, reward_fn, scorer,
                               mesh=mesh)
  if isinstance(getattr(evaluator, "batches", None), list):
    # A progress bar over the held-out batches (the Evaluator walks this
    # list once per call); large evaluations take minutes.
    evaluator.batches = tqdm.tqdm(
        evaluator.batches, desc="evaluate", unit="batch", leave=False,
        disable=jax.process_index() != 0)
  with sharding.use_mesh(mesh):
    return evaluator(policy, jax.random.key(evaluation.EVAL_KEY_SEED), mesh)
