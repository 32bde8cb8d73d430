"""Tests for jaxrl_ent.entropy.schedules: closed forms and validation."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_ent.entropy import schedules


class SchedulesTest(parameterized.TestCase):

  def test_inverse_power_closed_form(self):
    sched = schedules.inverse_power(0.5, tau=100.0, power=0.5)
    counts = np.array([0, 100, 300, 9900])
    got = jax.jit(jax.vmap(sched))(jnp.asarray(counts))
    np.testing.assert_allclose(got, 0.5 * (1 + counts / 100) ** -0.5, rtol=1e-6)
    np.testing.assert_allclose(got, [0.5, 0.5 / np.sqrt(2), 0.25, 0.05],
                               rtol=1e-6)

  def test_linear_and_cosine_closed_forms(self):
    lin = schedules.linear(1.0, 0.0, transition_steps=10, transition_begin=5)
    np.testing.assert_allclose([lin(0), lin(5), lin(10), lin(15), lin(99)],
                               [1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-6)
    cos = schedules.cosine(2.0, decay_steps=10, alpha=0.1)
    for t in (0, 3, 10, 20):
      frac = min(t, 10) / 10
      want = 2.0 * ((1 - 0.1) * 0.5 * (1 + np.cos(np.pi * frac)) + 0.1)
      np.testing.assert_allclose(cos(t), want, rtol=1e-6)
    np.testing.assert_allclose(schedules.constant(0.3)(7), 0.3)

  def test_as_schedule(self):
    np.testing.assert_allclose(schedules.as_schedule(0.25)(123), 0.25)
    sched = schedules.inverse_power(1.0, 1.0, 1.0)
    self.assertIs(schedules.as_schedule(sched), sched)

  @parameterized.named_parameters(
      ("tau", lambda: schedules.inverse_power(1.0, tau=0.0, power=1.0), "tau"),
      ("power", lambda: schedules.inverse_power(1.0, 1.0, power=-1.0),
       "power"),
      ("init", lambda: schedules.inverse_power(-1.0, 1.0, 1.0), "init_value"),
      ("steps", lambda: schedules.linear(1.0, 0.0, 0), "transition_steps"),
      ("begin", lambda: schedules.linear(1.0, 0.0, 5, -1), "transition_begin"),
      ("alpha", lambda: schedules.cosine(1.0, 10, alpha=2.0), "alpha"),
      ("nan", lambda: schedules.constant(float("nan")), "value"),
  )
  def test_validation(self, make, name):
    with self.assertRaisesRegex(ValueError, name):
      make()

  def test_traced_values_skip_validation(self):
    # Factories run under vmap when sweeping a coefficient.
    got = jax.vmap(lambda b: schedules.inverse_power(b, 2.0, 1.0)(2))(
        jnp.array([1.0, 4.0]))
    np.testing.assert_allclose(got, [0.5, 2.0])


if __name__ == "__main__":
  absltest.main()
