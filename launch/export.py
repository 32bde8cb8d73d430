r"""Exports a run's policy to an HF-format folder (transformers, vLLM, ...).

  python launch/export.py --config=configs/grpo_tiny.py \
      --workdir=/tmp/grpo_tiny
  python launch/export.py --config=configs/grpo_tiny.py:entropy=clip_cov \
      --workdir=/tmp/cc --step=200 --output_dir=/tmp/cc_step200 \
      --dtype=bfloat16

Restores a verified checkpoint step of the run (`<workdir>/ckpt` or
--checkpoint_dir; the newest one, or --step), puts its parameters into the
model and writes `config.json`, `model.safetensors` (sharded past 2 GiB),
the tokenizer, a `generation_config.json` (EOS/pad ids, so `generate` stops
where our sampler stops) and `jaxrl_ent_export.json` (source and step) to
--output_dir (default `<workdir>/export/step_<N>`). Pass the config the run
was trained with (see launch/evaluate.py). The folder is then read back with
our own loader and checked bit-exact against the restored parameters (skip
with --noverify). Load it with

  transformers.AutoModelForCausalLM.from_pretrained(folder)
  transformers.PreTrainedTokenizerFast.from_pretrained(folder)

Every path may be a `gs://` URL (the folder is written locally, then
uploaded, config.json last).

Multi-host: run it on every worker (`launch/tpu_pod.sh --job=export`); it
joins the JAX cluster like launch/train.py (`config.distributed`); every
process restores and gathers; process 0 writes.
"""

import json
import logging
import os
import sys
import tempfile

from absl import app
from absl import flags
from jaxrl_ent import launch_flags  # One-line answers for bad flags.
from absl import logging as absl_logging
import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import config_flags

# Configs import `configs.common`: make the repository root importable when
# this file is run as a script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxrl_ent import models
from jaxrl_ent.models import lora
from jaxrl_ent import sharding
from jaxrl_ent import storage
from jaxrl_ent.train import checkpoint
from jaxrl_ent.train import critic_export
from jaxrl_ent.train import distributed
from jaxrl_ent.train import run_policy
# pylint: enable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config the run was trained with.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the "
                             "newest one that verifies).")
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Checkpoint directory (default <workdir>/ckpt).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Output folder (default <workdir>/export/step_<N>).")
_DTYPE = flags.DEFINE_enum(
    "dtype", None, ["float32", "bfloat16"],
    "Tensor dtype on disk (default: the parameters' dtype).")
_FORMAT = flags.DEFINE_enum(
    "format", "merged", ["merged", "peft"],
    "merged: an HF folder of the full weights (a LoRA run's adapters merged "
    "into its base); peft: a LoRA run's adapters as a PEFT adapter folder "
    "(`peft.PeftModel.from_pretrained(base, folder)`).")
_VERIFY = flags.DEFINE_bool(
    "verify", True, "Read the folder back and check it bit-exact.")
_CRITIC = flags.DEFINE_bool(
    "critic", False, "Also export a PPO run's critic (value head, and the "
    "critic model of critic.kind=model) to <output_dir>_critic; the policy "
    "folder never holds it (jaxrl_ent/train/critic_export.py).")
flags.mark_flags_as_required(["config", "workdir"])

INFO_FILE = "jaxrl_ent_export.json"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def write_generation_config(tokenizer, path):
  """EOS/pad ids for `generate` (our sampler stops at the tokenizer's EOS)."""
  import transformers  # pylint: disable=g-import-not-at-top
  config = transformers.GenerationConfig(
      eos_token_id=tokenizer.eos_token_id,
      pad_token_id=(tokenizer.pad_token_id if tokenizer.pad_token_id
                    is not None else tokenizer.eos_token_id),
      bos_token_id=tokenizer.bos_token_id)
  with tempfile.TemporaryDirectory() as tmp:  # transformers writes locally.
    config.save_pretrained(tmp)
    storage.upload_dir(tmp, path)


def verify_export(policy, path, dtype=None):
  """Reads `path` back with our loader; raises if any parameter differs.

  Compares per-leaf fingerprints of the exact bits (see
  `checkpoint.state_fingerprint`) of the restored parameters, cast to the
  on-disk dtype, with those of the folder's. Every process takes part in
  fingerprinting the (sharded) parameters; process 0, which wrote the folder,
  reads it back onto one device.
  """
  params = nnx.state(policy, nnx.Param)
  if dtype is not None:
    params = jax.tree.map(lambda x: x.astype(dtype), params)
  want = checkpoint.state_fingerprint(params)
  if jax.process_index() != 0:
    return
  loaded = models.from_pretrained(path, None, dtype=dtype or jnp.float32,
                                  param_dtype=dtype)
  have = checkpoint.state_fingerprint(nnx.state(loaded, nnx.Param))
  bad = sorted(k for k in want if have.get(k) != want[k])
  if bad or set(want) != set(have):
    raise RuntimeError(f"{path}: the exported parameters do not read back "
                       f"identically: {bad or sorted(set(want) ^ set(have))}")


def lora_base_path(config, workdir) -> str:
  """The folder a LoRA run's adapters apply to: `config.model_path`, or the
  run's warm-started tiny policy (`<workdir>/sft_policy`)."""
  return str(config.model_path or os.path.join(str(workdir), "sft_policy"))


def run(config, workdir, *, step=None, checkpoint_dir=None, output_dir=None,
        dtype: str | None = None, verify: bool = True,
        fmt: str = "merged", critic: bool = False) -> dict:
  """Exports; returns the info record (also written to the folder)."""
  mesh = sharding.make_mesh(dict(config.mesh))
  ckpt_dir = storage.path(checkpoint_dir or storage.path(workdir) / "ckpt")
  policy, tokenizer, restored, _ = run_policy.restore_policy(
      config, ckpt_dir, mesh, step=step)
  out = storage.path(output_dir or
                     storage.path(workdir) / "export" / f"step_{restored}")
  jdtype = _DTYPES[dtype] if dtype else None
  if fmt == "peft":  # A LoRA run's adapters only, read back bit-exact.
    lora.save_peft(policy, out, base_path=lora_base_path(config, workdir))
    tokenizer.save_pretrained(str(out))
    verify = verify and lora.verify_peft(policy, out)
  else:
    policy = lora.merge(policy)  # The policy itself when it has no LoRA.
    models.save_pretrained(policy, out, dtype=jdtype, tokenizer=tokenizer)
  info = {"checkpoint_dir": str(ckpt_dir), "step": restored,
          "dtype": dtype or jnp.dtype(policy.cfg.param_dtype).name,
          "config": config.to_dict()}
  if jax.process_index() == 0:
    write_generation_config(tokenizer, out)
    storage.write_text(out / INFO_FILE,
                       json.dumps(info, indent=2, default=str))
  if verify and fmt == "merged":
    verify_export(policy, out, jdtype)
  if critic:
    info["critic"] = critic_export.export_critic(
        config, ckpt_dir, mesh, f"{out}_critic", step=restored)
  info["output_dir"] = str(out)
  info["verified"] = verify
  return info


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  absl_logging.set_verbosity(absl_logging.WARNING)
  # Multi-host: join the other processes before anything counts devices.
  try:
    distributed.maybe_initialize(_CONFIG.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  # Every restore here is read-only by design; drop orbax's notice about it.
  logging.getLogger("absl").addFilter(
      lambda r: "read only" not in r.getMessage() and
      "read_only=True" not in r.getMessage())
  info = run(_CONFIG.value, _WORKDIR.value, step=_STEP.value,
             checkpoint_dir=_CHECKPOINT_DIR.value,
             output_dir=_OUTPUT_DIR.value, dtype=_DTYPE.value,
             verify=_VERIFY.value, fmt=_FORMAT.value,
             critic=_CRITIC.value)
  checked = ("read back bit-exact" if info["verified"] else "not verified")
  print(f"exported step {info['step']} of {info['checkpoint_dir']} to "
        f"{info['output_dir']} ({info['dtype']}, {checked})")
  if "critic" in info:
    print(f"critic ({info['critic']['kind']}) to "
          f"{info['critic']['output_dir']}")


if __name__ == "__main__":
  launch_flags.run(main)
