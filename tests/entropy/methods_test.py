"""The entropy-method registry: parameter classes and the chains built from them."""

import dataclasses
import inspect

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from configs import grpo_tiny
from jaxrl_ent import schema
from jaxrl_ent.entropy import controllers
from jaxrl_ent.entropy import methods
from jaxrl_ent.entropy import reweighting
from jaxrl_ent.rl import hparams as hparams_lib
from jaxrl_ent.train import factories
from tests.entropy import controllers_test

# The kernel each method's stage calls, and config key -> kernel argument
# where the names differ (written out here, independently of the module).
KERNELS = {
    "entropy_bonus": (controllers.entropy_bonus, {}),
    "clip_cov": (controllers.clip_cov, {"clip_cov_lb": "lb",
                                        "clip_cov_ub": "ub"}),
    "kl_cov": (controllers.kl_cov, {}),
    "high_entropy_tokens": (controllers.high_entropy_tokens, {}),
    "adaptive_entropy": (controllers.adaptive_entropy, {}),
    "steer": (reweighting.steer, {"steer_mode": "mode",
                                  "steer_score": "score"}),
    "aent": (reweighting.aent, {"coef_min_aent": "coef_min",
                                "coef_max_aent": "coef_max"}),
}


def _direct(method, entropy, clip_low, clip_high):
  """The method's controller called directly with Python values."""
  fn, rename = KERNELS[method]
  params = inspect.signature(fn).parameters
  kwargs = {}
  for key in methods.METHODS.params(method).keys():
    arg = rename.get(key, key)
    if arg in params:
      kwargs[arg] = entropy[key]
  if method == "clip_cov":
    kwargs.update(clip_eps_low=clip_low, clip_eps_high=clip_high)
  return fn(**kwargs)


class RegistryTest(parameterized.TestCase):

  def test_every_method_has_a_parameter_block(self):
    self.assertEqual(set(methods.NAMES), set(grpo_tiny.ENTROPY_PRESETS) - {
        k for k in grpo_tiny.ENTROPY_PRESETS if k.endswith("_annealed")})
    for name in methods.NAMES:
      cls = methods.METHODS.params(name)
      self.assertTrue(issubclass(cls, schema.Block), name)
      self.assertTrue(dataclasses.is_dataclass(cls) and
                      cls.__dataclass_params__.frozen, name)

  def test_every_key_is_in_the_shipped_entropy_block(self):
    block = grpo_tiny.entropy_config()
    for name in methods.NAMES:
      for key in methods.METHODS.params(name).keys():
        self.assertIn(key, block, f"{name}: entropy.{key}")
    for key in methods.Anneal.keys():
      self.assertIn(key, block)

  @parameterized.parameters(*KERNELS)
  def test_parameter_defaults_are_the_kernels_defaults(self, method):
    fn, rename = KERNELS[method]
    kernel = inspect.signature(fn).parameters
    cls = methods.METHODS.params(method)
    checked = 0
    for f in dataclasses.fields(cls):
      key = schema.key_of(cls, f.name)
      arg = kernel.get(rename.get(key, key))
      if arg is not None and arg.default is not inspect.Parameter.empty:
        self.assertEqual(f.default, arg.default, f"{method}.{key}")
        checked += 1
    has_defaults = any(p.default is not inspect.Parameter.empty
                       for p in kernel.values())
    self.assertEqual(checked > 0, has_defaults, method)

  @parameterized.parameters(*KERNELS)
  def test_chain_from_hparams_equals_the_direct_controller(self, method):
    config = grpo_tiny.get_config(f"entropy={method}")
    spec = factories.update_spec(config).controller
    hp = factories.initial_hparams(config)
    keys = set(spec.hparam_fields()) | {"loss.clip_eps_low",
                                        "loss.clip_eps_high"}
    chain = hparams_lib.controller(
        dataclasses.replace(spec, track=False),
        hparams_lib.as_hparams({k: hp[k] for k in keys if k in hp}), 0)
    direct = _direct(method, config.entropy, config.loss.clip_eps_low,
                     config.loss.clip_eps_high)
    ctx, grads = controllers_test._context(), controllers_test._grads()
    for steps in (1, 3):  # Stateful methods (adaptive, aent) move.
      got, _ = controllers_test._run(chain, grads, ctx, steps)
      want, _ = controllers_test._run(direct, grads, ctx, steps)
      np.testing.assert_allclose(got.logp, want.logp, rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(got.entropy, want.entropy, rtol=1e-6,
                                 atol=1e-7)

  def test_hparam_keys_are_the_numbers_and_structure_is_not(self):
    for name in methods.NAMES:
      cls = methods.METHODS.params(name)
      for attr, rule in schema.rules(cls).items():
        key = rule.key or attr
        self.assertEqual(rule.hparam, rule.kind == "num", f"{name}.{key}")
        self.assertEqual(key in methods.STRUCTURAL, rule.kind == "str")
    self.assertEqual(methods.hparam_keys("aent"), (
        "coef_init", "lr", "h_low", "h_high", "coef_min_aent",
        "coef_max_aent"))

  def test_readers_name_each_field_once_per_method(self):
    readers = methods.readers()
    self.assertEqual(readers["coef"], ("entropy_bonus", "kl_cov"))
    self.assertEqual(readers["lr"], ("adaptive_entropy", "aent"))
    self.assertEqual(readers["coef_max_aent"], ("aent",))
    self.assertEqual(readers["anneal"], ("entropy_bonus", "clip_cov",
                                         "kl_cov"))

  def test_unknown_method_raises_with_the_names(self):
    with self.assertRaisesRegex(ValueError, "entropy method 'max_ent'.*"
                                "clip_cov"):
      methods.METHODS.params("max_ent")
    with self.assertRaisesRegex(ValueError, "allowed"):
      hparams_lib.controller(hparams_lib.ControllerSpec(method="max_ent"),
                             {}, 0)


if __name__ == "__main__":
  absltest.main()
