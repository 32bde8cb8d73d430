"""The typed blocks of an RL training config (`configs/grpo_*.py`).

One frozen `schema.Block` per concern, each field with its rule. They are
read from the ConfigDict twice: by `train/validate.py`, which checks every
block whether or not the run uses it (a wrong value of an unused field is a
wrong belief about the run) and adds the checks only the whole config can
make (mesh against devices, batch divisibility, files, context length); and
by `train/factories.py` (`parse`), which builds the update's structure and
hyperparameters from the typed values.

The entropy block is `Entropy`: the method name, its `entropy.methods`
parameter class and the `Anneal` block; the policy losses' parameters are
classes of `rl.registry.POLICY_LOSSES`.
"""

import dataclasses
import re
import string
from typing import Any

from jaxrl_ent import checker
from jaxrl_ent import schema
from jaxrl_ent.data import tokenization
from jaxrl_ent.entropy import methods
from jaxrl_ent.models import config as config_lib
from jaxrl_ent.models import decode_attention
from jaxrl_ent.models import lora as lora_lib
from jaxrl_ent.rewards import scoring
from jaxrl_ent.rewards import tasks
from jaxrl_ent.rl import critic as critic_lib
from jaxrl_ent.rl import hparams as hparams_lib
from jaxrl_ent.rl import kl
from jaxrl_ent.rl import registry
from jaxrl_ent.train import distributed
from jaxrl_ent.train import wandb_writer

MISSING = checker.MISSING
DTYPES = ("float32", "bfloat16")
# models/tiny_hf.tiny_tokenizer: 256 byte symbols + 4 special tokens is the
# smallest vocabulary it builds (a smaller request silently gives 260).
MIN_TOKENIZER_VOCAB = 260
MAX_TOKENIZER_VOCAB = 1 << 20


def _opt(make, default, **kw):
  return make(default, required=False, **kw)


@dataclasses.dataclass(frozen=True)
class Top(schema.Block):
  """The top-level fields."""
  seed: int = schema.int_()
  model_path: str = schema.str_()
  resume_from: str = schema.str_()
  tensorboard: bool = _opt(schema.bool_, True)
  job: str = _opt(schema.str_, "")
  topology: str = _opt(schema.str_, "", nonempty=True)


@dataclasses.dataclass(frozen=True)
class Model(schema.Block):
  """`model`: the tiny model's dimensions (a checkpoint's config.json
  decides when `model_path` is set), precision, remat."""
  dtype: str = _opt(schema.str_, "float32", choices=DTYPES)
  remat: bool = _opt(schema.bool_, False)
  # How the model runs (`models.config.EXECUTION_FIELDS`), for the tiny
  # model and a checkpoint alike.
  remat_policy: str = _opt(schema.str_, "",
                           choices=("",) + config_lib.REMAT_POLICIES)
  attention_impl: str = _opt(schema.str_, "auto",
                             choices=config_lib.ATTENTION_IMPLS)
  scan_unroll: int = _opt(schema.int_, 1, low=1)
  hidden_size: int | None = schema.int_(None, low=1)
  intermediate_size: int | None = schema.int_(None, low=1)
  num_layers: int | None = schema.int_(None, low=1)
  num_heads: int | None = schema.int_(None, low=1)
  num_kv_heads: int | None = schema.int_(None, low=1)
  max_position_embeddings: int | None = schema.int_(None, low=1)
  tie_word_embeddings: bool = _opt(schema.bool_, True)
  # Fields of the TPU ahead-of-time configs (configs/tpu_grpo.py), which
  # describe the checkpoint's model without reading it.
  model_type: str | None = _opt(schema.str_, None,
                                choices=config_lib.SUPPORTED_MODEL_TYPES)
  param_dtype: str | None = _opt(schema.str_, None, choices=DTYPES)
  head_dim: int | None = _opt(schema.int_, None, low=1)
  vocab_size: int | None = _opt(schema.int_, None, low=1)
  rms_norm_eps: float | None = _opt(schema.num, None, low=0.0, low_open=True)
  rope_theta: float | None = _opt(schema.num, None, low=0.0, low_open=True)

  DIMS = ("hidden_size", "intermediate_size", "num_layers", "num_heads",
          "num_kv_heads", "max_position_embeddings")

  def options(self) -> dict[str, Any]:
    """The `ModelConfig` execution fields this block sets ("" remat
    policy = None: from `remat`)."""
    out = {f: getattr(self, f) for f in config_lib.EXECUTION_FIELDS}
    out["remat_policy"] = out["remat_policy"] or None
    return out

  def problems(self, prefix):
    out = []
    h, nh, nkv = self.hidden_size, self.num_heads, self.num_kv_heads
    if None not in (h, nh) and h % nh:
      out.append((f"{prefix}.hidden_size", f"{h} is not divisible by "
                  f"{prefix}.num_heads={nh}; allowed: a multiple of "
                  "num_heads"))
    if None not in (nh, nkv) and nh % nkv:
      out.append((f"{prefix}.num_kv_heads", f"{nkv} does not divide "
                  f"{prefix}.num_heads={nh}; allowed: a divisor of "
                  "num_heads"))
    return out


def _template_test(template: str):
  try:
    names = [n for _, n, _, _ in string.Formatter().parse(template)
             if n is not None]
  except ValueError as e:
    return (f"{template!r} is not a format string ({e}); allowed: text with "
            "{prompt} / {<record field>} placeholders (write {{ and }} for "
            "braces)")
  if any(not n or not n.isidentifier() for n in names):
    return (f"{template!r} has a positional or non-identifier placeholder; "
            "allowed: named fields such as {prompt}")
  if not names:
    return (f"{template!r} has no placeholder, so every prompt would be "
            "this same text; allowed: a template with {prompt} (or another "
            "record field)")
  return None


@dataclasses.dataclass(frozen=True)
class Data(schema.Block):
  """`data`: a synthetic task or prompt files, and how prompts are built.

  The paths and the task's difficulty knobs are checked by `validate`
  (files on disk; the task's own generator).
  """
  task: str = schema.str_(choices=lambda: ("",) + tuple(sorted(tasks.TASKS)))
  train_paths: Any = schema.any_()
  eval_paths: Any = schema.any_()
  task_size: int = schema.int_(low=1)
  task_seed: int = schema.int_()
  task_kwargs: Any = _opt(schema.any_, None)
  tokenizer_vocab_size: int = _opt(
      schema.int_, 320, low=MIN_TOKENIZER_VOCAB, high=MAX_TOKENIZER_VOCAB,
      why=" (the tiny byte-level BPE tokenizer: 256 bytes + 4 special "
      "tokens at least)")
  prompt_field: str = schema.str_(nonempty=True)
  answer_field: str = schema.str_()
  id_field: str = schema.str_()
  system_prompt: str = schema.str_()
  template: str = schema.str_(nonempty=True, test=_template_test)
  chat_template: bool = schema.bool_()
  on_overlong: str = schema.str_(choices=tokenization.OVERLONG_POLICIES)
  max_prompt_length: int = schema.int_(low=1)

  def problems(self, prefix):
    if self.chat_template is False and self.system_prompt:
      return [(f"{prefix}.system_prompt", "set while data.chat_template="
               "False; allowed: a system prompt only with the chat template")]
    return []


@dataclasses.dataclass(frozen=True)
class Entropy:
  """`entropy`: the method, its typed parameters and the anneal."""
  method: str
  params: schema.Block
  anneal: methods.Anneal


def check_entropy(c: checker.Checker, prefix: str = "entropy"):
  """Every entropy field, whichever method is selected; the selected
  method's fields are required. Returns `Entropy` or None."""
  method = c.str_(f"{prefix}.method", choices=methods.NAMES)
  kind = c.str_(f"{prefix}.anneal", choices=methods.ANNEALS, required=False)
  selected = method if isinstance(method, str) else None
  params = schema.check_entries(c, prefix, methods.METHODS, selected)
  annealing = selected in methods.ANNEALED
  kind = "constant" if kind is MISSING else kind
  timed = annealing and kind in ("linear", "cosine")
  power = annealing and kind == "inverse_power"
  end = ({"high": 1.0, "why": " (cosine's final fraction)"}
         if timed and kind == "cosine" else {})
  anneal = methods.Anneal.check(c, prefix, skip={"anneal"}, adjust={
      "anneal_steps": {"required": timed},
      "anneal_end": {"required": timed, **end},
      "anneal_tau": {"required": power},
      "anneal_power": {"required": power}})
  if params is None or anneal is None or c.bad(f"{prefix}.anneal"):
    return None
  return Entropy(method=selected, params=params, anneal=anneal)


@dataclasses.dataclass(frozen=True)
class Loss(schema.Block):
  """`loss`: the policy loss (its parameters: `registry.POLICY_LOSSES`),
  aggregation, KL terms, chunking. The loss scores tokens at
  `rollout.temperature` (verl semantics), so there is no loss temperature."""
  policy_loss: str = schema.registry(registry.POLICY_LOSSES)
  agg_mode: str = schema.registry(registry.AGG_MODES)
  kl_kind: str = schema.registry(registry.KL_ESTIMATORS)
  kl_in_reward_kind: str = _opt(schema.str_, "kl", choices=kl.KL_KINDS)
  kl_coef: float = schema.num(low=0.0, hparam=True)
  kl_in_reward_coef: float = _opt(schema.num, 0.0, low=0.0, hparam=True)
  token_chunk: int = schema.int_(low=1)
  vocab_chunk: int | None = _opt(schema.int_, None, low=1, allow_none=True)
  num_micro_batches: int = schema.int_(low=1)
  loss_scale_factor: float | None = _opt(schema.num, None, low=0.0,
                                         low_open=True, allow_none=True)


def check_policy_loss(c: checker.Checker, prefix: str = "loss"):
  """The parameters of every policy loss (the selected one's required), and
  Clip-Cov's clip range (`loss.clip_eps_*`). Returns the selected loss's
  parameter block, or None."""
  name = checker.get(c.config, f"{prefix}.policy_loss")
  selected = name if name in registry.POLICY_LOSSES else None
  return schema.check_entries(c, prefix, registry.POLICY_LOSSES, selected)


@dataclasses.dataclass(frozen=True)
class Rollout(schema.Block):
  """`rollout`: sampling and the decode loop."""
  max_new_tokens: int = schema.int_(low=1)
  temperature: float = schema.num(low=0.0, low_open=True)
  top_p: float = schema.num(low=0.0, high=1.0, low_open=True)
  top_k: int = schema.int_(low=0)
  n_samples: int = schema.int_(low=1)
  continuous: bool = _opt(schema.bool_, False)
  num_slots: int = _opt(schema.int_, 0, low=0)
  decode_attention: str = _opt(schema.str_, "auto",
                               choices=decode_attention.CHOICES)


@dataclasses.dataclass(frozen=True)
class Reward(schema.Block):
  """`reward`: the spec (checked by `validate` against the registry), where
  it is scored, and the time budgets."""
  spec: Any = schema.any_()
  backend: str = schema.str_(choices=scoring.BACKENDS)
  timeout_s: float = schema.num(low=0.0, low_open=True,
                                why=" (seconds per reward call)")
  batch_timeout_s: float | None = _opt(
      schema.num, None, low=0.0, low_open=True, allow_none=True,
      why=" (seconds to score one batch; None: no budget)")


@dataclasses.dataclass(frozen=True)
class Advantage(schema.Block):
  """`advantage`: the estimator (its parameters, e.g. GAE's γ and λ, are
  its class in `registry.ADVANTAGE_ESTIMATORS`)."""
  estimator: str = schema.registry(registry.ADVANTAGE_ESTIMATORS)


@dataclasses.dataclass(frozen=True)
class Optim(schema.Block):
  """`optim`: global-norm clip → AdamW (or SGD) → lr schedule."""
  lr: float = schema.num(low=0.0, low_open=True, hparam=True)
  warmup_steps: int = schema.int_(low=0)
  schedule: str = schema.str_(choices=hparams_lib.LR_SCHEDULES)
  name: str = _opt(schema.str_, "adamw", choices=hparams_lib.OPTIMIZERS)
  weight_decay: float = schema.num(low=0.0, hparam=True)
  b1: float = schema.num(low=0.0, high=1.0, high_open=True, hparam=True)
  b2: float = schema.num(low=0.0, high=1.0, high_open=True, hparam=True)
  eps: float = _opt(schema.num, 1e-8, low=0.0, low_open=True, hparam=True)
  grad_clip: float | None = schema.num(low=0.0, low_open=True,
                                       allow_none=True, hparam=True)
  end_fraction: float = _opt(schema.num, 0.0, low=0.0, high=1.0)


@dataclasses.dataclass(frozen=True)
class Critic(schema.Block):
  """`critic` (`rl.critic`; read when the estimator needs one, `gae`)."""
  kind: str = schema.str_("head", choices=critic_lib.KINDS)
  lr: float = schema.num(1e-2, low=0.0, low_open=True, hparam=True)
  warmup_steps: int = _opt(schema.int_, 0, low=0)
  cliprange_value: float = _opt(schema.num, 0.5, low=0.0, low_open=True,
                                hparam=True, why=" (verl cliprange_value)")
  agg_mode: str | None = schema.registry(registry.AGG_MODES, None,
                                         required=False)
  weight_decay: float = _opt(schema.num, 0.0, low=0.0, hparam=True)
  grad_clip: float | None = _opt(schema.num, 1.0, low=0.0, low_open=True,
                                 allow_none=True, hparam=True)


def _targets_test(targets: str):
  names = [t.strip() for t in targets.split(",") if t.strip()]
  if not names or any(t not in lora_lib.TARGETS for t in names):
    return (f"got {targets!r}; allowed: comma-separated names from "
            f"{tuple(lora_lib.TARGETS)}")
  return None


@dataclasses.dataclass(frozen=True)
class Lora(schema.Block):
  """`lora` (configs/common.lora_config, models/lora.py)."""
  enabled: bool = schema.bool_()
  rank: int = schema.int_(8, low=1)
  alpha: float = schema.num(16.0, low=0.0, low_open=True)
  quant: str = schema.str_("none", choices=lora_lib.QUANT)
  seed: int = _opt(schema.int_, 0, low=0)
  dropout: float = _opt(
      schema.num, 0.0, low=0.0, high=0.0,
      why=" (a dropout mask would make the trained policy differ from the "
      "one that sampled the rollout)")
  targets: str = schema.str_(",".join(lora_lib.ALL_TARGETS),
                             test=_targets_test)


@dataclasses.dataclass(frozen=True)
class Train(schema.Block):
  """`train`: the RL loop's length, batch and update structure."""
  steps: int = schema.int_(low=1)
  prompts_per_step: int = schema.int_(low=1)
  ppo_epochs: int = schema.int_(low=1)
  num_mini_batches: int = schema.int_(low=1)
  max_consecutive_skips: int = schema.int_(low=1)
  measure_every: int = schema.int_(low=0)
  recompute_old_logp: bool = schema.bool_()
  # Sequence packing of the update's forwards (`rl.train_step.LossConfig`).
  pack_fraction: float = _opt(schema.num, 0.0, low=0.0, high=1.0,
                              why=" (0 = off)")
  pack_row_len: int = _opt(schema.int_, 0, low=0, why=" (0 = P + C)")


@dataclasses.dataclass(frozen=True)
class Checkpoint(schema.Block):
  every: int = schema.int_(low=1)
  keep: int = schema.int_(low=1)
  async_save: bool = _opt(schema.bool_, True)


@dataclasses.dataclass(frozen=True)
class Eval(schema.Block):
  """`eval`: held-out greedy accuracy and the unbiased pass@k."""
  every: int = schema.int_(low=0)
  num_examples: int = schema.int_(low=1)
  batch_size: int = schema.int_(low=1)
  pass_k: int = schema.int_(low=0)
  num_samples: int = _opt(schema.int_, 0, low=0,
                          why=" (0 = pass_k samples per prompt)")
  success_threshold: float = schema.num()

  def problems(self, prefix):
    if 0 < self.num_samples < self.pass_k:
      return [(f"{prefix}.num_samples", f"{self.num_samples} < "
               f"{prefix}.pass_k={self.pass_k}; the unbiased pass@k needs "
               "n >= k samples (allowed: 0 or >= eval.pass_k)")]
    return []


@dataclasses.dataclass(frozen=True)
class Sft(schema.Block):
  """`sft`: the tiny model's supervised warm start (required when it runs:
  no `model_path` and `steps > 0`)."""
  steps: int = schema.int_(low=0)
  lr: float = schema.num(3e-3, low=0.0, low_open=True)
  batch_size: int = schema.int_(64, low=1)
  num_examples: int = schema.int_(5000, low=1)
  seq_len: int = schema.int_(32, low=2)
  demo_accuracy: float = _opt(schema.num, 1.0, low=0.0, high=1.0)
  seed: int = _opt(schema.int_, -1, low=-1,
                   why=" (-1 = the run's seed; policy_setup.warm_start_seed)")


_ADDRESS = re.compile(r"(\[[0-9a-fA-F:]+\]|[^\s:\[\]]+):\d{1,5}")


def _address_test(address: str):
  if address and not _ADDRESS.fullmatch(address):
    return (f"got {address!r}; allowed: '' (unset) or host:port, e.g. "
            "10.0.0.2:1234")
  return None


@dataclasses.dataclass(frozen=True)
class Distributed(schema.Block):
  """`distributed` (train/distributed.py)."""
  initialize: str = _opt(schema.str_, "auto", choices=distributed.MODES)
  coordinator_address: str = _opt(schema.str_, "", test=_address_test)
  num_processes: int = _opt(schema.int_, 0, low=0)
  process_id: int = _opt(schema.int_, -1, low=-1)

  def problems(self, prefix):
    if self.num_processes > 0 and self.process_id >= self.num_processes:
      return [(f"{prefix}.process_id", f"{self.process_id} with "
               f"{prefix}.num_processes={self.num_processes}; allowed: -1 "
               f"(unset) or an id in [0, {self.num_processes})")]
    return []


def _tags_test(tags):
  if not (isinstance(tags, (list, tuple)) and
          all(isinstance(t, str) and t for t in tags)):
    return f"got {tags!r}; allowed: a list of non-empty strings"
  return None


@dataclasses.dataclass(frozen=True)
class Wandb(schema.Block):
  """`wandb` (train/wandb_writer.py)."""
  enabled: bool = schema.bool_()
  project: str = _opt(schema.str_, "")
  entity: str = _opt(schema.str_, "")
  name: str = _opt(schema.str_, "")
  group: str = _opt(schema.str_, "")
  notes: str = _opt(schema.str_, "")
  dir: str = _opt(schema.str_, "")
  mode: str = _opt(schema.str_, "online", choices=wandb_writer.MODES)
  tags: Any = _opt(schema.any_, (), test=_tags_test)


@dataclasses.dataclass(frozen=True)
class Sweep(schema.Block):
  """`sweep` (train/replicas.py): seeds × grid points in one program."""
  seeds: str = _opt(schema.str_, "")
  grid: str = _opt(schema.str_, "")


@dataclasses.dataclass(frozen=True)
class Run:
  """The typed blocks of a config (`parse`)."""
  top: Top
  model: Model
  data: Data
  entropy: Entropy
  loss: Loss
  policy_loss: schema.Block
  rollout: Rollout
  reward: Reward
  advantage: Advantage
  estimator: schema.Block | None  # The estimator's parameters, if any.
  optim: Optim
  critic: Critic | None
  lora: Lora | None
  train: Train
  checkpoint: Checkpoint
  eval: Eval
  sft: Sft


def read(c: checker.Checker) -> dict[str, Any]:
  """Every block of `c.config` the trainer reads, typed (None where bad).

  Blocks the run does not use are checked with nothing required (their
  values must still be valid); the caller adds the whole-config checks.
  """
  config = c.config
  get = lambda f: checker.get(config, f)
  top = Top.check(c, "")
  tiny = get("model_path") == ""
  model = Model.check(c, "model", adjust={
      d: {"required": tiny} for d in Model.DIMS})
  data = Data.check(c, "data")
  entropy = check_entropy(c)
  loss = Loss.check(c, "loss")
  policy_loss = check_policy_loss(c)
  rollout = Rollout.check(c, "rollout")
  reward = Reward.check(c, "reward")
  advantage = Advantage.check(c, "advantage")
  estimator = get("advantage.estimator")
  estimator_params = schema.check_entries(
      c, "advantage", registry.ADVANTAGE_ESTIMATORS,
      estimator if estimator in registry.ADVANTAGE_ESTIMATORS else None)
  optim = Optim.check(c, "optim")
  critic_used = (isinstance(estimator, str) and
                 estimator in registry.CRITIC_ESTIMATORS)
  critic = (Critic.check(c, "critic", required=critic_used)
            if get("critic") is not MISSING else None)
  lora = None
  if get("lora") is not MISSING:
    on = get("lora.enabled")
    lora = Lora.check(c, "lora", required=on is True, adjust={
        "enabled": {"required": True}})
  train = Train.check(c, "train")
  checkpoint = Checkpoint.check(c, "checkpoint")
  eval_ = Eval.check(c, "eval")
  sft_steps = get("sft.steps")
  sft_used = tiny and checker.is_int(sft_steps) and sft_steps > 0
  sft = Sft.check(c, "sft", required=sft_used, adjust={
      "steps": {"required": True}})
  out = dict(top=top, model=model, data=data, entropy=entropy, loss=loss,
             policy_loss=policy_loss, rollout=rollout, reward=reward,
             advantage=advantage, estimator=estimator_params, optim=optim,
             critic=critic, lora=lora, train=train, checkpoint=checkpoint,
             eval=eval_, sft=sft)
  if get("distributed") is not MISSING:
    out["distributed"] = Distributed.check(c, "distributed", required=False)
  if get("wandb") is not MISSING:
    on = get("wandb.enabled")
    out["wandb"] = Wandb.check(c, "wandb", adjust={
        "project": {"nonempty": on is True}})
  if get("sweep") is not MISSING:
    out["sweep"] = Sweep.check(c, "sweep")
  return out


def parse(config) -> Run:
  """The typed `Run` of `config`; `checker.ConfigError` listing every bad
  field (the factories' entry point; `validate.validate_config` adds the
  whole-config checks and is what launchers call first)."""
  c = checker.Checker(config)
  blocks = read(c)
  run_fields = {f.name for f in dataclasses.fields(Run)}
  needed = {k: v for k, v in blocks.items() if k in run_fields}
  optional = ("critic", "lora", "estimator")
  if c.problems or any(v is None for k, v in needed.items()
                       if k not in optional):
    raise checker.ConfigError(c.problems or [
        (k, "missing fields (the trainer reads this block)")
        for k, v in needed.items() if v is None and k not in optional])
  return Run(**needed)


def model_options(config) -> dict[str, Any]:
  """`config.model`'s execution options (`Model.options`), checked: the
  one reader of remat, attention kernel and scan unroll for every place
  that builds a `ModelConfig` (tiny model, checkpoint, export, AOT)."""
  c = checker.Checker(config)
  model = Model.check(c, "model", adjust={
      d: {"required": False} for d in Model.DIMS})
  if c.problems or model is None:
    raise checker.ConfigError(c.problems or [("model", "not a block")])
  return model.options()
