"""Writes a PPO run's critic (`rl.critic`) as its own HF-style folder.

`launch/export.py --critic` calls `export_critic` after the policy export;
by default the critic is left out of the policy's folder (which stays a
plain causal LM). The critic folder holds

  value_head.safetensors  `v_head.summary.weight` [1, D], `v_head.summary.bias`
                          [1] (float32; TRL `ValueHead` names)
  critic.json             kind, step, hidden size, source checkpoint
  config.json + model.safetensors   for `critic.kind="model"` only: the
                          critic's own decoder (float32), loadable as any
                          of our / transformers' causal LMs (its LM head
                          is the unused copy it started from)

For `critic.kind="head"` the trunk is the policy itself (critic.json says
so): `V_t = h_t·w + b` on the exported policy's final hidden states.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_ent import models
from jaxrl_ent import sharding
from jaxrl_ent.train import checkpoint
from jaxrl_ent.train import factories
from jaxrl_ent.train import run_policy

VALUE_HEAD_FILE = "value_head.safetensors"
INFO_FILE = "critic.json"


def restore_critic(config, ckpt_dir, mesh, step: int | None = None):
  """(graphdef, rest, CriticState, restored step) of the run's checkpoint.

  Raises:
    ValueError: the config has no critic (`advantage.estimator` reads none).
  """
  if factories.critic_spec(config) is None:
    raise ValueError(
        f"advantage.estimator={config.advantage.estimator!r} trains no "
        "critic; pass the config of a PPO run (e.g. :algo=ppo).")
  model_cfg, _ = run_policy.model_config_and_tokenizer(config)
  graphdef, rest, abstract = run_policy.abstract_train_state(
      config, model_cfg, mesh)
  ckpt = checkpoint.Checkpointer(ckpt_dir, read_only=True)
  try:
    state, _, _, restored = ckpt.restore(abstract, step=step)
  finally:
    ckpt.close()
  return graphdef, rest, state.critic, restored


def export_critic(config, ckpt_dir, mesh, out_dir, *,
                  step: int | None = None) -> dict:
  """Writes the critic of `step` (default: newest verified) to `out_dir`.

  Every process must call it (sharded parameters are gathered); process 0
  writes. Returns the info record (also `critic.json`).
  """
  spec = factories.critic_spec(config)
  graphdef, rest, critic, restored = restore_critic(config, ckpt_dir, mesh,
                                                    step)
  out = pathlib.Path(out_dir)
  head = critic.params["head"]
  w = sharding.to_host(head["w"][...]).astype(np.float32)
  b = sharding.to_host(head["b"][...]).astype(np.float32)
  if spec.kind == "model":
    trunk = nnx.merge(graphdef, critic.params["trunk"], rest)
    models.save_pretrained(trunk, out, dtype=jnp.float32)
  info = {"kind": spec.kind, "step": restored, "hidden_size": int(w.shape[0]),
          "checkpoint_dir": str(ckpt_dir),
          "trunk": "this folder" if spec.kind == "model" else "the policy",
          "value": "V_t = h_t . w + b, h_t the final normalised hidden "
                   "state before completion token t"}
  if jax.process_index() == 0:
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    out.mkdir(parents=True, exist_ok=True)
    save_file({"v_head.summary.weight": w[None, :],
               "v_head.summary.bias": b.reshape(1)},
              str(out / VALUE_HEAD_FILE))
    (out / INFO_FILE).write_text(json.dumps(info, indent=2))
  info["output_dir"] = str(out)
  return info


def load_value_head(path) -> tuple[np.ndarray, np.ndarray]:
  """(w [D], b []) from a folder written by `export_critic`."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  t = load_file(str(pathlib.Path(path) / VALUE_HEAD_FILE))
  return t["v_head.summary.weight"][0], t["v_head.summary.bias"][0]
