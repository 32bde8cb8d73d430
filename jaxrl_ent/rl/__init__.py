"""RL kernels: advantages, policy losses, KL estimators, loss aggregation.

Submodules: `advantages` (GRPO / Dr.GRPO / RLOO / batch-std outcome
advantages, GAE), `policy_losses` (PPO clip with clip-higher and dual clip,
GSPO, REINFORCE), `kl` (k1/k2/k3 and straight-through `+` estimators,
in-reward KL, adaptive KL controller), `aggregation` (verl `agg_loss`, its
per-token weights, micro-batch forms), `registry` (lookup by name). All
kernels are pure, jittable and vmappable; semantics follow
entropy_methods.md §3.
"""

from jaxrl_ent.rl import advantages
from jaxrl_ent.rl import aggregation
from jaxrl_ent.rl import kl
from jaxrl_ent.rl import policy_losses
from jaxrl_ent.rl import registry

# The most used names, re-exported for `from jaxrl_ent import rl`.
agg_loss = aggregation.agg_loss
aggregation_weights = aggregation.aggregation_weights
gae_advantages = advantages.gae_advantages
grpo_advantages = advantages.grpo_advantages
gspo_loss = policy_losses.gspo_loss
kl_penalty = kl.kl_penalty
ppo_clip_loss = policy_losses.ppo_clip_loss
