"""rate_reduction against float64 NumPy `slogdet` references written from
docs/method.md#coding-rates and #the-game.

The references below never use the library's shortcuts (smaller Gram side, Cholesky,
closed-form pairwise term): they transcribe the definitions with d × d `slogdet`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from uctrl_jax import rate_reduction as rr

EPS_SQ = 0.5
# The objective as docs/method.md#the-game writes it: exact ΔR per sample, Σᵢ, views vs z.
PAPER = dict(sample_distance="exact", sample_reduction="sum", aug_target="image")


# ----------------------------------------------------------------------------
# Independent NumPy references (float64, definitions of docs/method.md#coding-rates).
# ----------------------------------------------------------------------------


def np_rate(Z, eps_sq=EPS_SQ, weights=None):
  """R = ½ logdet(I_d + d/(n ε²) Zᵀ W Z), n = Σ w (docs/method.md#coding-rates)."""
  Z = np.asarray(Z, np.float64)
  n, d = Z.shape
  w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  if w.sum() == 0:
    return 0.0
  G = Z.T @ (w[:, None] * Z)
  return 0.5 * np.linalg.slogdet(np.eye(d) + d / (w.sum() * eps_sq) * G)[1]


def np_rate_reduction(Z, membership, eps_sq=EPS_SQ):
  n = Z.shape[0]
  R_c = sum(
    membership[:, k].sum() / n * np_rate(Z, eps_sq, membership[:, k])
    for k in range(membership.shape[1])
  )
  return np_rate(Z, eps_sq) - R_c


def np_rate_distance(Z, Zhat, eps_sq=EPS_SQ):
  return np_rate(np.concatenate([Z, Zhat]), eps_sq) - 0.5 * (
    np_rate(Z, eps_sq) + np_rate(Zhat, eps_sq)
  )


def np_pairwise(U, V, eps_sq=EPS_SQ):
  """Brute force: one d × d log-det per pair, the definition of ΔR({u}, {v})."""
  return np.array([np_rate_distance(u[None], v[None], eps_sq) for u, v in zip(U, V)])


def np_cosine(U, V):
  U, V = np.asarray(U, np.float64), np.asarray(V, np.float64)
  return 1 - np.sum(U * V, 1) / (np.linalg.norm(U, axis=1) * np.linalg.norm(V, axis=1))


def np_one_hot(labels, k):
  return np.eye(k)[labels]


def sphere(rng, n, d):
  Z = rng.standard_normal((n, d))
  return (Z / np.linalg.norm(Z, axis=1, keepdims=True)).astype(np.float32)


def assert_close(actual, expected, rtol=2e-4, atol=2e-4):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# Both sides of n = d: the library factors I_n + αZZᵀ when n < d, else I_d + αZᵀZ.
SHAPES = [(1, 8), (5, 16), (16, 16), (40, 16), (200, 32), (30, 64)]


# ----------------------------------------------------------------------------
# Values against the references.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", SHAPES)
def test_coding_rate_matches_slogdet(n, d):
  Z = np.random.default_rng(n * d).standard_normal((n, d)).astype(np.float32)
  assert_close(rr.coding_rate(Z, EPS_SQ), np_rate(Z))
  assert_close(rr.coding_rate(Z, 0.1), np_rate(Z, 0.1))


@pytest.mark.parametrize("n,d", SHAPES[1:])
def test_rate_reduction_labels_match_slogdet(n, d):
  rng = np.random.default_rng(n + d)
  Z = sphere(rng, n, d)
  labels = rng.integers(0, 3, n)  # with 5 classes, classes 3 and 4 are empty
  expected = np_rate_reduction(Z, np_one_hot(labels, 5))
  assert_close(rr.rate_reduction(Z, labels, 5, EPS_SQ), expected)
  assert_close(
    rr.rate_reduction(Z, eps_sq=EPS_SQ, membership=np_one_hot(labels, 5).astype(np.float32)),
    expected,
  )


@pytest.mark.parametrize("n,d", [(12, 32), (100, 16)])
def test_rate_reduction_soft_membership_matches_weighted_slogdet(n, d):
  rng = np.random.default_rng(7)
  Z = sphere(rng, n, d)
  logits = rng.standard_normal((n, 4))
  Pi = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
  assert_close(rr.rate_reduction(Z, eps_sq=EPS_SQ, membership=Pi), np_rate_reduction(Z, Pi))


@pytest.mark.parametrize("n,m,d", [(3, 4, 16), (20, 7, 16), (64, 64, 32), (300, 100, 16)])
def test_rate_distance_matches_slogdet(n, m, d):
  rng = np.random.default_rng(n * m)
  Z, Zhat = sphere(rng, n, d), sphere(rng, m, d)
  assert_close(rr.rate_distance(Z, Zhat, EPS_SQ), np_rate_distance(Z, Zhat))


@pytest.mark.parametrize("d", [2, 16, 128])
def test_pairwise_rate_distance_matches_per_pair_logdet(d):
  rng = np.random.default_rng(d)
  U = sphere(rng, 50, d)
  # A spread of cosines, from near-orthogonal to nearly equal, plus unnormalised rows.
  V = sphere(rng, 50, d) * np.linspace(0, 1, 50)[:, None] + U * np.linspace(1, 0, 50)[:, None]
  V[::7] *= 3.0
  expected = np_pairwise(U, V)
  got = rr.pairwise_rate_distance(U, V, EPS_SQ)
  assert got.shape == (50,)
  assert_close(got, expected, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(got) >= -1e-6)


def test_pairwise_zero_iff_equal_or_opposite_for_unit_vectors():
  rng = np.random.default_rng(1)
  U = sphere(rng, 20, 128)
  np.testing.assert_allclose(rr.pairwise_rate_distance(U, U, EPS_SQ), 0, atol=1e-5)
  np.testing.assert_allclose(rr.pairwise_rate_distance(U, -U, EPS_SQ), 0, atol=1e-5)
  assert np.all(np.asarray(rr.pairwise_rate_distance(U, sphere(rng, 20, 128), EPS_SQ)) > 0.1)


def test_l2_normalize_zero_row_has_finite_gradient():
  z = jnp.array([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]])
  out = rr.l2_normalize(z)
  np.testing.assert_allclose(out, [[0, 0, 0], [0.6, 0, 0.8]], atol=1e-7)
  g = jax.grad(lambda z: jnp.sum(rr.l2_normalize(z) * jnp.arange(3.0)))(z)
  assert np.all(np.isfinite(g))
  assert rr.l2_normalize(z.astype(jnp.bfloat16)).dtype == jnp.float32


def test_views_mean_target_is_the_unit_mean_of_the_views():
  rng = np.random.default_rng(0)
  Z_views = rng.normal(size=(3, 5, 4))
  mean = Z_views.mean(axis=0)
  expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
  got = rr.views_mean_target(jnp.asarray(Z_views, jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_cosine_distance_matches_numpy():
  rng = np.random.default_rng(2)
  U, V = rng.standard_normal((2, 30, 16)).astype(np.float32)
  assert_close(rr.cosine_distance(U, V), np_cosine(U, V), atol=1e-5)


def _np_objective(Z, Zhat, Z_aug, lam_aug, lam_self, dist, reduction):
  n = Z.shape[0]
  views = Z_aug if Z_aug.ndim == 3 else Z_aug[None]
  aug = np.mean([dist(Z, Zv) for Zv in views], axis=0).sum()
  self_ = dist(Z, Zhat).sum()
  if reduction == "mean":
    aug, self_ = aug / n, self_ / n
  R, delta = np_rate(Z), np_rate_distance(Z, Zhat)
  return {
    "R": R,
    "delta_R_z_zhat": delta,
    "aug": aug,
    "self": self_,
    "encoder_objective": R + delta - lam_aug * aug - lam_self * self_,
    "decoder_objective": R + delta + lam_aug * aug + lam_self * self_,
  }


@pytest.mark.parametrize(
  "sample_distance,num_views,reduction",
  [("exact", 1, "sum"), ("exact", 3, "mean"), ("cosine", 2, "sum")],
)
@pytest.mark.parametrize("n,d", [(10, 32), (96, 16)])
def test_uctrl_objective_terms_and_signs(sample_distance, num_views, reduction, n, d):
  rng = np.random.default_rng(n)
  Z = sphere(rng, n, d)
  Zhat = sphere(rng, n, d) + Z
  Z_aug = np.stack([sphere(rng, n, d) + 2 * Z for _ in range(num_views)])
  if num_views == 1:
    Z_aug = Z_aug[0]
  lam_aug, lam_self = 3.0, 0.7
  got = rr.uctrl_objective(
    Z,
    Zhat,
    Z_aug,
    EPS_SQ,
    lam_aug,
    lam_self,
    **dict(PAPER, sample_distance=sample_distance, sample_reduction=reduction),
  )
  dist = np_pairwise if sample_distance == "exact" else np_cosine
  expected = _np_objective(Z, Zhat, Z_aug, lam_aug, lam_self, dist, reduction)
  for key, value in expected.items():
    assert_close(got[key], value, rtol=3e-4, atol=3e-4)
  assert_close(got["aug_per_sample"] * n, expected["aug"] * (n if reduction == "mean" else 1))
  assert_close(got["self_per_sample"] * n, expected["self"] * (n if reduction == "mean" else 1))


def test_ctrl_multi_objective_matches_slogdet():
  rng = np.random.default_rng(3)
  Z, Zhat = sphere(rng, 60, 16), sphere(rng, 60, 16)
  labels = rng.integers(0, 4, 60)
  Pi = np_one_hot(labels, 4)
  expected_class = sum(np_rate_distance(Z[labels == k], Zhat[labels == k]) for k in range(4))
  got = rr.ctrl_multi_objective(Z, Zhat, labels, 4, EPS_SQ)
  assert_close(got["delta_R_z"], np_rate_reduction(Z, Pi))
  assert_close(got["delta_R_zhat"], np_rate_reduction(Zhat, Pi))
  assert_close(got["class_distance"], expected_class)
  assert_close(
    got["objective"], np_rate_reduction(Z, Pi) + np_rate_reduction(Zhat, Pi) + expected_class
  )


# ----------------------------------------------------------------------------
# Gradients: JAX (float32) against float64 central differences of the references.
# ----------------------------------------------------------------------------


def _directional_fd(f_np, args, index, direction, h=1e-5):
  plus = list(args)
  minus = list(args)
  plus[index] = args[index] + h * direction
  minus[index] = args[index] - h * direction
  return (f_np(*plus) - f_np(*minus)) / (2 * h)


GRAD_CASES = {
  "coding_rate": (lambda Z: rr.coding_rate(Z, EPS_SQ), np_rate, 1),
  "rate_reduction": (
    lambda Z: rr.rate_reduction(Z, np.arange(Z.shape[0]) % 3, 3, EPS_SQ),
    lambda Z: np_rate_reduction(Z, np_one_hot(np.arange(Z.shape[0]) % 3, 3)),
    1,
  ),
  "rate_distance": (lambda Z, Zh: rr.rate_distance(Z, Zh, EPS_SQ), np_rate_distance, 2),
  "pairwise_sum": (
    lambda U, V: jnp.sum(rr.pairwise_rate_distance(U, V, EPS_SQ)),
    lambda U, V: np_pairwise(U, V).sum(),
    2,
  ),
}


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
@pytest.mark.parametrize("n,d", [(6, 16), (40, 8)])
def test_gradients_match_finite_differences(name, n, d):
  f_jax, f_np, nargs = GRAD_CASES[name]
  rng = np.random.default_rng(11)
  args = [sphere(rng, n, d) for _ in range(nargs)]
  if nargs == 2:
    args[1] = (args[1] + args[0]).astype(np.float32)
  grads = jax.grad(f_jax, argnums=tuple(range(nargs)))(*args)
  args64 = [a.astype(np.float64) for a in args]
  for i in range(nargs):
    direction = rng.standard_normal(args[i].shape)
    fd = _directional_fd(f_np, args64, i, direction)
    analytic = float(np.sum(np.asarray(grads[i], np.float64) * direction))
    np.testing.assert_allclose(analytic, fd, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("n,d", [(12, 32), (60, 8)])
def test_soft_membership_gradient_matches_finite_differences(n, d):
  # Clustering (docs/method.md#evaluation-protocols) differentiates ΔR(Z|Π) with respect to Π, zeros
  # included.
  rng = np.random.default_rng(4)
  Z = sphere(rng, n, d)
  Pi = rng.uniform(size=(n, 3))
  Pi[::4, 1] = 0.0
  Pi = (Pi / Pi.sum(1, keepdims=True)).astype(np.float32)
  grad = jax.grad(lambda P: rr.rate_reduction(Z, eps_sq=EPS_SQ, membership=P))(Pi)
  assert np.all(np.isfinite(grad))
  direction = rng.standard_normal(Pi.shape)
  fd = _directional_fd(lambda P: np_rate_reduction(Z, P), [Pi.astype(np.float64)], 0, direction)
  np.testing.assert_allclose(
    float(np.sum(np.asarray(grad, np.float64) * direction)), fd, rtol=2e-3, atol=2e-4
  )


def test_pairwise_gradient_in_cosine_matches_closed_form():
  # For unit u, v: ΔR = ½ log((1+a)² − a²c²) − ½ log(1+2a), so ∂ΔR/∂c = −a²c / ((1+a)² − a²c²).
  d = 128
  a = d / (2 * EPS_SQ)
  e1, e2 = np.eye(d, dtype=np.float32)[:2]
  for c in (0.2, 0.9, 0.99):

    def f(t):
      v = jnp.cos(t) * e1 + jnp.sin(t) * e2
      return rr.pairwise_rate_distance(e1[None], v[None], EPS_SQ)[0]

    t = np.arccos(c)
    dfdt = jax.grad(f)(jnp.float32(t))
    dfdc = dfdt / -np.sin(t)  # c = cos t
    np.testing.assert_allclose(dfdc, -a * a * c / ((1 + a) ** 2 - a * a * c * c), rtol=2e-3)


# ----------------------------------------------------------------------------
# Invariances.
# ----------------------------------------------------------------------------


def test_invariant_to_row_permutation_and_feature_rotation():
  rng = np.random.default_rng(5)
  n, d = 48, 16
  Z, Zhat, Z_aug = sphere(rng, n, d), sphere(rng, n, d), sphere(rng, n, d)
  labels = rng.integers(0, 4, n)
  perm = rng.permutation(n)
  Q = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)

  def all_terms(Z, Zhat, Z_aug, labels):
    obj = rr.uctrl_objective(Z, Zhat, Z_aug, EPS_SQ, 1.0, 1.0, **PAPER)
    return np.array(
      [
        obj["encoder_objective"],
        obj["decoder_objective"],
        obj["R"],
        obj["delta_R_z_zhat"],
        obj["aug"],
        obj["self"],
        rr.rate_reduction(Z, labels, 4, EPS_SQ),
      ]
    )

  base = all_terms(Z, Zhat, Z_aug, labels)
  np.testing.assert_allclose(
    all_terms(Z[perm], Zhat[perm], Z_aug[perm], labels[perm]), base, rtol=1e-4
  )
  np.testing.assert_allclose(
    all_terms(Z @ Q, Zhat @ Q, Z_aug @ Q, labels), base, rtol=1e-4, atol=1e-4
  )


def test_rate_distance_of_a_set_with_itself_is_zero():
  Z = sphere(np.random.default_rng(6), 100, 16)
  np.testing.assert_allclose(rr.rate_distance(Z, Z, EPS_SQ), 0, atol=2e-5)


# ----------------------------------------------------------------------------
# Numerics: degenerate inputs stay finite; low-precision inputs computed in float32.
# ----------------------------------------------------------------------------


DEGENERATE = {
  "collapsed": np.tile(sphere(np.random.default_rng(0), 1, 16), (32, 1)),
  "zero_rows": np.concatenate(
    [np.zeros((8, 16), np.float32), sphere(np.random.default_rng(1), 8, 16)]
  ),
  "all_zero": np.zeros((32, 16), np.float32),
  "single_row": sphere(np.random.default_rng(2), 1, 16),
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_features_have_finite_values_and_gradients(case):
  Z = DEGENERATE[case]
  n = Z.shape[0]
  labels = np.arange(n) % 2

  def total(Z):
    obj = rr.uctrl_objective(Z, Z[::-1], Z, EPS_SQ, 1.0, 1.0, **PAPER)
    cos = rr.uctrl_objective(
      Z, Z[::-1], Z, EPS_SQ, 1.0, 1.0, **dict(PAPER, sample_distance="cosine")
    )
    return (
      obj["encoder_objective"]
      + cos["encoder_objective"]
      + rr.rate_reduction(Z, labels, 2, EPS_SQ)
      + rr.ctrl_multi_objective(Z, Z[::-1], labels, 2, EPS_SQ)["objective"]
    )

  value, grad = jax.value_and_grad(total)(Z)
  assert np.isfinite(value)
  assert np.all(np.isfinite(grad))
  assert_close(rr.coding_rate(Z, EPS_SQ), np_rate(Z))
  assert_close(rr.rate_reduction(Z, labels, 2, EPS_SQ), np_rate_reduction(Z, np_one_hot(labels, 2)))


def test_low_precision_inputs_are_computed_in_float32():
  Z = sphere(np.random.default_rng(9), 64, 32)
  Z16 = jnp.asarray(Z, jnp.bfloat16)
  got = rr.coding_rate(Z16, EPS_SQ)
  assert got.dtype == jnp.float32
  # Equal to the float64 reference of the bf16-rounded values, not a bf16-accurate answer.
  assert_close(got, np_rate(np.asarray(Z16, np.float64)), rtol=1e-5)
  obj = rr.uctrl_objective(Z16, Z16, Z16, EPS_SQ, 1.0, 1.0, **PAPER)
  assert all(v.dtype == jnp.float32 for v in obj.values())


# ----------------------------------------------------------------------------
# Sharding: 8 simulated devices (tests/conftest.py) give the single-device result.
# ----------------------------------------------------------------------------


def _mesh():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  return Mesh(np.array(jax.devices()[:8]), ("data",))


def _inputs(n=128, d=32, views=2):
  rng = np.random.default_rng(21)
  Z = sphere(rng, n, d)
  return dict(
    Z=Z,
    Zhat=sphere(rng, n, d) + Z,
    Z_aug=np.stack([sphere(rng, n, d) + Z] * views),
    labels=rng.integers(0, 5, n).astype(np.int32),
  )


def _all_terms(Z, Zhat, Z_aug, labels, axis_name=None):
  exact = rr.uctrl_objective(Z, Zhat, Z_aug, EPS_SQ, 2.0, 0.5, axis_name=axis_name, **PAPER)
  cosine = rr.uctrl_objective(
    Z,
    Zhat,
    Z_aug,
    EPS_SQ,
    2.0,
    0.5,
    axis_name=axis_name,
    **dict(PAPER, sample_distance="cosine", sample_reduction="mean"),
  )
  multi = rr.ctrl_multi_objective(Z, Zhat, labels, 5, EPS_SQ, axis_name=axis_name)
  return {
    **{f"exact/{k}": v for k, v in exact.items()},
    **{f"cosine/{k}": v for k, v in cosine.items()},
    **{f"multi/{k}": v for k, v in multi.items()},
    "coding_rate": rr.coding_rate(Z, EPS_SQ, axis_name=axis_name),
    "rate_reduction": rr.rate_reduction(Z, labels, 5, EPS_SQ, axis_name=axis_name),
    "rate_distance": rr.rate_distance(Z, Zhat, EPS_SQ, axis_name=axis_name),
  }


def _assert_terms_equal(got, expected):
  assert got.keys() == expected.keys()
  for key in expected:
    np.testing.assert_allclose(
      np.asarray(got[key]), np.asarray(expected[key]), rtol=2e-5, atol=2e-5, err_msg=key
    )


def test_jit_over_globally_sharded_rows_equals_single_device():
  mesh = _mesh()
  x = _inputs()
  expected = jax.jit(_all_terms)(**x)
  rows = NamedSharding(mesh, P("data"))
  sharded = dict(
    Z=jax.device_put(x["Z"], rows),
    Zhat=jax.device_put(x["Zhat"], rows),
    Z_aug=jax.device_put(x["Z_aug"], NamedSharding(mesh, P(None, "data"))),
    labels=jax.device_put(x["labels"], rows),
  )
  assert len(sharded["Z"].sharding.device_set) == 8
  _assert_terms_equal(jax.jit(_all_terms)(**sharded), expected)


def test_shard_map_with_axis_name_equals_single_device():
  mesh = _mesh()
  x = _inputs()
  expected = _all_terms(**x)
  f = jax.shard_map(
    functools.partial(_all_terms, axis_name="data"),
    mesh=mesh,
    in_specs=(P("data"), P("data"), P(None, "data"), P("data")),
    out_specs=P(),
  )
  _assert_terms_equal(jax.jit(f)(x["Z"], x["Zhat"], x["Z_aug"], x["labels"]), expected)


def test_shard_map_gradients_equal_single_device():
  mesh = _mesh()
  x = _inputs()

  def encoder_objective(Z, Zhat, Z_aug, axis_name=None):
    return rr.uctrl_objective(Z, Zhat, Z_aug, EPS_SQ, 2.0, 0.5, axis_name=axis_name, **PAPER)[
      "encoder_objective"
    ]

  expected = jax.grad(encoder_objective, argnums=(0, 1, 2))(x["Z"], x["Zhat"], x["Z_aug"])
  sharded_grad = jax.shard_map(
    jax.grad(functools.partial(encoder_objective, axis_name="data"), argnums=(0, 1, 2)),
    mesh=mesh,
    in_specs=(P("data"), P("data"), P(None, "data")),
    out_specs=(P("data"), P("data"), P(None, "data")),
  )
  got = jax.jit(sharded_grad)(x["Z"], x["Zhat"], x["Z_aug"])
  for g, e in zip(got, expected):
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------
# Bad input: clear errors, raised before any computation.
# ----------------------------------------------------------------------------


Z16 = np.zeros((4, 16), np.float32)


@pytest.mark.parametrize(
  "call,message",
  [
    (lambda: rr.coding_rate(np.zeros(16, np.float32), EPS_SQ), r"shape \(n, d\)"),
    (lambda: rr.coding_rate(np.zeros((2, 3, 4), np.float32), EPS_SQ), r"shape \(n, d\)"),
    (lambda: rr.coding_rate(np.zeros((0, 4), np.float32), EPS_SQ), "n ≥ 1"),
    (lambda: rr.coding_rate(np.zeros((4, 4), np.int32), EPS_SQ), "floating-point"),
    (lambda: rr.coding_rate(Z16, 0.0), "eps_sq must be a finite number > 0"),
    (lambda: rr.coding_rate(Z16, -1.0), "eps_sq must be a finite number > 0"),
    (lambda: rr.coding_rate(Z16, float("nan")), "eps_sq must be a finite number > 0"),
    (lambda: rr.rate_distance(Z16, np.zeros((4, 8), np.float32), EPS_SQ), "same feature dimension"),
    (lambda: rr.pairwise_rate_distance(Z16, np.zeros((5, 16), np.float32), EPS_SQ), "same shape"),
    (lambda: rr.cosine_distance(Z16, np.zeros((4, 8), np.float32)), "same shape"),
    (
      lambda: rr.rate_reduction(Z16, np.array([0, 1, 2, 3]), 3, EPS_SQ),
      r"labels must lie in \[0, 3\)",
    ),
    (lambda: rr.rate_reduction(Z16, np.array([0, -1, 1, 1]), 3, EPS_SQ), r"labels must lie in"),
    (
      lambda: rr.rate_reduction(Z16, np.array([0, 1, 1]), 3, EPS_SQ),
      r"labels must have shape \(n,\)",
    ),
    (
      lambda: rr.rate_reduction(Z16, np.array([0.0, 1, 1, 0]), 3, EPS_SQ),
      "labels must be integers",
    ),
    (lambda: rr.rate_reduction(Z16, np.array([0, 1, 1, 0]), None, EPS_SQ), "num_classes"),
    (lambda: rr.rate_reduction(Z16, eps_sq=EPS_SQ), "exactly one of labels"),
    (
      lambda: rr.rate_reduction(Z16, eps_sq=EPS_SQ, membership=np.ones((3, 2), np.float32)),
      r"membership must have shape \(n, k\)",
    ),
    (
      lambda: rr.rate_reduction(Z16, eps_sq=EPS_SQ, membership=-np.ones((4, 2), np.float32)),
      "non-negative",
    ),
    (
      lambda: rr.uctrl_objective(Z16, Z16[:3], Z16, EPS_SQ, 1.0, 1.0, **PAPER),
      "Zhat must have the shape of Z",
    ),
    (
      lambda: rr.uctrl_objective(Z16, Z16, Z16[:, :8], EPS_SQ, 1.0, 1.0, **PAPER),
      "Z_aug must have shape",
    ),
    (
      lambda: rr.uctrl_objective(Z16, Z16, Z16, EPS_SQ, -1.0, 1.0, **PAPER),
      "lambda_aug must be ≥ 0",
    ),
    (
      lambda: rr.uctrl_objective(
        Z16, Z16, Z16, EPS_SQ, 1.0, 1.0, **dict(PAPER, sample_distance="l2")
      ),
      "sample_distance must be one of",
    ),
    (
      lambda: rr.uctrl_objective(
        Z16, Z16, Z16, EPS_SQ, 1.0, 1.0, **dict(PAPER, sample_reduction="max")
      ),
      "sample_reduction must be one of",
    ),
    (
      lambda: rr.ctrl_multi_objective(Z16, Z16, np.array([0, 1, 2, 5]), 3, EPS_SQ),
      "labels must lie in",
    ),
  ],
)
def test_bad_input_raises_clear_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_uctrl_objective_has_no_default_form():
  # configs/default.py is the one source of the trainer's choices: none is restated here.
  with pytest.raises(TypeError, match="sample_reduction' and 'aug_target"):
    rr.uctrl_objective(Z16, Z16, Z16, EPS_SQ, 1.0, 1.0, sample_distance="exact")


def test_shape_errors_also_raise_under_jit():
  with pytest.raises(ValueError, match="same feature dimension"):
    jax.jit(lambda a, b: rr.rate_distance(a, b, EPS_SQ))(Z16, np.zeros((4, 8), np.float32))
