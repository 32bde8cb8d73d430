"""Entropy control: token statistics, covariance scores, dynamics, controllers.

Submodules: `types` (TokenStats, TokenGrads), `token_stats` (chunked per-token
log-prob/entropy/moments), `covariance` (Cui et al. scores and selections),
`dynamics` (first/second-order entropy change), `controllers` (optax
transforms over the token-space cotangent), `reweighting` (STEER, AEnt),
`schedules`, `losses` (verl-style loss forms). See docs/entropy_controls.md.
"""

from jaxrl_ent.entropy import controllers
from jaxrl_ent.entropy import covariance
from jaxrl_ent.entropy import dynamics
from jaxrl_ent.entropy import losses
from jaxrl_ent.entropy import reweighting
from jaxrl_ent.entropy import schedules
from jaxrl_ent.entropy import token_stats
from jaxrl_ent.entropy import types

# The most used names, re-exported for `from jaxrl_ent import entropy`.
TokenGrads = types.TokenGrads
TokenStats = types.TokenStats
adaptive_entropy = controllers.adaptive_entropy
aent = reweighting.aent
attributed_chain = controllers.attributed_chain
clip_cov = controllers.clip_cov
entropy_bonus = controllers.entropy_bonus
entropy_change_by_source = controllers.entropy_change_by_source
high_entropy_tokens = controllers.high_entropy_tokens
kl_cov = controllers.kl_cov
steer = reweighting.steer
track_entropy_dynamics = controllers.track_entropy_dynamics
