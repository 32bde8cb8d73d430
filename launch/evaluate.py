r"""Held-out greedy accuracy and pass@k of a policy.

  python launch/evaluate.py --config=configs/grpo_tiny.py \
      --workdir=/tmp/grpo_tiny
  python launch/evaluate.py --config=configs/grpo_tiny.py:entropy=clip_cov \
      --workdir=/tmp/cc --step=200 --config.eval.num_examples=1024
  python launch/evaluate.py --config=configs/grpo_tiny.py --workdir=/tmp/ev \
      --policy=/tmp/grpo_tiny/sft_policy          # any HF-format folder

The policy is a run's checkpoint (`<workdir>/ckpt`, or --checkpoint_dir; the
newest verified step, or --step) or, with --policy, an HF folder (a warm
start, an export, a downloaded checkpoint). Pass the config the run was
trained with: its model, optimizer and entropy-control settings describe the
checkpoint, and its `eval.*`, `rollout.*` and `data.*` fields say what to
evaluate on (override them freely). The same `Evaluator` and evaluation key
as the trainer's are used, so the numbers for a saved step equal the run's
`val/*` metrics at that step. Prints a table and writes `eval.json`
(default `<workdir>/eval.json`, see --output). Every path may be a
`gs://` URL.

Multi-host: run it on every worker (`launch/tpu_pod.sh --job=evaluate`); it
joins the JAX cluster like launch/train.py (`config.distributed`), every
process evaluates its block of prompts, process 0 writes.
"""

import json
import logging
import os
import sys
import time

from absl import app
from absl import flags
from jaxrl_ent import launch_flags  # One-line answers for bad flags.
from absl import logging as absl_logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags

# Configs import `configs.common`: make the repository root importable when
# this file is run as a script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxrl_ent import models
from jaxrl_ent import sharding
from jaxrl_ent import storage
from jaxrl_ent.train import distributed
from jaxrl_ent.train import run_policy
# pylint: enable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config the policy was trained with.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints are read from "
    "<workdir>/ckpt and eval.json is written here.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the "
                             "newest one that verifies).")
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Checkpoint directory (default <workdir>/ckpt).")
_POLICY = flags.DEFINE_string(
    "policy", None, "An HF-format policy folder to evaluate instead of a "
    "checkpoint.")
_OUTPUT = flags.DEFINE_string("output", None,
                              "Where to write the JSON (default "
                              "<workdir>/eval.json).")
flags.mark_flags_as_required(["config", "workdir"])

OUTPUT_FILE = "eval.json"


def _quiet_orbax_read_only():
  """Drops orbax's per-open notices about read-only directories (every
  restore here is read-only by design); real warnings still show."""
  logging.getLogger("absl").addFilter(
      lambda r: "read only" not in r.getMessage() and
      "read_only=True" not in r.getMessage())


def load_policy(config, mesh, *, workdir, policy_path=None,
                checkpoint_dir=None, step=None):
  """(policy, tokenizer, description dict) from an HF folder or checkpoint."""
  if policy_path:
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[
        config.model.get("dtype", "float32")]
    rules = sharding.merge_rules(dict(config.sharding.rules))
    policy = models.from_pretrained(policy_path, mesh, dtype=dtype,
                                    rules=rules)
    return policy, models.load_tokenizer(policy_path), {
        "policy": str(policy_path), "step": None}
  ckpt_dir = checkpoint_dir or storage.path(workdir) / "ckpt"
  policy, tokenizer, restored, _ = run_policy.restore_policy(
      config, ckpt_dir, mesh, step=step)
  return policy, tokenizer, {"checkpoint_dir": str(ckpt_dir),
                             "step": restored}


def markdown_table(source: str, step, metrics: dict[str, float]) -> str:
  names = sorted(k for k in metrics if k.startswith("val/"))
  head = "| policy | step | " + " | ".join(names) + " |"
  rule = "|---|---|" + "---|" * len(names)
  row = (f"| {source} | {'-' if step is None else step} | " +
         " | ".join(f"{metrics[k]:.4f}" if not k.endswith("num_prompts")
                    else f"{metrics[k]:.0f}" for k in names) + " |")
  return "\n".join([head, rule, row])


def run(config, workdir, *, step=None, checkpoint_dir=None, policy_path=None,
        output=None) -> dict:
  """Evaluates the policy; writes and returns the eval.json record."""
  if policy_path and (step is not None or checkpoint_dir):
    raise app.UsageError("--policy evaluates an HF folder; --step and "
                         "--checkpoint_dir select a checkpoint instead.")
  if policy_path and not (storage.path(policy_path) / "config.json").exists():
    raise FileNotFoundError(f"--policy={policy_path}: no config.json there; "
                            "expected an HF-format policy folder.")
  mesh = sharding.make_mesh(dict(config.mesh))
  start = time.perf_counter()
  policy, tokenizer, source = load_policy(
      config, mesh, workdir=workdir, policy_path=policy_path,
      checkpoint_dir=checkpoint_dir, step=step)
  metrics = run_policy.evaluate_policy(config, policy, tokenizer, mesh)
  record = {**source, "metrics": metrics,
            "eval": config.eval.to_dict(),
            "seconds": time.perf_counter() - start}
  out = storage.path(output or storage.path(workdir) / OUTPUT_FILE)
  if jax.process_index() == 0:
    storage.write_text(out, json.dumps(record, indent=2))
  record["output"] = str(out)
  return record


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  absl_logging.set_verbosity(absl_logging.WARNING)
  _quiet_orbax_read_only()
  # Multi-host: join the other processes before anything counts devices.
  try:
    distributed.maybe_initialize(_CONFIG.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  record = run(_CONFIG.value, _WORKDIR.value, step=_STEP.value,
               checkpoint_dir=_CHECKPOINT_DIR.value,
               policy_path=_POLICY.value, output=_OUTPUT.value)
  source = record.get("policy") or record["checkpoint_dir"]
  print(markdown_table(source, record["step"], record["metrics"]))
  print(f"wrote {record['output']}")


if __name__ == "__main__":
  launch_flags.run(main)
