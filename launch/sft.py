r"""Supervised warm start on task demonstrations, as its own job.

  python launch/sft.py --config=configs/grpo_tiny.py --workdir=/tmp/grpo_tiny
  python launch/sft.py --config=configs/grpo_tiny.py --workdir=/tmp/sft300 \
      --config.sft.steps=300 --overwrite

Trains `config.sft.steps` steps of next-token cross-entropy on the
`config.data.task` demonstrations (`prompt answer<eos>`), starting from the
policy a run would start from (the tiny model of `config.model`, or the HF
checkpoint at `config.model_path`), and writes it as an HF-format folder,
by default `<workdir>/sft_policy`: exactly the warm start `launch/train.py`
runs and caches there, so a train launch with the same --workdir and config
starts from this folder without training it again. For an HF `model_path`
run, start RL from the result with `--config.model_path=<folder>`.

An existing folder is reused (the job is done; relaunching is harmless)
unless --overwrite. Reports the NLL of held-out demonstrations before and
after, and the trainer's held-out greedy accuracy / pass@k of the result;
writes them to `<workdir>/sft.json`. Every path may be a `gs://` URL.

Multi-host: run it on every worker (`launch/tpu_pod.sh --job=sft`); it joins
the JAX cluster like launch/train.py (`config.distributed`); process 0
writes.
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
from flax import nnx
from ml_collections import config_flags

# Configs import `configs.common`: make the repository root importable when
# this file is run as a script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxrl_ent import models
from jaxrl_ent import sharding
from jaxrl_ent import storage
from jaxrl_ent.train import distributed
from jaxrl_ent.train import policy_setup
from jaxrl_ent.train import run_policy
from jaxrl_ent.train import sft as sft_lib
from jaxrl_ent.rl import state as state_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config (its sft, model and data blocks).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "HF folder to write (default <workdir>/sft_policy, "
    "the warm-start cache launch/train.py reads).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Train again even if the output folder exists.")
_EVAL = flags.DEFINE_bool(
    "eval", True, "Evaluate the result on held-out prompts (config.eval).")
flags.mark_flags_as_required(["config", "workdir"])

OUTPUT_FILE = "sft.json"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def heldout_nll(config, tokenizer, mesh):
  """`policy -> NLL` of one fixed batch of held-out (test-split) demos.

  The batch is built like the training batches (`sft.batch_size` rows of
  `sft.seq_len` tokens, loss on the answer and EOS only), from the test
  split, so it measures generalisation rather than memorisation.
  """
  s = config.sft
  examples = policy_setup.task_examples(config.data, "test", s.batch_size)
  batch = next(policy_setup.demonstration_batches(
      examples, tokenizer, batch_size=s.batch_size, seq_len=s.seq_len,
      seed=config.seed))

  def fn(policy):
    graphdef, params, rest = state_lib.split_model(policy)
    loss = jax.jit(lambda p, b: sft_lib.sft_loss(nnx.merge(graphdef, p, rest),
                                                 b))
    with sharding.use_mesh(mesh):
      return float(loss(params, batch))
  return fn


def check_config(config):
  """Raises ValueError naming the field if there is nothing to warm-start."""
  if config.sft.steps <= 0:
    raise ValueError(f"config.sft.steps={config.sft.steps}: nothing to "
                     "train; set --config.sft.steps to a positive number.")
  if not config.data.task:
    raise ValueError("config.data.task is empty: the warm start trains on a "
                     "synthetic task's demonstrations; set --config.data.task "
                     "(e.g. digits).")


def run(config, workdir, *, output_dir=None, overwrite=False,
        evaluate=True) -> dict:
  """Runs (or reuses) the warm start; writes and returns the sft.json record.

  Raises:
    ValueError: `config.sft.steps` is 0 or `config.data.task` is unset.
  """
  check_config(config)
  workdir = storage.path(workdir)
  out = storage.path(output_dir or workdir / "sft_policy")
  mesh = sharding.make_mesh(dict(config.mesh))
  start = time.perf_counter()
  record = {"output_dir": str(out), "steps": config.sft.steps}
  if (out / "config.json").exists() and not overwrite:
    logging.warning("%s exists: reusing it (pass --overwrite to train "
                    "again).", out)
    dtype = _DTYPES[config.model.get("dtype", "float32")]
    rules = sharding.merge_rules(dict(config.sharding.rules))
    policy = models.from_pretrained(out, mesh, dtype=dtype, rules=rules)
    tokenizer = models.load_tokenizer(out)
    record.update(reused=True, heldout_nll_before=None,
                  heldout_nll_after=heldout_nll(config, tokenizer, mesh)(
                      policy))
  else:
    policy, tokenizer = policy_setup.initial_policy(config, mesh)
    nll = heldout_nll(config, tokenizer, mesh)
    before = nll(policy)
    policy = policy_setup.supervised_warm_start(policy, tokenizer, config,
                                                mesh)
    models.save_pretrained(policy, out, tokenizer=tokenizer)
    record.update(reused=False, heldout_nll_before=before,
                  heldout_nll_after=nll(policy))
  if evaluate:
    record["eval"] = run_policy.evaluate_policy(config, policy, tokenizer,
                                                mesh)
  record["seconds"] = time.perf_counter() - start
  if jax.process_index() == 0:
    storage.write_text(workdir / OUTPUT_FILE, json.dumps(record, indent=2))
  return record


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    # Multi-host: join the other processes before anything counts devices.
    distributed.maybe_initialize(_CONFIG.value)
    check_config(_CONFIG.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  record = run(_CONFIG.value, _WORKDIR.value, output_dir=_OUTPUT_DIR.value,
               overwrite=_OVERWRITE.value, evaluate=_EVAL.value)
  before, after = record["heldout_nll_before"], record["heldout_nll_after"]
  what = ("reused" if record["reused"]
          else f"{record['steps']} supervised steps")
  print(f"warm start ({what}) -> {record['output_dir']}")
  print("held-out demonstration NLL: "
        + (f"{before:.3f} -> " if before is not None else "") + f"{after:.3f}")
  for name, value in sorted(record.get("eval", {}).items()):
    print(f"{name}: {value:.3f}")


if __name__ == "__main__":
  launch_flags.run(main)
