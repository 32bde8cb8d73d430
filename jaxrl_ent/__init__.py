"""jaxrl_ent: RL post-training of language models with principled entropy control.

Importing the package is cheap and configures nothing globally: submodules
(models, entropy, sharding, ...) are imported on first attribute access.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "analysis", "data", "entropy", "models", "rewards", "rl", "rollout",
    "sharding", "study", "theory", "train",
)


def __getattr__(name):
  # Lazy submodules keep `import jaxrl_ent` fast (no jax import at all).
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_SUBMODULES))
