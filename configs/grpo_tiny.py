r"""GRPO on a synthetic task with a tiny policy: the README's main job.

  python launch/train.py --config=configs/grpo_tiny.py --workdir=/tmp/grpo_tiny
  python launch/train.py --config=configs/grpo_tiny.py:entropy=clip_cov \
      --workdir=/tmp/grpo_clip_cov
  python launch/train.py --config=configs/grpo_tiny.py:runlocal \
      --workdir=/tmp/grpo_smoke          # seconds-long smoke run (tests)
  python launch/train.py --config=configs/grpo_tiny.py:algo=ppo \
      --workdir=/tmp/ppo_run             # PPO: GAE + a learned critic

A ~0.4M-parameter Qwen2-style policy and a byte-level BPE tokenizer are built
in-process (nothing is downloaded), warm-started by supervised training on
an imperfect demonstrator's answers (cached in <workdir>/sft_policy), then
trained with GRPO on the `digits` task (reverse a digit string), scored on
held-out prompts.

Why this job is built this way (issue #20: an unmistakable gain in a few
minutes on a 2-core CPU, for every seed):
- The demonstrator reverses the digits on 30 % of its examples and copies
  them (the task's typical slip, `rewards.tasks.digits_mistake`) on the
  rest (`sft.demo_accuracy=0.3`). The warm-started policy has the skill but
  prefers the wrong answer: greedy accuracy starts below 0.1 while its
  samples are right often enough (pass@4 ~0.3) for GRPO to find and
  amplify the right behaviour. Learning the reversal itself
  from a sparse exact-match reward (the earlier job: full-accuracy but
  short warm start) took 400 steps to reach ~0.27.
- The choice between the two answers is where the entropy is; as GRPO
  commits to one, the rollout entropy collapses (~0.5 → < 0.05 nats/token):
  the phenomenon this project is about, visible in the end-of-run summary.
- 300 warm-start steps learn both behaviours well enough for four-digit
  strings too: with 150, one seed in five learned to reverse three digits
  but not four and stalled at 0.33 once its entropy had collapsed (GRPO
  cannot teach a skill the samples never show). 150 GRPO steps of 32
  prompts x 8 samples then take greedy accuracy past 0.8 by step ~50-100
  on every seed tried (README, "The main job").

The entropy control is one field: `entropy.method` in
none | entropy_bonus | clip_cov | kl_cov | high_entropy_tokens |
adaptive_entropy | steer | aent, the coefficient-based ones annealable
through `entropy.anneal`.
"""

import ml_collections

from configs import common

# Per-method defaults, scaled for this tiny task (token-mean loss, ~1-2k
# tokens per micro-batch, so ratio 2e-3 selects a handful of tokens).
ENTROPY_PRESETS = {
    "none": {},
    "entropy_bonus": {"coef": 1e-2},
    "entropy_bonus_annealed": {"method": "entropy_bonus", "coef": 1e-2,
                               "anneal": "inverse_power"},
    "clip_cov": {"ratio": 2e-2, "clip_cov_lb": 0.05, "clip_cov_ub": 5.0},
    "clip_cov_annealed": {"method": "clip_cov", "ratio": 2e-2,
                          "clip_cov_lb": 0.05, "clip_cov_ub": 5.0,
                          "anneal": "inverse_power"},
    "kl_cov": {"ratio": 2e-2, "coef": 1.0},
    "kl_cov_annealed": {"method": "kl_cov", "ratio": 2e-2, "coef": 1.0,
                        "anneal": "inverse_power"},
    "high_entropy_tokens": {"quantile": 0.2},
    "adaptive_entropy": {"target": 0.3, "rule": "bang_bang", "delta": 1e-3,
                         "coef_max": 2e-2},
    "steer": {"w_min": 0.8},
    "aent": {"lr": 1e-3, "h_low": 0.2, "h_high": 0.6},
}


def entropy_config(preset: str = "none") -> ml_collections.ConfigDict:
  if preset not in ENTROPY_PRESETS:
    raise ValueError(f"entropy preset {preset!r}; known: "
                     f"{sorted(ENTROPY_PRESETS)}")
  e = ml_collections.ConfigDict(dict(
      method=preset, coef=0.0, ratio=2e-4, clip_cov_lb=1.0, clip_cov_ub=5.0,
      quantile=0.2, target=0.2, rule="bang_bang", delta=1e-4, lr=1e-2,
      coef_min=0.0, coef_max=5e-3, measure="old_logp", anneal="constant",
      anneal_steps=100, anneal_tau=10.0, anneal_power=1.0, anneal_end=0.0,
      # STEER and AEnt (entropy/reweighting.py).
      w_min=0.8, w_max=1.0, steer_mode="exponential", steer_score="reference",
      coef_init=2e-4, h_low=0.05, h_high=0.23, coef_min_aent=1e-5,
      coef_max_aent=3e-3))
  e.update(ENTROPY_PRESETS[preset])
  return e


ALGOS = ("grpo", "ppo")


def critic_config(**overrides) -> ml_collections.ConfigDict:
  """The `critic` block (read when `advantage.estimator="gae"`).

  kind: "head" (value head on the shared, detached policy trunk) or "model"
  (a separate f32 critic decoder from the same initial weights);
  warmup_steps: RL steps with the policy frozen while the critic fits (verl
  `critic_warmup`); cliprange_value, agg_mode: verl `compute_value_loss`.
  """
  c = ml_collections.ConfigDict(dict(
      kind="head", lr=1e-2, warmup_steps=5, cliprange_value=0.5,
      agg_mode="token-mean", weight_decay=0.0, grad_clip=1.0))
  c.update(overrides)
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, entropy="none", runlocal=False, steps=0, seed=0,
                       optim="adamw", b1=-1.0, wd=-1.0, lr_div=1.0,
                       algo="grpo", lora=False)
  if a.algo not in ALGOS:
    raise ValueError(f"config argument algo={a.algo!r}; known: {ALGOS}.")
  c = ml_collections.ConfigDict()
  c.seed = a.seed
  c.model_path = ""
  # Another run's checkpoint directory (or one step dir) to continue from
  # when this workdir has none (see jaxrl_ent/train/checkpoint.py).
  c.resume_from = ""
  c.tensorboard = True
  # Weights & Biases (off): --config.wandb.enabled=True
  # --config.wandb.project=NAME [--config.wandb.mode=offline].
  c.wandb = common.wandb_config()
  c.checkpoint = ml_collections.ConfigDict(dict(every=50, keep=3,
                                                async_save=True))
  c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
  c.sharding = ml_collections.ConfigDict({"rules": {}})
  # Multi-host (jaxrl_ent/train/distributed.py): "auto" joins a cluster when
  # a coordinator is named here or in JAX_COORDINATOR_ADDRESS (with
  # JAX_NUM_PROCESSES, JAX_PROCESS_ID) or a multi-host TPU slice / SLURM /
  # Open MPI job is detected; "always" lets JAX detect it; "never" stays
  # single-process (an error on a detected multi-host slice unless
  # "force_single"). 0 / -1 = unset.
  c.distributed = ml_collections.ConfigDict(dict(
      initialize="auto", coordinator_address="", num_processes=0,
      process_id=-1))

  c.model = ml_collections.ConfigDict(dict(
      hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4,
      num_kv_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
      dtype="float32", remat=False,
      # How it runs (any model, also a checkpoint's): remat_policy "" = from
      # `remat`; attention "auto" = splash on TPU, cuDNN on GPU, blockwise
      # XLA elsewhere; layers per scan iteration.
      remat_policy="", attention_impl="auto", scan_unroll=1))

  c.data = ml_collections.ConfigDict(dict(
      task="digits", task_kwargs={"min_len": 3, "max_len": 4,
                                  "ops": ("reverse",)},
      task_size=20_000, task_seed=0, tokenizer_vocab_size=320,
      train_paths="", eval_paths="", prompt_field="prompt",
      answer_field="answer", id_field="id", template="{prompt}",
      chat_template=False, system_prompt="", max_prompt_length=32,
      on_overlong="skip"))

  c.sft = ml_collections.ConfigDict(dict(
      # demo_accuracy: the share of demonstrations with the right answer,
      # the rest show the task's typical mistake (see the module docstring).
      # seed: of the initial weights and the warm start (-1 = `seed`).
      steps=300, lr=3e-3, batch_size=64, seq_len=32, num_examples=5000,
      demo_accuracy=0.3, seed=-1))

  # continuous: continuous batching over `num_slots` decode slots (0 = a
  # quarter of the rows), refilled as rows stop; off here, where the
  # completions are 12 tokens and rows end together (see README, rollout).
  # decode_attention: `auto` is the Pallas TPU kernel on TPU, the XLA
  # blockwise one elsewhere (jaxrl_ent/models/decode_attention.py).
  c.rollout = ml_collections.ConfigDict(dict(
      max_new_tokens=12, temperature=1.0, top_p=1.0, top_k=0, n_samples=8,
      continuous=False, num_slots=0, decode_attention="auto"))
  # timeout_s bounds one reward call; batch_timeout_s the wall time of
  # scoring one batch (items still unscored then count as timeouts).
  c.reward = ml_collections.ConfigDict(dict(
      spec="", backend="process", timeout_s=5.0, batch_timeout_s=60.0))
  # gamma, lam: GAE's (read with estimator="gae", verl algorithm.gamma/lam).
  c.advantage = ml_collections.ConfigDict(dict(estimator="grpo", gamma=1.0,
                                               lam=1.0))
  # :algo=ppo — PPO with a learned critic (jaxrl_ent/rl/critic.py): GAE
  # advantages from a float32 value head on the policy's (detached) trunk.
  c.critic = critic_config()
  if a.algo == "ppo":
    c.advantage.estimator = "gae"

  c.loss = ml_collections.ConfigDict(dict(
      policy_loss="ppo_clip", clip_eps_low=0.2, clip_eps_high=0.28,
      clip_ratio_c=10.0, agg_mode="token-mean", kl_coef=0.0,
      kl_kind="low_var_kl", kl_in_reward_coef=0.0, kl_in_reward_kind="kl",
      # Typed, so --config.loss.vocab_chunk=8192 parses (None: no chunks).
      token_chunk=512,
      vocab_chunk=ml_collections.FieldReference(None, field_type=int),
      num_micro_batches=1))
  # The loss scores tokens at rollout.temperature (verl semantics): one
  # field, so the sampler and the PPO ratios cannot disagree.

  c.entropy = entropy_config(a.entropy)

  c.optim = ml_collections.ConfigDict(dict(
      lr=5e-4, warmup_steps=0, schedule="constant", weight_decay=0.0,
      b1=0.9, b2=0.999, grad_clip=1.0, name="adamw"))
  # :lora — LoRA adapters (rank 8 on all seven projections) as the only
  # trainable parameters, the base frozen (jaxrl_ent/models/lora.py;
  # quant=int8|nf4 for QLoRA); adapters take a 10x larger learning rate.
  c.lora = common.lora_config(enabled=a.lora)
  if a.lora:
    c.optim.lr = 10 * c.optim.lr
  # Optimizer ablations of the entropy-dynamics docs (docs/entropy_dynamics.md):
  # :optim=sgd (clip → SGD, lr 1.0 here), :b1=0, :wd=0.01, :lr_div=10.
  c.optim.name = a.optim
  if a.optim == "sgd":
    c.optim.lr = 1.0
  if a.b1 >= 0:
    c.optim.b1 = a.b1
  if a.wd >= 0:
    c.optim.weight_decay = a.wd
  c.optim.lr = c.optim.lr / a.lr_div

  # measure_every: the entropy-dynamics steps (measured ΔH, exact
  # first-order prediction split by source). One costs ~2.5× a plain step
  # (a backward per source per micro-batch, one for ∂H/∂θ, one forward:
  # median 2.38 vs 0.93 s measured); every 10th step cost +18 % of step
  # time over 30 steps (+ one more compile), so every 20th keeps the main
  # job well inside +15 %; set 1 for a per-step account.
  c.train = ml_collections.ConfigDict(dict(
      steps=150, prompts_per_step=32, ppo_epochs=1, num_mini_batches=2,
      recompute_old_logp=True, measure_every=20, max_consecutive_skips=5,
      # Sequence packing of the update's forwards: each forward's R rows in
      # ceil(R * pack_fraction) rows of pack_row_len (0 = P + C) tokens,
      # unpacked where they do not fit (perf/pack_fits); 0 = off.
      pack_fraction=0.0, pack_row_len=0))

  # Replicas in one program (jaxrl_ent/train/replicas.py): e.g.
  # --config.sweep.seeds=0:16 --config.sweep.grid="entropy.coef=0,1e-3,1e-2"
  # runs seeds × grid points as one vmapped rollout + update per step, each
  # writing <workdir>/replicas/<name>/ like a run of its own. Empty = one run.
  c.sweep = ml_collections.ConfigDict(dict(seeds="", grid=""))

  c.eval = ml_collections.ConfigDict(dict(
      every=50, num_examples=256, batch_size=128, pass_k=4,
      # Samples per prompt for the unbiased pass@k (n >= pass_k); 0 = pass_k.
      num_samples=0, success_threshold=1.0))

  if a.runlocal:
    c.train.measure_every = 1  # Every step of a smoke run is accounted.
    c.sft.steps = 5
    c.sft.num_examples = 200
    c.data.task_size = 500
    c.train.steps = 2
    c.critic.warmup_steps = 1  # :algo=ppo,runlocal: one critic-only step.
    c.train.prompts_per_step = 4
    c.rollout.n_samples = 2
    c.rollout.max_new_tokens = 8
    c.eval.num_examples = 8
    c.eval.batch_size = 8
    c.eval.pass_k = 2
    c.eval.every = 2
    c.checkpoint.every = 1
    c.tensorboard = True
  if a.steps:
    c.train.steps = a.steps
  return c
