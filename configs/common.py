"""Shared config helpers: `parse_arg` for `get_config(arg)` variants."""

import ml_collections


def parse_arg(arg: str | None, **defaults):
  """Parses `"size=tiny,runlocal"` into a ConfigDict with typed defaults.

  A bare name sets a boolean default to True. Values are cast to the type
  of their default.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    if not item:
      continue
    if "=" in item:
      name, value = item.split("=", 1)
    else:
      name, value = item, "True"
    if name not in defaults:
      raise ValueError(f"config argument {name!r} is not one of "
                       f"{sorted(defaults)}.")
    kind = type(defaults[name])
    if kind is bool:
      out[name] = value.lower() in ("1", "true", "yes")
    else:
      out[name] = kind(value)
  return out


def lora_config(enabled: bool = False, rank: int = 8, alpha: float = 16.0,
                quant: str = "none", targets: str = ("q_proj,k_proj,v_proj,"
                                                      "o_proj,gate_proj,"
                                                      "up_proj,down_proj")
                ) -> ml_collections.ConfigDict:
  """The `lora` block (jaxrl_ent/models/lora.py): LoRA adapters as the only
  trainable parameters, the base frozen (`quant` int8 / nf4: QLoRA).

  targets: comma-separated PEFT module names. dropout: only 0.0 (a dropout
  mask would make the trained policy differ from the one that sampled the
  rollout, and the exact entropy dynamics from the realised step).
  """
  return ml_collections.ConfigDict(dict(
      enabled=enabled, rank=rank, alpha=alpha, dropout=0.0, targets=targets,
      quant=quant, seed=0))


def wandb_config(enabled: bool = False, project: str = "jaxrl_ent",
                 mode: str = "online") -> ml_collections.ConfigDict:
  """The `wandb` block (jaxrl_ent/train/wandb_writer.py): Weights & Biases
  as a third metrics writer beside metrics.jsonl and TensorBoard, off by
  default (`wandb` is imported only when enabled).

  mode: "online", "offline" (files only; `wandb sync` later) or
  "disabled". name, group, entity, notes: "" = W&B's default (name: the run
  directory's name). dir: W&B's local files ("" = $WANDB_DIR or ./wandb).
  """
  return ml_collections.ConfigDict(dict(
      enabled=enabled, project=project, entity="", name="", group="",
      tags=(), notes="", mode=mode, dir=""))
