"""Theory lab: tabular softmax bandits and MDPs with exact policy gradients.

Modules: `bandit` and `mdp` (kernels), `experiments` (T1–T3), `annealing`
(T4–T5), `report` (table and plots). Importing configures nothing in jax;
`launch/theory.py` runs the lab inside a `jax.enable_x64(True)` context.
"""
