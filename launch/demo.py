r"""Foundation demo: build or load a policy, check it, generate text.

Without --model_path it builds a tiny Qwen2-style model and a BPE tokenizer
trained in-process (nothing is downloaded), writes both as an HF folder with
`save_pretrained`, loads them back with `from_pretrained`, checks the round
trip is exact, and greedily generates a few tokens with the KV cache.
With --model_path it does the same for a local HF checkpoint folder.

  python launch/demo.py --workdir=/tmp/jaxrl_demo
  python launch/demo.py --model_path=/path/to/Qwen2.5-0.5B-Instruct \
      --prompt="What is 7 * 6?"
"""

import pathlib
import time

from absl import app
from absl import flags
from jaxrl_ent import launch_flags  # One-line answers for bad flags.

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/jaxrl_demo", "Where the tiny HF folder "
                    "is written.")
flags.DEFINE_string("model_path", None, "Optional local HF checkpoint folder.")
flags.DEFINE_string("prompt", "the policy samples a token", "Prompt text.")
flags.DEFINE_integer("max_new_tokens", 16, "Tokens to generate.")
flags.DEFINE_string("mesh", "data=1,fsdp=-1,tensor=1",
                    "Mesh shape over the local devices.")

def _greedy(model, prompt_ids, max_new_tokens):
  """Greedy decoding with the KV cache (the rollout engine generalises it)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxrl_ent import models  # pylint: disable=g-import-not-at-top
  tokens = jnp.asarray([prompt_ids], jnp.int32)
  cache = models.init_cache(model.cfg, 1, len(prompt_ids) + max_new_tokens)

  @jax.jit
  def step(model, tokens, cache):
    logits, cache = model(tokens, cache=cache)
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache

  nxt, cache = step(model, tokens, cache)
  out = [int(nxt[0])]
  for _ in range(max_new_tokens - 1):
    nxt, cache = step(model, nxt[:, None], cache)
    out.append(int(nxt[0]))
  return out


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxrl_ent import models  # pylint: disable=g-import-not-at-top
  from jaxrl_ent import sharding  # pylint: disable=g-import-not-at-top
  from jaxrl_ent.models import tiny_hf  # pylint: disable=g-import-not-at-top

  mesh_shape = [(k, int(v)) for k, v in
                (item.split("=") for item in FLAGS.mesh.split(","))]
  mesh = sharding.make_mesh(mesh_shape)
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}, "
        f"mesh {dict(mesh.shape)}")

  if FLAGS.model_path:
    path = pathlib.Path(FLAGS.model_path)
    tokenizer = models.load_tokenizer(path)
  else:
    tokenizer = tiny_hf.tiny_tokenizer()
    cfg = models.ModelConfig(
        model_type="qwen2", vocab_size=len(tokenizer), hidden_size=64,
        intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=16, qkv_bias=True, max_position_embeddings=256)
    built = models.init_sharded(cfg, mesh, seed=0)
    path = models.save_pretrained(built, pathlib.Path(FLAGS.workdir) /
                                  "tiny_qwen2", tokenizer=tokenizer)
    print(f"wrote a tiny random Qwen2 ({cfg.num_params():,} params) and its "
          f"tokenizer to {path}")

  start = time.perf_counter()
  model = models.from_pretrained(path, mesh)
  n = sum(int(np.prod(x.shape)) for x in
          jax.tree.leaves(nnx.state(model, nnx.Param)))
  print(f"loaded {model.cfg.model_type} with {n:,} params from {path} in "
        f"{time.perf_counter() - start:.1f}s")
  if not FLAGS.model_path:
    same = all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
            jax.tree.leaves(nnx.state(built, nnx.Param)),
            jax.tree.leaves(nnx.state(model, nnx.Param))))
    print(f"save -> load round trip exact: {same}")
    if not same:
      raise SystemExit("round trip changed the parameters")

  prompt_ids = tokenizer(FLAGS.prompt)["input_ids"]
  with sharding.use_mesh(mesh):
    start = time.perf_counter()
    out = _greedy(model, prompt_ids, FLAGS.max_new_tokens)
  print(f"prompt: {FLAGS.prompt!r}")
  print(f"greedy continuation ({len(out)} tokens, "
        f"{time.perf_counter() - start:.1f}s incl. compile): "
        f"{tokenizer.decode(out)!r}")
  if not FLAGS.model_path:
    print("(random weights: the text is gibberish by design; the RL job "
          "replaces this demo)")


if __name__ == "__main__":
  launch_flags.run(main)
