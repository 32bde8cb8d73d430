"""Typed config blocks (`jaxrl_ent.schema`, `train/config_blocks.py`)."""

import dataclasses
import math
import tempfile

from absl.testing import absltest
import ml_collections

from configs import grpo_tiny
from jaxrl_ent import checker
from jaxrl_ent import schema
from jaxrl_ent.models import hf_io
from jaxrl_ent.rl import registry
from jaxrl_ent.train import config_blocks
from jaxrl_ent.train import factories


@dataclasses.dataclass(frozen=True)
class _Toy(schema.Block):
  rate: float = schema.num(low=0.0, low_open=True, hparam=True)
  steps: int = schema.int_(10, low=1, required=False)
  kind: str = schema.str_("a", choices=("a", "b"), required=False)
  lo: float = schema.num(0.0, key="lo_toy")
  hi: float = schema.num(1.0, required=False)

  def problems(self, prefix):
    if self.lo > self.hi:
      return [(f"{prefix}.lo_toy", "lo > hi")]
    return []


def _check(values, **kw):
  c = checker.Checker(ml_collections.ConfigDict({"toy": values}))
  return _Toy.check(c, "toy", **kw), c.problems, c.seen


class BlockTest(absltest.TestCase):

  def test_reads_typed_values_and_defaults(self):
    block, problems, seen = _check({"rate": 2, "lo_toy": -1.0, "hi": 3.0,
                                    "steps": 4})
    self.assertEqual(problems, [])
    self.assertEqual(block, _Toy(rate=2.0, steps=4, kind="a", lo=-1.0,
                                 hi=3.0))
    self.assertIsInstance(block.rate, float)
    self.assertEqual(seen, {"toy.rate", "toy.steps", "toy.kind", "toy.lo_toy",
                            "toy.hi"})
    with self.assertRaises(dataclasses.FrozenInstanceError):
      block.rate = 1.0

  def test_each_bad_field_is_named_and_no_block_is_returned(self):
    block, problems, _ = _check({"rate": 0.0, "steps": 1.5, "kind": "c",
                                 "lo_toy": math.nan, "hi": 1.0})
    self.assertIsNone(block)
    self.assertEqual([f for f, _ in problems],
                     ["toy.rate", "toy.steps", "toy.kind", "toy.lo_toy"])
    self.assertIn("allowed: a finite number in (0, inf)", problems[0][1])
    self.assertIn("allowed: ('a', 'b')", problems[2][1])

  def test_missing_required_values(self):
    block, problems, _ = _check({"hi": 1.0, "lo_toy": 0.0})
    self.assertIsNone(block)
    self.assertEqual(problems, [("toy.rate", "missing (the trainer reads "
                                 "this field)")])
    # A default does not make a field optional (`required=False` does);
    # unrequired, nothing is reported, but a field without a default is
    # still needed to build the block.
    block, problems, _ = _check({"hi": 1.0}, required=False)
    self.assertEqual((block, problems), (None, []))
    block, problems, _ = _check({"rate": 1.0}, required=False)
    self.assertEqual(block, _Toy(rate=1.0))

  def test_cross_field_rule_runs_on_a_valid_block(self):
    block, problems, _ = _check({"rate": 1.0, "lo_toy": 2.0, "hi": 1.0})
    self.assertIsNotNone(block)
    self.assertEqual(problems, [("toy.lo_toy", "lo > hi")])

  def test_adjust_and_skip(self):
    _, problems, _ = _check({"rate": 1.0, "steps": 20, "lo_toy": 0.0},
                            adjust={"steps": {"high": 10}})
    self.assertEqual([f for f, _ in problems], ["toy.steps"])
    self.assertIn("[1, 10]", problems[0][1])
    _, problems, seen = _check({"rate": 1.0, "lo_toy": 0.0}, skip={"hi"})
    self.assertNotIn("toy.hi", seen)
    self.assertEqual(problems, [])

  def test_hparam_and_config_keys(self):
    self.assertEqual(_Toy.keys(), ("rate", "steps", "kind", "lo_toy", "hi"))
    self.assertEqual(_Toy.hparam_keys(), ("rate",))
    self.assertEqual(schema.key_of(_Toy, "lo"), "lo_toy")


class RegistryTest(absltest.TestCase):

  def test_entries_carry_their_parameter_class(self):
    reg = schema.Registry("toy")
    reg.register("one", len, params=_Toy)
    reg.register("two")(abs)
    self.assertIs(reg.get("one"), len)
    self.assertIs(reg.params("one"), _Toy)
    self.assertIsNone(reg.params("two"))
    self.assertEqual(reg.in_order(), ("one", "two"))
    with self.assertRaisesRegex(ValueError, "params must be a Block"):
      reg.register("three", len, params=dict)
    with self.assertRaisesRegex(ValueError, "Unknown toy 'four'"):
      reg.params("four")

  def test_policy_losses_read_their_own_keys(self):
    self.assertEqual(registry.POLICY_LOSSES.params("ppo_clip").keys(),
                     ("clip_eps_low", "clip_eps_high", "clip_ratio_c"))
    self.assertEqual(registry.POLICY_LOSSES.params("gspo").keys(),
                     ("gspo_eps_low", "gspo_eps_high"))
    self.assertEqual(registry.POLICY_LOSSES.params("reinforce").keys(), ())
    self.assertEqual(registry.ADVANTAGE_ESTIMATORS.params("gae").keys(),
                     ("gamma", "lam"))
    self.assertIsNone(registry.ADVANTAGE_ESTIMATORS.params("grpo"))


class ParseTest(absltest.TestCase):

  def test_the_main_config_parses_to_its_values(self):
    config = grpo_tiny.get_config()
    run = config_blocks.parse(config)
    self.assertEqual(run.optim.lr, config.optim.lr)
    self.assertEqual(run.train.steps, config.train.steps)
    self.assertEqual(run.entropy.method, "none")
    self.assertEqual(run.policy_loss, registry.PPOClipParams(
        eps_low=0.2, eps_high=0.28, clip_ratio_c=10.0))
    run = config_blocks.parse(grpo_tiny.get_config("entropy=aent"))
    self.assertEqual((run.entropy.params.h_low, run.entropy.params.coef_max),
                     (0.2, 3e-3))

  def test_model_execution_options_reach_every_model_config(self):
    from jaxrl_ent.models import config as config_lib  # pylint: disable=g-import-not-at-top
    from jaxrl_ent.models import tiny_hf  # pylint: disable=g-import-not-at-top
    from jaxrl_ent.train import policy_setup  # pylint: disable=g-import-not-at-top
    config = grpo_tiny.get_config()
    self.assertEqual(config_blocks.model_options(config), {
        "remat": False, "remat_policy": None, "attention_impl": "auto",
        "scan_unroll": 1})
    config.model.remat_policy = "save_names"
    config.model.attention_impl = "xla_naive"
    config.model.scan_unroll = 2
    tok = tiny_hf.tiny_tokenizer(vocab_size=300)
    cfg = policy_setup.tiny_model_config(config, tok)
    self.assertEqual((cfg.effective_remat_policy, cfg.attention_impl,
                      cfg.scan_unroll), ("save_names", "xla_naive", 2))
    # A checkpoint's config.json takes them the same way.
    with tempfile.TemporaryDirectory() as d:
      tiny_hf.write_checkpoint(d, "qwen2", vocab_size=64, hidden_size=32,
                               intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2)
      cfg = hf_io.load_config(d, options=config_blocks.model_options(config))
    self.assertEqual((cfg.remat_policy, cfg.attention_impl, cfg.scan_unroll),
                     ("save_names", "xla_naive", 2))
    with self.assertRaisesRegex(ValueError, "not execution options"):
      config_lib.execution_options({"hidden_size": 3})
    for field, bad in (("attention_impl", "flash"), ("scan_unroll", 0),
                       ("remat_policy", "sometimes")):
      config = grpo_tiny.get_config()
      config.model[field] = bad
      with self.assertRaisesRegex(checker.ConfigError, f"model.{field}"):
        config_blocks.model_options(config)

  def test_estimator_parameters_are_read_and_checked_when_unused(self):
    config = grpo_tiny.get_config("algo=ppo")
    config.advantage.lam = 0.95
    self.assertEqual(config_blocks.parse(config).estimator,
                     registry.GAEParams(gamma=1.0, lam=0.95))
    self.assertEqual(factories.initial_hparams(config)["advantage.lam"],
                     0.95)
    config = grpo_tiny.get_config()  # grpo: no estimator parameters.
    self.assertIsNone(config_blocks.parse(config).estimator)
    config.advantage.gamma = 1.5
    with self.assertRaises(checker.ConfigError) as ctx:
      config_blocks.parse(config)
    self.assertEqual([f for f, _ in ctx.exception.problems],
                     ["advantage.gamma"])

  def test_no_loss_temperature_the_loss_follows_the_sampler(self):
    config = grpo_tiny.get_config()
    self.assertNotIn("temperature", config.loss)
    config.rollout.temperature = 0.7
    self.assertEqual(factories.update_spec(config).loss.temperature, 0.7)

  def test_parse_refuses_a_bad_value_naming_it(self):
    config = grpo_tiny.get_config("entropy=clip_cov")
    config.entropy.clip_cov_ub = 0.01
    with self.assertRaises(checker.ConfigError) as ctx:
      factories.update_spec(config)
    self.assertEqual([f for f, _ in ctx.exception.problems],
                     ["entropy.clip_cov_lb"])

  def test_make_controller_reads_an_entropy_block(self):
    block = grpo_tiny.entropy_config("kl_cov")
    self.assertIsNotNone(factories.make_controller(block).init(None))
    block.ratio = 0.0
    with self.assertRaisesRegex(checker.ConfigError, "entropy.ratio"):
      factories.make_controller(block)


if __name__ == "__main__":
  absltest.main()
