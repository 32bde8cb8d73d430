"""Experiments T4–T5: constant vs annealed control, fixed-point shifts (§1.6).

The bandit analogue of token selection is described in `bandit.py`. Each
method's runs (seeds × constant/annealed × ρ sweep) share ONE jitted, vmapped
`bandit.train_batch` call. Functions return `(rows, curves)` like
`experiments`.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_ent.theory import bandit
from jaxrl_ent.theory import report

fmt = report.fmt


def _tv(p, q):
  return 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)


def sweep(method, reward_nv, settings, *, num_steps, num_inner):
  """Runs every setting over every seed in ONE `bandit.train_batch` call.

  Args:
    method: `bandit.METHODS` entry.
    reward_nv: rewards per seed, [N, V].
    settings: list of S dicts of `bandit.Hyper` fields (scalars).
    num_steps, num_inner: static loop lengths.

  Returns:
    (final logits [S, N, V], metrics dict of [S, N, num_steps(, V)] arrays).
  """
  n = reward_nv.shape[0]
  hyper = jax.tree.map(lambda *xs: jnp.concatenate(xs),
                       *[bandit.hyper_batch(n, **s) for s in settings])
  reward = jnp.tile(reward_nv, (len(settings), 1))
  logits, metrics = bandit.train_batch(
      jnp.zeros_like(reward), reward, hyper, method=method,
      num_steps=num_steps, num_inner=num_inner)
  unstack = lambda x: x.reshape((len(settings), n) + x.shape[1:])
  return jax.device_get(jax.tree.map(unstack, (logits, metrics)))


def _split(metrics, num):
  return [jax.tree.map(lambda x, i=i: x[i], metrics) for i in range(num)]


def t4_constant_vs_annealed(key, *, num_seeds, num_actions, num_steps,
                            num_inner, lr, er_alpha, clip_cov_rho,
                            clip_cov_band, kl_cov_frac, kl_cov_beta, tau,
                            power, tol):
  """T4: constant ER keeps a gap; annealed ER / Clip-Cov / KL-Cov do not.

  Also measures the per-step bias ‖b_t‖ and the token mass it touches:
  dense for ER, at most ρ (Clip-Cov) or k (KL-Cov) for covariance control.
  """
  reward_nv = jax.random.uniform(key, (num_seeds, num_actions))
  loop = dict(num_steps=num_steps, num_inner=num_inner)
  sched = dict(tau=tau, lr=lr)
  const, annealed = dict(power=0.0, **sched), dict(power=power, **sched)
  band = dict(band_lo=clip_cov_band[0], band_hi=clip_cov_band[1])
  out = {}
  # PG is ER with α = 0; constant and annealed runs share one batch.
  _, m = sweep("er", reward_nv, [dict(coef0=0.0, **const),
                                 dict(coef0=er_alpha, **const),
                                 dict(coef0=er_alpha, **annealed)], **loop)
  out["PG"], out["ER const"], out["ER annealed"] = _split(m, 3)
  _, m = sweep("clip_cov", reward_nv,
               [dict(coef0=clip_cov_rho, **const, **band),
                dict(coef0=clip_cov_rho, **annealed, **band)], **loop)
  out["Clip-Cov const"], out["Clip-Cov annealed"] = _split(m, 2)
  kl = dict(coef0=kl_cov_beta, kl_frac=kl_cov_frac)
  _, m = sweep("kl_cov", reward_nv, [dict(**kl, **const),
                                     dict(**kl, **annealed)], **loop)
  out["KL-Cov const"], out["KL-Cov annealed"] = _split(m, 2)

  final = {name: m["gap"][:, -1] for name, m in out.items()}
  closed = jax.device_get(jax.vmap(
      lambda r: jnp.max(r) - bandit.expected_reward(
          bandit.soft_optimal_logits(r, er_alpha), r))(reward_nv))
  er_err = np.max(np.abs(final["ER const"] - closed))

  def reach_row(name, coef_name):
    gap = final[name].max()
    return report.Row(
        "T4", f"{name} ({coef_name}_t = {coef_name}₀(1+t/τ)^−{power:g}) "
        "reaches the optimum",
        f"max final gap {fmt(gap)} (PG: {fmt(final['PG'].max())})",
        f"→ 0 (≤ {tol:g})", bool(gap <= tol))

  bias = {k: np.mean(out[k]["bias_norm"]) for k in
          ("ER const", "Clip-Cov const", "KL-Cov const")}
  touched = {k: np.mean(out[k]["touched"]) for k in bias}
  ratio_cc = np.max(out["Clip-Cov const"]["bias_ratio"])
  ratio_kl = np.max(out["KL-Cov const"]["bias_ratio"])
  rows = [
      report.Row(
          "T4", f"constant-α ER keeps a gap (α={er_alpha:g}, "
          f"{num_steps} steps)",
          f"final gap mean {fmt(final['ER const'].mean())}, max |gap − "
          f"closed form| {fmt(er_err)}",
          f"r_max − E_softmax(r/α) r = {fmt(closed.mean())} (mean) > 0",
          bool(er_err <= tol and closed.min() > tol)),
      reach_row("ER annealed", "α"),
      reach_row("Clip-Cov annealed", "ρ"),
      reach_row("KL-Cov annealed", "β"),
      report.Row(
          "T4", "constant-ρ Clip-Cov in a pure bandit: bias only slows PG "
          "(no interior fixed point)",
          f"max final gap {fmt(final['Clip-Cov const'].max())}",
          f"→ 0 (≤ {tol:g})", bool(final["Clip-Cov const"].max() <= tol)),
      report.Row(
          "T4", f"constant-β KL-Cov with {num_inner} inner steps stalls "
          "(L1 dead zone), unlike annealed",
          f"max final gap {fmt(final['KL-Cov const'].max())}",
          f"> {tol:g} (not in §1.6's 1-step idealisation)",
          bool(final["KL-Cov const"].max() > tol)),
      report.Row(
          "T4", "bias is sparse for covariance control, dense for ER "
          "(touched token mass)",
          f"ER {touched['ER const']:.3f}; Clip-Cov "
          f"{touched['Clip-Cov const']:.3f}; KL-Cov "
          f"{touched['KL-Cov const']:.3f}",
          f"ER 1; Clip-Cov ≤ ρ={clip_cov_rho:g}; KL-Cov ≤ k={kl_cov_frac:g}",
          bool(touched["ER const"] > 0.999
               and touched["Clip-Cov const"] <= clip_cov_rho + 1e-12
               and touched["KL-Cov const"] <= kl_cov_frac + 1e-12)),
      report.Row(
          "T4", "‖b_t‖ ≤ ρG (Clip-Cov), ≤ kβG' (KL-Cov); mean ‖b_t‖ vs "
          "dense ER",
          f"max ‖b‖/bound {ratio_cc:.3f} / {ratio_kl:.3f}; mean ‖b‖ ER "
          f"{fmt(bias['ER const'])}, Clip-Cov {fmt(bias['Clip-Cov const'])},"
          f" KL-Cov {fmt(bias['KL-Cov const'])}",
          "ratios ≤ 1", bool(ratio_cc <= 1 + 1e-9 and ratio_kl <= 1 + 1e-9)),
  ]
  curves = dict(
      gap={k: np.mean(m["gap"], axis=0) for k, m in out.items()},
      bias={k: np.mean(m["bias_norm"], axis=0) for k, m in out.items()})
  return rows, curves


def band_margin(logits_v, reward_v):
  """`min_a c_a / max_a c_a`: how far the scores sit above the edge c = 0."""
  cov_v = bandit.cov_scores(logits_v, bandit.advantage(logits_v, reward_v))
  return jnp.min(cov_v) / jnp.max(cov_v)


def clip_cov_fixed_point(reward_v, anchor, rho):
  """Closed-form constant-ρ Clip-Cov fixed point on `J_λ`, and its margin.

  With every positive-score token eligible, Clip-Cov drops a fraction ρ of
  every token's PG term; the anchored fixed point `(1−ρ)A = λ(log π + H)` is
  `softmax((1−ρ)r/λ)`. Its scores `c = λ(log π + H)²/(1−ρ) ≥ 0` keep every
  token eligible, so the solution is self-consistent, unless an action sits
  at `log π_a ≈ −H` (score ≈ 0, the band edge), where the discontinuous
  selection can capture the iteration instead.

  Returns:
    (TV between softmax((1−ρ)r/λ) and softmax(r/λ) [], band margin
    `min_a c_a / max_a c_a` at the closed-form fixed point []).
  """
  logits_v = (1.0 - rho) * reward_v / anchor
  tv = _tv(jax.nn.softmax(logits_v), jax.nn.softmax(reward_v / anchor))
  return tv, band_margin(logits_v, reward_v)


def t5_fixed_point_shift(key, *, num_seeds, num_actions, num_steps, lr,
                         anchor, rhos, tau, power, kl_cov_frac, kl_cov_beta,
                         kl_inner, tol, edge_margin=1e-6):
  """T5: Clip-Cov's fixed point moves by O(ρ) for constant ρ, not annealed.

  The pure bandit optimum is a vertex (logits → ∞), so no method has a
  finite fixed point there. T5 therefore anchors the target objective with
  a fixed entropy weight λ (`J_λ = E_π r + λH`, optimum softmax(r/λ)) and
  applies the covariance control to the PG part only, as verl does.
  """
  reward_nv = jax.random.uniform(key, (num_seeds, num_actions))
  rho_p = jnp.asarray(rhos)
  target_nv = jax.nn.softmax(reward_nv / anchor)
  base = dict(tau=tau, lr=lr, anchor=anchor)
  num_rho = len(rhos)
  # Constant ρ, annealed ρ and plain anchored PG (ρ = 0) in one batch.
  settings = ([dict(coef0=r, power=0.0, **base) for r in rhos]
              + [dict(coef0=r, power=power, **base) for r in rhos]
              + [dict(coef0=0.0, power=0.0, **base)])
  logits, metrics = sweep("clip_cov", reward_nv, settings,
                          num_steps=num_steps, num_inner=1)
  shift = np.asarray(_tv(jax.nn.softmax(logits), target_nv[None]))  # [S, N]
  end_margin = np.asarray(jax.jit(jax.vmap(jax.vmap(band_margin)))(
      logits[:num_rho], jnp.broadcast_to(reward_nv, logits[:num_rho].shape)))
  shift_const, shift_anneal = shift[:num_rho], shift[num_rho:2 * num_rho]
  pol = metrics["policy"]
  pol_const, pol_anneal, pol_pg = pol[:num_rho], pol[num_rho:-1], pol[-1]
  floor = np.max(shift[-1])
  closed_fn = jax.jit(jax.vmap(jax.vmap(
      clip_cov_fixed_point, (0, None, None)), (None, None, 0)))
  closed = np.asarray(closed_fn(reward_nv, anchor, rho_p)[0])  # [P, N]
  rho_end = rho_p * (1 + (num_steps - 1) / tau) ** (-power)
  closed_end = np.asarray(closed_fn(reward_nv, anchor, rho_end)[0])

  kl = dict(coef0=kl_cov_beta, kl_frac=kl_cov_frac, **base)
  logits, _ = sweep("kl_cov", reward_nv, [dict(power=0.0, **kl)],
                    num_steps=num_steps, num_inner=1)
  kl_one = np.max(_tv(jax.nn.softmax(logits[0]), target_nv))
  logits, metrics = sweep(
      "kl_cov", reward_nv, [dict(power=0.0, **kl), dict(power=power, **kl)],
      num_steps=num_steps, num_inner=kl_inner)
  kl_const, kl_anneal = np.max(_tv(jax.nn.softmax(logits), target_nv[None]),
                               axis=1)
  pol_kl_const, pol_kl_anneal = metrics["policy"]

  mean_shift, mean_closed = shift_const.mean(1), closed.mean(1)
  slope = np.polyfit(np.log(np.asarray(rhos)), np.log(mean_shift), 1)[0]
  # Runs that end with an action on the band edge c = 0 are reported apart:
  # the discontinuous selection pins them there (a sliding mode), which
  # happens when the closed-form point has an action with log π_a ≈ −H.
  inside = end_margin > edge_margin
  cf_err = np.abs(shift_const - closed)
  err_in = np.max(cf_err[inside], initial=0.0)
  err_edge = np.max(cf_err[~inside], initial=0.0)
  i = len(rhos) - 1
  rows = [
      report.Row(
          "T5", f"constant-ρ Clip-Cov fixed point = softmax((1−ρ)r/λ) "
          f"(λ={anchor:g}, band c > 0)",
          f"TV shift at ρ={rhos[i]:g}: {fmt(mean_shift[i])}; max |measured "
          f"− closed| {fmt(err_in)} on {inside.sum()}/{inside.size} runs "
          f"(ρ × seeds); {fmt(err_edge)} on {(~inside).sum()} that end on "
          f"the band edge (min c/max c ≤ {edge_margin:g})",
          f"{fmt(mean_closed[i])}",
          bool(err_in <= tol and inside.mean() >= 0.5)),
      report.Row(
          "T5", "the shift is O(ρ)",
          f"log-log slope {slope:.3f} over ρ ∈ {tuple(rhos)}", "1",
          bool(abs(slope - 1) < 0.1)),
      report.Row(
          "T5", f"annealed ρ_t = ρ₀(1+t/τ)^−{power:g} removes the shift",
          f"TV at ρ₀={rhos[i]:g}: {fmt(np.max(shift_anneal[i]))} (const "
          f"{fmt(np.min(shift_const[i]))}; PG floor {fmt(floor)}); "
          f"quasi-static TV at ρ_T={fmt(rho_end[i])}: "
          f"{fmt(closed_end[i].mean())}",
          f"annealed ≤ {tol:g} < const",
          bool(np.max(shift_anneal) <= tol
               and np.min(shift_const[i]) > tol)),
      report.Row(
          "T5", "KL-Cov, 1 step per rollout: no fixed-point shift (§1.6)",
          f"max TV {fmt(kl_one)} (β={kl_cov_beta:g}, k={kl_cov_frac:g})",
          f"0 (≤ {tol:g})", bool(kl_one <= tol)),
      report.Row(
          "T5", f"KL-Cov, {kl_inner} inner steps: constant β stalls off "
          "π*, annealed β does not",
          f"max TV const {fmt(kl_const)}, annealed {fmt(kl_anneal)}",
          f"const > {tol:g}; annealed ≤ {tol:g}",
          bool(kl_const > tol and kl_anneal <= tol)),
  ]

  def traj(pol_ntv):
    return np.mean(np.asarray(_tv(pol_ntv, target_nv[:, None])), axis=0)

  curves = dict(
      rho=np.asarray(rhos), shift_measured=mean_shift,
      shift_closed=mean_closed,
      trajectory={
          f"Clip-Cov const ρ={rhos[i]:g}": traj(pol_const[i]),
          f"Clip-Cov annealed ρ₀={rhos[i]:g}": traj(pol_anneal[i]),
          "PG (anchored)": traj(pol_pg),
          f"KL-Cov const β={kl_cov_beta:g}, K={kl_inner}": traj(pol_kl_const),
          f"KL-Cov annealed, K={kl_inner}": traj(pol_kl_anneal),
      })
  return rows, curves
