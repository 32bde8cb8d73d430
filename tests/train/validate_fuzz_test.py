"""Bad values for every leaf of the main config: refused by validation, or documented.

`configs/grpo_tiny.py:runlocal` is what `launch/train.py --config=...`
parses; every `--config.<leaf>=<bad>` is tried here in-process (nothing is
built, nothing trains): wrong type, negative, zero, NaN, inf, empty string,
unknown name, missing path. Each must raise `ConfigError` with a one-line
problem naming the leaf, unless `DOCUMENTED_VALID` says why that value is a
valid setting. A hypothesis test then draws random values of every kind
for random leaves: validation either refuses them with `ConfigError` or
accepts a value of the leaf's own type, and never fails otherwise.
"""

import math

from absl.testing import absltest
import hypothesis
from hypothesis import strategies as st
import ml_collections

from configs import grpo_tiny
from jaxrl_ent import checker
from jaxrl_ent.train import validate

# (leaf, kind) -> why the value is a valid setting (README failure table).
DOCUMENTED_VALID = {
    ("seed", "negative"): "any int seeds the run",
    ("seed", "zero"): "any int seeds the run",
    ("data.task_seed", "negative"): "any int seeds the task generator",
    ("data.task_seed", "zero"): "any int seeds the task generator",
    ("model_path", "empty"): "'' builds the tiny model for data.task",
    ("resume_from", "empty"): "'' = no other run to resume from",
    ("reward.spec", "empty"): "'' = the reward of data.task",
    ("data.train_paths", "empty"): "'' with a synthetic data.task",
    ("data.eval_paths", "empty"): "'' with a synthetic data.task",
    ("data.system_prompt", "empty"): "'' = no system turn",
    ("distributed.coordinator_address", "empty"): "'' = unset",
    ("distributed.num_processes", "zero"): "0 = unset (single process)",
    ("distributed.process_id", "negative"): "-1 = unset",
    ("distributed.process_id", "zero"): "process 0",
    ("mesh.fsdp", "negative"): "-1 = all remaining devices",
    ("sft.steps", "zero"): "0 = no supervised warm start",
    ("sft.seed", "negative"): "-1 = the run's seed",
    ("sft.seed", "zero"): "any int >= 0 seeds the warm start",
    ("eval.every", "zero"): "0 = evaluate only before and after",
    ("eval.pass_k", "zero"): "0 = no pass@k",
    ("eval.num_samples", "zero"): "0 = pass_k samples per prompt",
    ("eval.success_threshold", "negative"): "a reward threshold, any number",
    ("eval.success_threshold", "zero"): "a reward threshold, any number",
    ("train.measure_every", "zero"): "0 = no measured entropy change",
    ("train.pack_fraction", "zero"): "0 = no sequence packing",
    ("train.pack_row_len", "zero"): "0 = rows of P + C tokens",
    ("model.remat_policy", "empty"): "'' = from model.remat",
    ("optim.warmup_steps", "zero"): "no warm-up",
    ("optim.weight_decay", "zero"): "no weight decay",
    ("optim.b1", "zero"): "Adam without momentum",
    ("optim.b2", "zero"): "Adam with instantaneous second moments",
    ("rollout.top_k", "zero"): "0 = no top-k truncation",
    ("rollout.num_slots", "zero"): "0 = a quarter of the rows",
    ("loss.kl_coef", "zero"): "no KL penalty",
    ("advantage.gamma", "zero"): "GAE without discount past the token",
    ("advantage.lam", "zero"): "GAE as the one-step TD error",
    ("critic.warmup_steps", "zero"): "no critic-only warm-up",
    ("critic.weight_decay", "zero"): "no critic weight decay",
    ("loss.kl_in_reward_coef", "zero"): "no KL in the reward",
    ("loss.clip_eps_low", "zero"): "a clip range of 0 is legal PPO",
    ("loss.clip_eps_high", "zero"): "a clip range of 0 is legal PPO",
    ("entropy.coef", "zero"): "no bonus / no KL-Cov penalty",
    ("entropy.coef_init", "zero"): "AEnt starting from 0",
    ("entropy.coef_min", "zero"): "a lower clip bound of 0",
    ("entropy.coef_max", "zero"): "an upper clip bound of 0 (coef stays 0)",
    ("entropy.coef_min_aent", "zero"): "a lower clip bound of 0",
    ("entropy.delta", "zero"): "bang-bang step of 0 (fixed coef)",
    ("entropy.lr", "zero"): "a fixed coefficient",
    ("entropy.target", "zero"): "a target entropy of 0",
    ("entropy.h_low", "zero"): "AEnt band starting at 0",
    ("entropy.anneal_end", "zero"): "anneal down to 0",
    ("entropy.clip_cov_lb", "negative"): "covariance bounds may be negative",
    ("entropy.clip_cov_lb", "zero"): "covariance bounds may be 0",
    # Record field names are checked against the prompt file when it is
    # read (data/records.py names the file and line); a synthetic task
    # ignores them.
    **{(f"data.{f}", kind): "a record field name, checked when the prompt "
       "file is read" for f in ("prompt_field", "answer_field", "id_field")
       for kind in ("unknown_name", "missing_path")},
    ("data.answer_field", "empty"): "'' = records without answers",
    ("sweep.seeds", "empty"): "'' = no sweep (one run)",
    ("sweep.grid", "empty"): "'' = no coefficient grid",
    ("data.id_field", "empty"): "'' = ids from file:line",
    ("sft.demo_accuracy", "zero"): "a demonstrator that always slips",
    ("lora.dropout", "zero"): "no adapter dropout (the one value supported)",
    ("lora.seed", "zero"): "any int seeds the adapters",
    # W&B's free-text fields: any name is a name ('' = wandb's default, and
    # `dir` is created by wandb if missing); off unless wandb.enabled.
    **{(f"wandb.{f}", kind): "W&B free text ('' = wandb's default)"
       for f in ("project", "entity", "name", "group", "notes", "dir")
       for kind in ("empty", "unknown_name", "missing_path")},
}


def bad_values(default) -> dict:
  """Kind -> a bad value, for a leaf whose default is `default`."""
  if isinstance(default, bool):
    return {"wrong_type": "yes", "wrong_type_int": 2}
  if isinstance(default, int):
    return {"wrong_type": "abc", "wrong_type_float": 1.5, "negative": -1,
            "zero": 0, "nan": math.nan, "inf": math.inf}
  if isinstance(default, float):
    return {"wrong_type": "abc", "negative": -1.0, "zero": 0.0,
            "nan": math.nan, "inf": math.inf, "neg_inf": -math.inf}
  if isinstance(default, str):
    return {"wrong_type": 3, "empty": "", "unknown_name": "no_such_name_zz",
            "missing_path": "/nonexistent/zz.jsonl"}
  if default is None:  # vocab_chunk: an int or None.
    return {"wrong_type": "abc", "negative": -1, "zero": 0, "nan": math.nan}
  if hasattr(default, "keys"):
    return {"wrong_type": 3, "unknown_name": {"no_such_knob": 1}}
  return {"wrong_type": object()}


def set_leaf(config, path, value):
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value


def problems_for(path, value, config=None):
  config = config or grpo_tiny.get_config("runlocal")
  set_leaf(config, path, value)
  try:
    validate.validate_config(config, num_devices=1, num_processes=1)
  except validate.ConfigError as e:
    return e.problems
  return None


def _names(problems, leaf) -> bool:
  # The leaf, its block (`data.task_kwargs` for one knob, `mesh` for an
  # axis), or a cross-field problem whose message names it.
  return any(f == leaf or leaf.startswith(f + ".") or leaf in msg
             for f, msg in problems)


LEAVES = checker.leaves(grpo_tiny.get_config("runlocal"))
CASES = [(leaf, kind, value) for leaf in LEAVES for kind, value in
         bad_values(checker.get(grpo_tiny.get_config("runlocal"), leaf)
                    ).items()]


class EveryLeafTest(absltest.TestCase):

  def test_every_bad_value_is_refused_or_documented(self):
    accepted, wrong = [], []
    for leaf, kind, value in CASES:
      problems = problems_for(leaf, value)
      if (leaf, kind) in DOCUMENTED_VALID:
        if problems is not None:
          wrong.append((leaf, kind, "documented valid, refused", problems))
        continue
      if problems is None:
        accepted.append((leaf, kind, value))
      elif not _names(problems, leaf):
        wrong.append((leaf, kind, "refused without naming it", problems))
      elif any("\n" in msg for _, msg in problems):
        wrong.append((leaf, kind, "multi-line message", problems))
    self.assertEqual(accepted, [], "accepted and not in DOCUMENTED_VALID")
    self.maxDiff = None
    self.assertEqual(wrong, [])
    print(f"config fuzz: {len(CASES)} (leaf, bad value) cases over "
          f"{len(LEAVES)} leaves, {len(DOCUMENTED_VALID)} documented valid")

  def test_documented_cases_exist(self):
    kinds = {(leaf, kind) for leaf, kind, _ in CASES}
    self.assertLessEqual(set(DOCUMENTED_VALID), kinds)

  def test_missing_paths_are_named(self):
    for field in ("data.train_paths", "data.eval_paths"):
      config = grpo_tiny.get_config("runlocal")
      config.data.task = ""
      config.model_path = "/nonexistent/model"
      config.reward.spec = "math"
      problems = problems_for(field, "/nonexistent/zz.jsonl", config)
      self.assertIn(field, [f for f, _ in problems])
      self.assertIn("prompt file not found", dict(problems)[field])
    self.assertIn("model_path", [f for f, _ in problems])


_ANY_VALUE = st.one_of(
    st.integers(-10**12, 10**12), st.floats(allow_nan=True,
                                             allow_infinity=True),
    st.text(max_size=40), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=3),
    # (ConfigDict refuses dotted keys itself, on assignment.)
    st.dictionaries(st.text(alphabet="abcxyz_", max_size=5), st.integers(),
                    max_size=2))


# Leaves that also take None, or a list of paths, by design.
NONE_OK = {"loss.vocab_chunk", "loss.clip_ratio_c", "optim.grad_clip",
           "critic.grad_clip",
           "reward.batch_timeout_s", "data.task_kwargs", "sharding.rules"}
LIST_OK = {"data.train_paths", "data.eval_paths"}
DICT_OK = {"reward.spec"}  # {"math": 1.0, "format": 0.1}; {} = task reward.


def _same_kind(leaf, value, default) -> bool:
  if value is None:
    return leaf in NONE_OK
  if leaf in DICT_OK and hasattr(value, "keys"):
    return True
  if leaf in LIST_OK and isinstance(value, (list, tuple)):
    return all(isinstance(p, str) for p in value)
  if default is None:
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(default, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float))
  if hasattr(default, "keys"):
    return hasattr(value, "keys")
  return isinstance(value, type(default))


class RandomValuesTest(absltest.TestCase):

  @hypothesis.settings(max_examples=200, derandomize=True, deadline=None,
                       database=None,
                       suppress_health_check=list(hypothesis.HealthCheck))
  @hypothesis.given(leaf=st.sampled_from(LEAVES), value=_ANY_VALUE)
  def test_refused_or_of_the_leaf_type(self, leaf, value):
    default = checker.get(grpo_tiny.get_config("runlocal"), leaf)
    config = grpo_tiny.get_config("runlocal")
    # Nothing but ConfigError escapes validation.
    problems = problems_for(leaf, value, config)
    # What the config holds (ConfigDict casts e.g. False -> 0.0 for floats,
    # as the flag parser would refuse "False" for a float field anyway).
    value = checker.get(config, leaf)
    if problems is None:
      self.assertTrue(_same_kind(leaf, value, default), (leaf, value))
      if isinstance(value, float):
        self.assertTrue(math.isfinite(value), (leaf, value))
    else:
      self.assertTrue(all("\n" not in m for _, m in problems), problems)


if __name__ == "__main__":
  absltest.main()
