"""Tests for jaxrl_ent.theory.mdp against brute-force trajectory enumeration."""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_ent.theory import mdp as mdp_lib

_S, _A, _T = 2, 2, 3


def _np_mdp(seed=0):
  with jax.enable_x64(True):
    m = mdp_lib.random_mdp(jax.random.PRNGKey(seed), _S, _A)
    return jax.tree.map(np.asarray, m)


def _np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _brute_force_return(m, pi_tsa, alpha=0.0):
  """Σ over all (s_0, a_0, ..., s_{T-1}, a_{T-1}) of prob × (Σ r + αH)."""
  total = 0.0
  horizon = pi_tsa.shape[0]
  for states in itertools.product(range(_S), repeat=horizon):
    for actions in itertools.product(range(_A), repeat=horizon):
      prob = m.init_s[states[0]]
      ret = 0.0
      for t in range(horizon):
        s, a = states[t], actions[t]
        prob *= pi_tsa[t, s, a]
        if t + 1 < horizon:
          prob *= m.transition_sas[s, a, states[t + 1]]
        ret += m.reward_sa[s, a]
        if alpha:
          ent = -np.sum(pi_tsa[t, s] * np.log(pi_tsa[t, s]))
          ret += alpha * ent
      total += prob * ret
  return total


def _brute_force_optimum(m):
  """max over all deterministic Markov policies (A^(T·S) of them)."""
  best = -np.inf
  for choice in itertools.product(range(_A), repeat=_T * _S):
    pi = np.eye(_A)[np.array(choice)].reshape(_T, _S, _A)
    best = max(best, _brute_force_return(m, pi))
  return best


class MdpTest(parameterized.TestCase):

  @parameterized.parameters(0.0, 0.4)
  def test_policy_return_matches_enumeration(self, alpha):
    m = _np_mdp()
    logits = np.random.default_rng(0).normal(size=(_T, _S, _A))
    with jax.enable_x64(True):
      got = mdp_lib.policy_return(jax.tree.map(jnp.asarray, m),
                                  jnp.asarray(logits), alpha)
    expected = _brute_force_return(m, _np_softmax(logits), alpha)
    self.assertAlmostEqual(float(got), expected, places=10)

  def test_soft_backward_induction_matches_enumeration(self):
    m = _np_mdp(1)
    alpha = 0.3
    with jax.enable_x64(True):
      jm = jax.tree.map(jnp.asarray, m)
      logits, soft_value = mdp_lib.soft_backward_induction(jm, _T, alpha)
      grad = jax.grad(mdp_lib.policy_return, argnums=1)(jm, logits, alpha)
      rand = jax.random.normal(jax.random.PRNGKey(2), (32, _T, _S, _A))
      others = np.asarray(jax.vmap(mdp_lib.policy_return, (None, 0, None))(
          jm, logits + 0.5 * rand, alpha))
      logits, soft_value, grad = map(np.asarray, (logits, soft_value, grad))
    star = _brute_force_return(m, _np_softmax(logits), alpha)
    self.assertAlmostEqual(float(soft_value), star, places=10)
    np.testing.assert_allclose(grad, 0.0, atol=1e-10)
    self.assertLess(float(np.max(others)), star)

  def test_optimal_value_matches_deterministic_policy_enumeration(self):
    m = _np_mdp(2)
    with jax.enable_x64(True):
      got = mdp_lib.optimal_value(jax.tree.map(jnp.asarray, m), _T)
    self.assertAlmostEqual(float(got), _brute_force_optimum(m), places=10)

  def test_expected_entropy_matches_enumeration(self):
    m = _np_mdp(3)
    logits = np.random.default_rng(3).normal(size=(_T, _S, _A))
    with jax.enable_x64(True):
      got = mdp_lib.expected_entropy(jax.tree.map(jnp.asarray, m),
                                     jnp.asarray(logits))
    zero = m.replace(reward_sa=np.zeros_like(m.reward_sa))
    self.assertAlmostEqual(float(got),
                           _brute_force_return(zero, _np_softmax(logits), 1.0),
                           places=10)

  def test_exact_policy_gradient_matches_finite_differences(self):
    m = _np_mdp(4)
    logits = np.random.default_rng(4).normal(size=(_T, _S, _A))
    eps = 1e-5
    fd = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
      d = np.zeros_like(logits)
      d[idx] = eps
      fd[idx] = (_brute_force_return(m, _np_softmax(logits + d), 0.2)
                 - _brute_force_return(m, _np_softmax(logits - d), 0.2)) / (
                     2 * eps)
    with jax.enable_x64(True):
      got = jax.grad(mdp_lib.policy_return, argnums=1)(
          jax.tree.map(jnp.asarray, m), jnp.asarray(logits), 0.2)
    np.testing.assert_allclose(got, fd, atol=1e-8)

  def test_train_er_vmaps_over_alpha_and_approaches_soft_optimum(self):
    with jax.enable_x64(True):
      m = mdp_lib.random_mdp(jax.random.PRNGKey(5), _S, _A)
      alphas = jnp.array([0.5, 1.0])

      def run(alpha):
        logits, values = mdp_lib.train_er(
            m, jnp.zeros((_T, _S, _A)), alpha, 2.0 / alpha, num_steps=300)
        star, soft_value = mdp_lib.soft_backward_induction(m, _T, alpha)
        return jax.nn.softmax(logits), jax.nn.softmax(star), values, soft_value

      pi, pi_star, values, soft_value = map(
          np.asarray, jax.jit(jax.vmap(run))(alphas))
    np.testing.assert_allclose(pi, pi_star, atol=1e-3)
    # Ascent is monotone here and never exceeds the soft value.
    self.assertTrue(np.all(np.diff(values, axis=1) > -1e-12))
    self.assertTrue(np.all(values <= soft_value[:, None] + 1e-12))


if __name__ == "__main__":
  absltest.main()
