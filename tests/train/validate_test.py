"""Config validation: every bad field named, all at once, before compiling."""

import json
import math
import os
import pathlib
import subprocess
import sys
from unittest import mock

import jax
import ml_collections
from absl.testing import absltest
from absl.testing import parameterized

from configs import grpo_qwen2_5_0_5b
from configs import grpo_tiny
from configs import tpu_grpo
from jaxrl_ent.train import rl_loop
from jaxrl_ent.train import validate

_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tiny(arg="runlocal"):
  return grpo_tiny.get_config(arg)


def _set(path, value):
  def edit(c):
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return edit


def _clip_cov(lb, ub):
  def edit(c):
    c.entropy.method = "clip_cov"
    c.entropy.clip_cov_lb, c.entropy.clip_cov_ub = lb, ub
  return edit


def _method(method, **fields):
  # Rebuilt rather than assigned: a schedule (a callable) cannot be assigned
  # to a float field of a type-safe ConfigDict, but a config built in Python
  # may hold one.
  def edit(c):
    c.entropy = ml_collections.ConfigDict(
        {**c.entropy.to_dict(), "method": method, **fields})
  return edit


def _wrong_type(section, field, value):
  # ConfigDicts are type-safe on assignment; a config assembled from plain
  # dicts (or a None-typed field) can still carry a wrong type.
  def edit(c):
    c[section] = ml_collections.ConfigDict({**c[section].to_dict(),
                                            field: value})
  return edit


def _countdown_demos(accuracy):
  # Countdown has many right answers and no single typical slip, so no
  # imperfect demonstrator (rewards.tasks.Task.mistake is None).
  def edit(c):
    c.data.task = "countdown"
    c.data.task_kwargs = {}
    c.sft.demo_accuracy = accuracy
  return edit


def _mesh(**sizes):
  def edit(c):
    c.mesh = ml_collections.ConfigDict(sizes)
  return edit


def _vector_schedule(count):
  return jax.numpy.ones(3) * count


# (name, edit, the one field named, a fragment of the message, devices).
BAD_CONFIGS = (
    ("mesh_product", _mesh(data=2, fsdp=1, tensor=1), "mesh",
     "multiply to 2 but there are 1 devices", 1),
    ("mesh_not_dividing", _mesh(data=3, fsdp=-1, tensor=1), "mesh",
     "does not divide the 8 device", 8),
    ("mesh_two_auto", _mesh(data=-1, fsdp=-1, tensor=1), "mesh",
     "at most one axis set to -1", 8),
    ("mesh_unknown_axis", _mesh(data=1, model=1), "mesh.model",
     "allowed axes", 1),
    ("mini_batches", _set("train.num_mini_batches", 3),
     "train.num_mini_batches", "8 rows do not split", 1),
    ("micro_batches", _set("loss.num_micro_batches", 3),
     "train.num_mini_batches", "loss.num_micro_batches=3", 1),
    ("data_parallel", _set("loss.num_micro_batches", 2),
     "loss.num_micro_batches", "data-parallel size 4", 4),
    ("clip_cov_bounds", _clip_cov(5.0, 1.0), "entropy.clip_cov_lb",
     "clip_cov_lb < clip_cov_ub", 1),
    ("clip_cov_equal_bounds", _clip_cov(2.0, 2.0), "entropy.clip_cov_lb",
     "clip_cov_lb < clip_cov_ub", 1),
    ("clip_cov_ratio_zero", _method("clip_cov", ratio=0.0), "entropy.ratio",
     "(0, 1]", 1),
    ("kl_cov_ratio_above_one", _method("kl_cov", ratio=1.5), "entropy.ratio",
     "(0, 1]", 1),
    ("quantile", _method("high_entropy_tokens", quantile=0.0),
     "entropy.quantile", "(0, 1]", 1),
    ("negative_bonus", _method("entropy_bonus", coef=-0.1), "entropy.coef",
     "[0, inf)", 1),
    ("negative_kl_coef", _set("loss.kl_coef", -1.0), "loss.kl_coef",
     "[0, inf)", 1),
    ("negative_weight_decay", _set("optim.weight_decay", -0.1),
     "optim.weight_decay", "[0, inf)", 1),
    ("unknown_method", _method("max_entropy"), "entropy.method",
     "'clip_cov'", 1),
    ("unknown_anneal", _method("entropy_bonus", anneal="exponential"),
     "entropy.anneal", "'inverse_power'", 1),
    ("anneal_tau", _method("kl_cov", anneal="inverse_power", anneal_tau=0.0),
     "entropy.anneal_tau", "(0, inf)", 1),
    ("anneal_steps", _method("entropy_bonus", anneal="cosine",
                             anneal_steps=0), "entropy.anneal_steps",
     "an int in [1, inf)", 1),
    # Coefficients are float32 hparams of the jitted update (swept by
    # replicas): a schedule callable in a config is refused, by name.
    ("schedule_refused", _method("entropy_bonus", coef=_vector_schedule),
     "entropy.coef", "a value, not a schedule", 1),
    ("schedule_refused_kl_cov", _method("kl_cov", ratio=lambda n: 0.1),
     "entropy.ratio", "such as entropy.anneal", 1),
    ("lr_schedule", _set("optim.schedule", "step"), "optim.schedule",
     "'cosine'", 1),
    ("adaptive_rule", _method("adaptive_entropy", rule="pid"),
     "entropy.rule", "'lagrangian'", 1),
    ("adaptive_bounds", _method("adaptive_entropy", coef_min=0.5,
                                coef_max=0.1), "entropy.coef_min",
     "entropy.coef_min <= entropy.coef_max", 1),
    ("zero_temperature", _set("rollout.temperature", 0.0),
     "rollout.temperature", "(0, inf)", 1),
    ("top_p", _set("rollout.top_p", 1.5), "rollout.top_p", "(0, 1]", 1),
    ("context", _set("data.max_prompt_length", 60), "data.max_prompt_length",
     "68 exceeds the model's context of 64", 1),
    ("demo_accuracy_range", _set("sft.demo_accuracy", 1.5),
     "sft.demo_accuracy", "[0, 1]", 1),
    ("demo_accuracy_no_mistake", _countdown_demos(0.5), "sft.demo_accuracy",
     "'countdown' has none", 1),
    ("sft_context", _set("sft.seq_len", 100), "sft.seq_len",
     "exceeds the model's context of 64", 1),
    ("kv_heads", _set("model.num_kv_heads", 3), "model.num_kv_heads",
     "does not divide model.num_heads=4", 1),
    ("estimator", _set("advantage.estimator", "gea"), "advantage.estimator",
     "'rloo'", 1),
    ("critic_lr", _set("critic.lr", 0.0), "critic.lr", "(0, inf)", 1),
    ("critic_kind", _set("critic.kind", "shared"), "critic.kind",
     "'model'", 1),
    ("gae_lambda", _set("advantage.lam", 1.5), "advantage.lam", "[0, 1]", 1),
    ("policy_loss", _set("loss.policy_loss", "dpo"), "loss.policy_loss",
     "'gspo'", 1),
    ("reward_spec", _set("reward.spec", "no_such_reward"), "reward.spec",
     "unknown reward", 1),
    ("reward_backend", _set("reward.backend", "ray"), "reward.backend",
     "'process'", 1),
    ("overlong", _set("data.on_overlong", "truncate"), "data.on_overlong",
     "'skip'", 1),
    ("task_kwargs", _set("data.task_kwargs", {"length": 3}),
     "data.task_kwargs", "rejected by task 'digits'", 1),
    ("max_skips", _set("train.max_consecutive_skips", 0),
     "train.max_consecutive_skips", "an int in [1, inf)", 1),
    ("steps_type", _wrong_type("train", "steps", "10"), "train.steps",
     "got '10' (str)", 1),
    ("vocab_chunk_type", _wrong_type("loss", "vocab_chunk", "8192"),
     "loss.vocab_chunk",
     "got '8192' (str)", 1),
    ("bool_type", _wrong_type("train", "recompute_old_logp", "yes"),
     "train.recompute_old_logp", "True or False", 1),
    ("eval_pass_k", _set("eval.pass_k", -1), "eval.pass_k",
     "an int in [0, inf)", 1),
    ("eval_num_samples_below_k", _set("eval.num_samples", 1),
     "eval.num_samples", "needs n >= k samples", 1),
    ("checkpoint_every", _set("checkpoint.every", 0), "checkpoint.every",
     "an int in [1, inf)", 1),
)


class ValidateConfigTest(parameterized.TestCase):

  @parameterized.parameters(
      "", "runlocal", *[f"runlocal,entropy={m}"
                        for m in grpo_tiny.ENTROPY_PRESETS])
  def test_shipped_configs_pass(self, arg):
    validate.validate_config(_tiny(arg), num_devices=1)
    if "runlocal" not in arg:  # 8 rollout rows do not shard over 8 chips.
      validate.validate_config(_tiny(arg), num_devices=8, num_processes=2)

  def test_qwen_config_passes_and_reads_the_checkpoint_context(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    (root / "ckpt").mkdir()
    (root / "ckpt" / "config.json").write_text(
        json.dumps({"max_position_embeddings": 32768}))
    (root / "train.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    config = grpo_qwen2_5_0_5b.get_config()
    config.model_path = str(root / "ckpt")
    config.data.train_paths = str(root / "train.jsonl")
    config.data.eval_paths = str(root / "train.jsonl")
    validate.validate_config(config, num_devices=8)
    (root / "ckpt" / "config.json").write_text(
        json.dumps({"max_position_embeddings": 1000}))
    with self.assertRaisesRegex(validate.ConfigError,
                                "1024 exceeds the model's context of 1000"):
      validate.validate_config(config, num_devices=8)

  @parameterized.named_parameters(*BAD_CONFIGS)
  def test_bad_config_names_the_field(self, edit, field, fragment, devices):
    config = _tiny()
    edit(config)
    with self.assertRaises(validate.ConfigError) as ctx:
      validate.validate_config(config, num_devices=devices)
    fields = [f for f, _ in ctx.exception.problems]
    self.assertEqual(fields, [field], str(ctx.exception))
    message = str(ctx.exception)
    self.assertIsInstance(ctx.exception, ValueError)
    self.assertIn(fragment, message)
    self.assertIn("allowed", message)

  def test_all_problems_are_reported_together(self):
    config = _tiny()
    config.entropy.method = "clip_cov"
    config.entropy.clip_cov_lb = 9.0
    config.rollout.top_p = 0.0
    config.loss.kl_coef = -1.0
    config.train.num_mini_batches = 3
    config.data.max_prompt_length = 100
    config.mesh.data = 2
    with self.assertRaises(validate.ConfigError) as ctx:
      validate.validate_config(config, num_devices=1)
    self.assertCountEqual(
        [f for f, _ in ctx.exception.problems],
        ["mesh", "entropy.clip_cov_lb", "rollout.top_p", "loss.kl_coef",
         "train.num_mini_batches", "data.max_prompt_length"])
    self.assertIn("invalid config, 6 problems", str(ctx.exception))

  def test_processes_must_divide_the_prompt_batch(self):
    with self.assertRaisesRegex(validate.ConfigError,
                                "train.prompts_per_step: 4 .* 3 processes"):
      validate.validate_config(_tiny(), num_devices=3, num_processes=3)

  def test_missing_data_file_is_named(self):
    config = _tiny()
    config.data.task = ""
    config.data.train_paths = "/nonexistent/train.jsonl"
    config.data.eval_paths = "/nonexistent/*.jsonl"
    with self.assertRaises(validate.ConfigError) as ctx:
      validate.validate_config(config, num_devices=1)
    message = str(ctx.exception)
    self.assertIn("data.train_paths: prompt file not found: /nonexistent/"
                  "train.jsonl", message)
    self.assertIn("data.eval_paths: no prompt files match pattern", message)

  def test_nothing_is_built_or_compiled_before_validation(self):
    config = _tiny()
    config.rollout.top_p = 2.0
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    jitted = []
    real_jit = jax.jit

    def recording_jit(*args, **kwargs):
      jitted.append(args)
      return real_jit(*args, **kwargs)

    with mock.patch.object(rl_loop.policy_setup, "build_policy") as build, \
        mock.patch.object(rl_loop.sharding, "make_mesh") as make_mesh, \
        mock.patch.object(jax, "jit", recording_jit):
      with self.assertRaisesRegex(validate.ConfigError, "rollout.top_p"):
        rl_loop.train_and_evaluate(config, workdir)
    build.assert_not_called()
    make_mesh.assert_not_called()
    self.assertEqual(jitted, [])
    self.assertFalse(workdir.exists())


class UnusedFieldsTest(parameterized.TestCase):
  """Fields the selected method ignores: checked, and overrides reported."""

  @parameterized.named_parameters(
      ("coef", "entropy.coef", -0.5), ("coef_nan", "entropy.coef", math.nan),
      ("anneal_steps", "entropy.anneal_steps", -3),
      ("coef_max", "entropy.coef_max", -0.5),
      ("anneal_tau", "entropy.anneal_tau", 0.0),
      ("w_min", "entropy.w_min", 1.5),
      ("vocab", "data.tokenizer_vocab_size", -3),
      ("batch_timeout", "reward.batch_timeout_s", 0.0),
      ("gspo_eps", "loss.gspo_eps_low", -1.0),
  )
  def test_checked_with_method_none(self, field, value):
    config = _tiny()
    self.assertEqual(config.entropy.method, "none")
    with config.ignore_type():
      _set(field, value)(config)
    with self.assertRaises(validate.ConfigError) as ctx:
      validate.validate_config(config, num_devices=1, num_processes=1)
    self.assertEqual([f for f, _ in ctx.exception.problems], [field])

  def test_every_leaf_of_the_main_config_is_checked(self):
    for arg in ("runlocal", None, "entropy=adaptive_entropy"):
      self.assertEqual(validate.unchecked_fields(grpo_tiny.get_config(arg)),
                       [])
    self.assertEqual(validate.unchecked_fields(
        grpo_qwen2_5_0_5b.get_config()), [])
    for job in tpu_grpo.JOBS:
      self.assertEqual(validate.unchecked_fields(
          tpu_grpo.get_config(f"job={job}")), [], job)

  def test_reader_tables_match_the_config_and_the_methods(self):
    fields = set(grpo_tiny.entropy_config().keys()) - {"method"}
    self.assertEqual(fields, set(validate.ENTROPY_READERS) |
                     set(validate.ANNEAL_READERS))
    users = {m for ms in validate.ENTROPY_READERS.values() for m in ms}
    self.assertLessEqual(users, set(validate.ENTROPY_METHODS))

  def test_override_of_an_ignored_field_is_reported(self):
    config = _tiny()
    config.entropy.coef = 0.5
    config.entropy.anneal_tau = 3.0
    config.loss.clip_ratio_c = 3.0
    config.train.steps = 7  # Read by every run: no warning.
    changed = validate.changed_fields(config, _tiny())
    self.assertEqual(changed, ["entropy.anneal_tau", "entropy.coef",
                               "loss.clip_ratio_c", "train.steps"])
    lines = validate.ignored_field_warnings(config, changed)
    self.assertEqual(lines, [
        "entropy.anneal_tau=3.0 is not used: entropy.method='none' does not "
        "read it (read with entropy.anneal in inverse_power with "
        "entropy.method in entropy_bonus|clip_cov|kl_cov)",
        "entropy.coef=0.5 is not used: entropy.method='none' does not read "
        "it (read with entropy.method in entropy_bonus|kl_cov)"])
    config.entropy.method = "kl_cov"
    config.loss.policy_loss = "gspo"
    lines = validate.ignored_field_warnings(config, changed)
    self.assertLen(lines, 2)
    self.assertIn("loss.clip_ratio_c=3.0 is not used", lines[1])
    self.assertIn("entropy.anneal_tau", lines[0])

  def test_unknown_fields_are_left_alone(self):
    config = _tiny()
    config.train.num_replicas = 4  # A field newer code may add.
    config.future = ml_collections.ConfigDict({"knob": [0, 1]})
    validate.validate_config(config, num_devices=1, num_processes=1)
    self.assertEqual(validate.unchecked_fields(config),
                     ["future.knob", "train.num_replicas"])
    self.assertEqual(validate.ignored_field_warnings(
        config, ["train.num_replicas", "future.knob"]), [])


class LauncherTest(absltest.TestCase):
  """The absl launcher: locked-config errors and validation, no training."""

  def _launch(self, *overrides):
    workdir = self.create_tempdir().full_path
    proc = subprocess.run(
        [sys.executable, str(_ROOT / "launch" / "train.py"),
         "--config=configs/grpo_tiny.py:runlocal", f"--workdir={workdir}",
         *overrides], cwd=_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        check=False)
    self.assertNotEqual(proc.returncode, 0)
    self.assertEqual(list(pathlib.Path(workdir).iterdir()), [])
    return proc.stdout + proc.stderr

  def test_unknown_key_wrong_type_and_invalid_values(self):
    # Unknown keys and unparseable values: launch_flags, one line.
    out = self._launch("--config.train.stepz=3")
    self.assertEqual(out, "train.py: error: unknown config field "
                     "--config.train.stepz (block 'train' has no 'stepz'); "
                     "did you mean --config.train.steps?\n")
    out = self._launch("--config.train.steps=abc")
    self.assertIn("--config.train.steps=abc: cannot parse the value as int",
                  out)
    # Values: validate_config, every problem in one message.
    out = self._launch("--config.rollout.top_p=1.5",
                       "--config.entropy.method=clip_cov",
                       "--config.entropy.clip_cov_lb=9.0")
    self.assertIn("invalid config, 2 problems", out)
    self.assertIn("rollout.top_p: got 1.5; allowed", out)
    self.assertIn("entropy.clip_cov_lb: 9 >= entropy.clip_cov_ub=5", out)
    self.assertNotIn("Traceback", out)
    # The cases: fields the method does not read are still checked.
    out = self._launch("--config.data.tokenizer_vocab_size=-3",
                       "--config.entropy.coef=-0.5",
                       "--config.entropy.anneal_steps=-3",
                       "--config.entropy.coef_max=-0.5")
    self.assertIn("invalid config, 4 problems", out)
    for field in ("data.tokenizer_vocab_size", "entropy.coef",
                  "entropy.anneal_steps", "entropy.coef_max"):
      self.assertIn(f"  - {field}: got -", out)


if __name__ == "__main__":
  absltest.main()
