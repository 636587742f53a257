"""uctrl_jax/objectives.py against float64 NumPy references written from the definitions.

The references transcribe EMP-SSL's total-coding-rate objective and SimCLR's NT-Xent
with loops and `slogdet`, never the library's closed forms.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from uctrl_jax import objectives
from uctrl_jax import rate_reduction as rr


def _unit(a):
  return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _views(seed, V, n, d, spread=0.7):
  """(V, n, d) unit features: V noisy copies of n random unit directions."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(1, n, d))
  return _unit(base + spread * rng.normal(size=(V, n, d))).astype(np.float32)


def np_rate(Z, eps_sq):
  Z = np.asarray(Z, np.float64)
  n, d = Z.shape
  return 0.5 * np.linalg.slogdet(np.eye(d) + d / (n * eps_sq) * Z.T @ Z)[1]


def np_tcr(Z_views, eps_sq, lam):
  """EMP-SSL: mean_v R(Z_v) − λ · mean_v mean_i (1 − cos(z_vi, mean_v z_vi))."""
  Z_views = np.asarray(Z_views, np.float64)
  V, n, _ = Z_views.shape
  R = np.mean([np_rate(Z_views[v], eps_sq) for v in range(V)])
  inv = 0.0
  for i in range(n):
    mean = Z_views[:, i].mean(axis=0)
    for v in range(V):
      u = Z_views[v, i]
      inv += 1 - u @ mean / (np.linalg.norm(u) * np.linalg.norm(mean))
  inv /= V * n
  return R, inv, R - lam * inv


def np_nt_xent(Z_views, T):
  """Anchor by anchor: −log softmax of each positive over all other features."""
  Z_views = np.asarray(Z_views, np.float64)
  V, n, _ = Z_views.shape
  feats = [(_unit(Z_views[v, i]), i) for v in range(V) for i in range(n)]
  total, count = 0.0, 0
  for a, (za, ia) in enumerate(feats):
    others = [(k, zk @ za / T) for k, (zk, _) in enumerate(feats) if k != a]
    log_norm = np.log(sum(np.exp(s) for _, s in others))
    positives = [s for k, s in others if feats[k][1] == ia]
    assert len(positives) == V - 1
    total += -np.mean([s - log_norm for s in positives])
    count += 1
  return total / count


@pytest.mark.parametrize("V,n,d", [(2, 12, 8), (4, 20, 32), (8, 40, 16)])
def test_tcr_objective_matches_slogdet_reference(V, n, d):
  Z_views = _views(V + n, V, n, d)
  got = objectives.tcr_objective(jnp.asarray(Z_views), 0.5, 30.0)
  R, inv, obj = np_tcr(Z_views, 0.5, 30.0)
  np.testing.assert_allclose(got["R"], R, rtol=1e-4)
  np.testing.assert_allclose(got["aug"], inv, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got["encoder_objective"], obj, rtol=1e-4, atol=1e-4)


def test_tcr_invariance_is_zero_for_identical_views_and_scale_free():
  Z = _views(0, 1, 16, 8)[0]
  same = np.stack([Z, 3.0 * Z, 0.5 * Z])  # one direction per sample, any norms
  assert float(objectives.views_mean_invariance(jnp.asarray(same)).max()) < 1e-6
  # Antipodal views average to nothing: the cosine to a zero target is 0, term 1.
  opposite = np.stack([Z, -Z])
  np.testing.assert_allclose(
    objectives.views_mean_invariance(jnp.asarray(opposite)), 1.0, atol=1e-6
  )


@pytest.mark.parametrize("V,n,T", [(2, 10, 0.2), (3, 7, 0.5), (2, 33, 0.07)])
def test_nt_xent_matches_anchor_by_anchor_reference(V, n, T):
  Z_views = _views(n, V, n, 16)
  np.testing.assert_allclose(
    objectives.nt_xent(jnp.asarray(Z_views), T), np_nt_xent(Z_views, T), rtol=2e-5, atol=2e-5
  )


def test_nt_xent_two_views_equals_simclr_cross_entropy():
  # SimCLR's form: row a of the 2n × 2n logits without its diagonal, cross-entropy
  # against the index of its one positive (i ± n).
  Z_views = _views(5, 2, 9, 8)
  T, n = 0.2, 9
  Z = _unit(np.concatenate(Z_views).astype(np.float64))
  logits = Z @ Z.T / T
  np.fill_diagonal(logits, -np.inf)
  positive = np.concatenate([np.arange(n) + n, np.arange(n)])
  log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  expected = -np.mean(log_softmax[np.arange(2 * n), positive])
  np.testing.assert_allclose(objectives.nt_xent(jnp.asarray(Z_views), T), expected, rtol=2e-5)


def test_nt_xent_prefers_aligned_views_and_is_permutation_invariant():
  aligned = _views(1, 2, 16, 8, spread=0.05)
  shuffled = aligned.copy()
  shuffled[1] = shuffled[1][np.random.default_rng(0).permutation(16)]
  assert float(objectives.nt_xent(aligned, 0.2)) < float(objectives.nt_xent(shuffled, 0.2))
  perm = np.random.default_rng(1).permutation(16)
  np.testing.assert_allclose(
    objectives.nt_xent(aligned[:, perm], 0.2), objectives.nt_xent(aligned, 0.2), rtol=1e-5
  )


def np_cos_dist(u, v):
  return 1 - u @ v / (np.linalg.norm(u) * np.linalg.norm(v))


@pytest.mark.parametrize("sample_distance", ["cosine", "exact"])
def test_uctrl_mean_target_compares_image_and_views_with_the_views_mean(sample_distance):
  V, n, d = 3, 10, 16
  Z_all = _views(7, V + 1, n, d)
  Z, Z_aug = Z_all[0], Z_all[1:]
  Zhat = _views(8, 1, n, d)[0]

  def objective(aug_target):
    return rr.uctrl_objective(
      Z,
      Zhat,
      Z_aug,
      0.5,
      2.0,
      1.0,
      sample_distance=sample_distance,
      sample_reduction="mean",
      aug_target=aug_target,
    )

  got = objective("mean")
  # Reference: per sample, z̄ the unit mean of the views; the image weighs as much as
  # all views together: ½ dist(z, z̄) + ½ mean_v dist(z_v, z̄).
  Z64 = Z_all.astype(np.float64)
  if sample_distance == "exact":

    def dist(u, v):  # ΔR({u}, {v}) as a 2-row set distance, d × d slogdets
      return np_rate(np.stack([u, v]), 0.5) - 0.5 * (np_rate(u[None], 0.5) + np_rate(v[None], 0.5))
  else:
    dist = np_cos_dist
  terms = []
  for i in range(n):
    target = _unit(Z64[1:, i].mean(axis=0))
    views = np.mean([dist(Z64[m, i], target) for m in range(1, V + 1)])
    terms.append(0.5 * dist(Z64[0, i], target) + 0.5 * views)
  np.testing.assert_allclose(got["aug"], np.mean(terms), rtol=2e-4, atol=2e-5)
  image = objective("image")
  for key in ("R", "delta_R_z_zhat", "self"):  # the target changes the augmentation term only
    np.testing.assert_allclose(got[key], image[key], rtol=1e-6)
  with pytest.raises(ValueError, match="aug_target must be one of"):
    objective("views")


def test_game_terms_without_views_leave_the_augmentation_term_out():
  config = tiny.get_config()
  Z_all = _views(3, 3, 16, 8)
  Z, Zhat, Z_aug = Z_all[0], Z_all[1], Z_all[2:]
  full = objectives.game_terms(config, Z, Zhat, Z_aug, jnp.zeros(16, jnp.int32))
  partial = objectives.game_terms(config, Z, Zhat, None, jnp.zeros(16, jnp.int32))
  assert "aug" not in partial and "aug_per_sample" not in partial
  lam1 = config.loss.lambda_aug
  for key in ("R", "delta_R_z_zhat", "self"):
    np.testing.assert_allclose(partial[key], full[key], rtol=1e-6)
  # The decoder's objective differs by the λ₁ term and (rate_on_views, the default) the
  # views' half of the expansion: both constant for η.
  assert config.loss.rate_on_views and "R_views" not in partial
  views_half = 0.5 * (full["R_views"] - full["R"])
  np.testing.assert_allclose(
    partial["decoder_objective"],
    full["decoder_objective"] - lam1 * full["aug"] - views_half,
    rtol=1e-5,
  )


@pytest.mark.parametrize("mode", ["tcr", "simclr"])
def test_encoder_only_terms_follow_the_config(mode):
  config = tiny.get_config()
  config.loss.mode = mode
  Z_views = jnp.asarray(_views(4, 2, 16, 8))
  terms = objectives.encoder_only_terms(config, Z_views)
  if mode == "tcr":
    R, _, expected = np_tcr(np.asarray(Z_views), config.loss.eps_sq, config.loss.lambda_aug)
  else:  # the rate is a diagnostic of the first view
    R = np_rate(Z_views[0], config.loss.eps_sq)
    expected = -np_nt_xent(np.asarray(Z_views), config.loss.temperature)
  np.testing.assert_allclose(terms["encoder_objective"], expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(terms["R"], R, rtol=1e-4)
  assert not objectives.uses_decoder(config)
  config.loss.mode = "uctrl"
  with pytest.raises(ValueError, match="not an encoder-only mode"):
    objectives.encoder_only_terms(config, Z_views)


def test_simclr_diagnostic_rate_carries_no_gradient():
  Z_views = jnp.asarray(_views(2, 2, 8, 8))
  grad_with = jax.grad(lambda Z: objectives.simclr_objective(Z, 0.2, 0.5)["encoder_objective"])
  grad_loss = jax.grad(lambda Z: -objectives.nt_xent(Z, 0.2))
  np.testing.assert_allclose(grad_with(Z_views), grad_loss(Z_views), rtol=1e-6, atol=1e-7)


def test_rate_on_views_expands_the_views_as_much_as_the_image():
  config = tiny.get_config()
  Z_all = _views(9, 4, 24, 8)
  Z, Zhat, Z_aug = Z_all[0], Z_all[1], Z_all[2:]
  labels = jnp.zeros(24, jnp.int32)
  config.loss.rate_on_views = False
  plain = objectives.game_terms(config, Z, Zhat, Z_aug, labels)
  config.loss.rate_on_views = True
  views = objectives.game_terms(config, Z, Zhat, Z_aug, labels)
  R_views = np.mean([np_rate(Zv, config.loss.eps_sq) for Zv in Z_aug])
  np.testing.assert_allclose(views["R_views"], R_views, rtol=1e-4)
  for key in ("encoder_objective", "decoder_objective"):
    np.testing.assert_allclose(views[key], plain[key] + 0.5 * (R_views - plain["R"]), rtol=1e-4)
  # Without the views (the decoder step with running statistics) nothing is added.
  no_views = objectives.game_terms(config, Z, Zhat, None, labels)
  assert "R_views" not in no_views
