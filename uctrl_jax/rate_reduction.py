"""Coding-rate terms of uCTRL and its CTRL relatives (docs/method.md#coding-rates, #the-game).

Pure, jit-able, differentiable functions. Features are rows: ``Z: (n, d)``.
Everything is computed in float32 whatever the input dtype (docs/method.md#coding-rates), and every
log-det is a Cholesky factorisation of ``I + c·Gram`` on the smaller side of the Gram
matrix (``I_n + α Z Zᵀ`` when ``n < d``, else ``I_d + α ZᵀZ``), which is SPD by
construction, so collapsed features, zero rows and ``n = 1`` give finite values and
gradients.

Sharding. Two ways to run on data sharded over devices, both exact:

* Under ``jax.jit`` with globally sharded arrays (``NamedSharding`` on the row axis):
  call the functions as they are; XLA reduces ``ZᵀZ`` and the sums over the global
  batch.
* Inside ``shard_map`` / ``pmap`` where each device sees its rows only: pass
  ``axis_name``. The per-device ``ZᵀZ``, row counts and sums are ``psum``'ed, never
  averaged per device, so the value equals the unsharded one
  (docs/method.md#closed-forms-the-code-uses). With ``axis_name`` the ``d × d`` side is always used,
  since only it is a sum over rows.

Public API (names used by the trainer, evaluators and users):
``coding_rate``, ``rate_reduction``, ``rate_distance``, ``pairwise_rate_distance``,
``cosine_distance``, ``uctrl_objective``, ``ctrl_multi_objective``; and the feature
helpers the models and objectives share: ``l2_normalize`` (unit rows, the encoder's last
operation) and ``views_mean_target`` (the views' unit mean).

Validation: ranks, shapes and static arguments raise ``ValueError`` at trace time.
``eps_sq`` and integer labels are value-checked whenever they are concrete (eager
calls, or Python/NumPy values passed into a jitted caller); under tracing, labels
outside ``[0, num_classes)`` are the caller's contract (they would get no class).
"""

from __future__ import annotations

import functools
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

SAMPLE_DISTANCES = ("exact", "cosine")
SAMPLE_REDUCTIONS = ("sum", "mean")
AUG_TARGETS = ("image", "mean")


# ----------------------------------------------------------------------------
# Validation helpers (trace-time, so they never cost a device op).
# ----------------------------------------------------------------------------


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_features(name: str, Z) -> Array:
  """Returns ``Z`` as float32 after checking it is a rank-2 array ``(n, d)``."""
  Z = jnp.asarray(Z)
  if Z.ndim != 2:
    raise ValueError(f"{name} must have shape (n, d) (features as rows); got shape {Z.shape}")
  if Z.shape[0] < 1 or Z.shape[1] < 1:
    raise ValueError(f"{name} must have n ≥ 1 rows and d ≥ 1 columns; got shape {Z.shape}")
  if not jnp.issubdtype(Z.dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating-point array; got dtype {Z.dtype}")
  return Z.astype(jnp.float32)


def _check_eps_sq(eps_sq) -> None:
  if eps_sq is None:
    raise ValueError("eps_sq is required (the distortion ε², e.g. 0.5)")
  if _is_concrete(eps_sq):
    value = np.asarray(eps_sq)
    if value.shape != ():
      raise ValueError(f"eps_sq must be a scalar; got shape {value.shape}")
    if not np.isfinite(value) or value <= 0:
      raise ValueError(f"eps_sq must be a finite number > 0; got {value}")


def _check_paired(name_a: str, A, name_b: str, B) -> tuple[Array, Array]:
  """Both as float32 ``(n, d)`` features, paired row by row (so of one shape)."""
  A, B = _check_features(name_a, A), _check_features(name_b, B)
  if A.shape != B.shape:
    raise ValueError(
      f"{name_b} must have the shape of {name_a} (the same shape, paired rows); "
      f"got {name_a}: {A.shape}, {name_b}: {B.shape}"
    )
  return A, B


def _check_same_width(name_a: str, A: Array, name_b: str, B: Array) -> None:
  if A.shape[1] != B.shape[1]:
    raise ValueError(
      f"{name_a} and {name_b} must have the same feature dimension d; "
      f"got {name_a}: {A.shape}, {name_b}: {B.shape}"
    )


def _check_choice(name: str, value: str, choices) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}; got {value!r}")


def _labels_to_membership(labels, num_classes, n: int) -> Array:
  """One-hot membership ``(n, k)`` float32 from integer labels ``(n,)``."""
  if num_classes is None or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive Python int; got {num_classes!r}")
  labels = jnp.asarray(labels) if _is_concrete(labels) else labels
  if labels.shape != (n,):
    raise ValueError(f"labels must have shape (n,) = ({n},) to match Z; got {labels.shape}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
      f"labels must be integers; got dtype {labels.dtype} (pass soft memberships as membership=)"
    )
  if _is_concrete(labels):
    lo, hi = int(jnp.min(labels)), int(jnp.max(labels))
    if lo < 0 or hi >= num_classes:
      raise ValueError(
        f"labels must lie in [0, {num_classes}) for num_classes={num_classes}; "
        f"got values in [{lo}, {hi}]"
      )
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def _check_membership(membership, n: int) -> Array:
  membership = jnp.asarray(membership)
  if membership.ndim != 2 or membership.shape[0] != n:
    raise ValueError(
      f"membership must have shape (n, k) with n = {n} rows of Z; got {membership.shape}"
    )
  if not jnp.issubdtype(membership.dtype, jnp.floating):
    raise ValueError(f"membership must be floating-point; got dtype {membership.dtype}")
  if _is_concrete(membership) and bool(jnp.any(membership < 0)):
    raise ValueError("membership must be non-negative (soft class weights per row)")
  return membership.astype(jnp.float32)


# ----------------------------------------------------------------------------
# Numerical core.
# ----------------------------------------------------------------------------


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _logdet_i_plus(scale: Array, G: Array) -> Array:
  """``logdet(I + scale·G)`` for PSD ``G: (..., m, m)`` and ``scale: (...)`` ≥ 0.

  Cholesky: ``logdet = 2 Σ log diag L``; the identity keeps the matrix SPD
  (docs/method.md#closed-forms-the-code-uses).
  """
  m = G.shape[-1]
  M = jnp.eye(m, dtype=jnp.float32) + scale[..., None, None] * G
  L = jnp.linalg.cholesky(M)
  return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)


def _use_row_side(n: int, d: int, axis_name) -> bool:
  """Whether to factor the ``n × n`` Gram (cheaper when n < d, and only unsharded)."""
  return axis_name is None and n < d


def _weighted_rates(Z: Array, weights: Array, eps_sq, axis_name, row_side_ok: bool = True) -> Array:
  """Coding rates of weighted row sets.

  Computes, for each set ``j`` with row weights ``w_j`` (one-hot or soft membership),
  ``R_j = ½ logdet(I_d + α_j Zᵀ diag(w_j) Z)``, ``α_j = d / (n_j ε²)``, ``n_j = Σᵢ w_ji``
  (docs/method.md#coding-rates, R and R_c). Empty sets (``n_j = 0``) have rate 0.

  Args:
    Z: (n, d) float32, local rows when ``axis_name`` is given.
    weights: (k, n) float32 ≥ 0.
    eps_sq: ε² > 0.
    axis_name: mapped axis to reduce over, or None.
    row_side_ok: False for weights one differentiates (soft memberships): the
      ``n × n`` form needs ``√w``, whose derivative is infinite at ``w = 0``.
  Returns:
    (k,) float32 rates.
  """
  n, d = Z.shape
  counts = _psum(jnp.sum(weights, axis=1), axis_name)  # (k,)
  safe_counts = jnp.where(counts > 0, counts, 1.0)
  alpha = jnp.where(counts > 0, d / (safe_counts * eps_sq), 0.0)  # (k,)
  if row_side_ok and _use_row_side(n, d, axis_name):
    # logdet(I_d + α ZᵀWZ) = logdet(I_n + α W^½ Z Zᵀ W^½).
    root = jnp.sqrt(weights)  # (k, n)
    G = (root[:, :, None] * (Z @ Z.T)[None]) * root[:, None, :]  # (k, n, n)
  else:
    G = _psum(jnp.einsum("kn,nd,ne->kde", weights, Z, Z), axis_name)  # (k, d, d)
  return 0.5 * _logdet_i_plus(alpha, G)


def _rate(Z: Array, eps_sq, axis_name) -> Array:
  """``R(Z)`` (docs/method.md#coding-rates) of ``Z: (n, d)``."""
  return _weighted_rates(Z, jnp.ones((1, Z.shape[0]), jnp.float32), eps_sq, axis_name)[0]


# ----------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _coding_rate(Z, eps_sq, axis_name=None):
  return _rate(Z, eps_sq, axis_name)


def coding_rate(Z, eps_sq, *, axis_name: Optional[str] = None) -> Array:
  """Coding rate ``R(Z) = ½ logdet(I_d + α ZᵀZ)``, ``α = d / (n ε²)`` (docs/method.md#coding-rates).

  Args:
    Z: (n, d) features as rows, any float dtype (computed in float32).
    eps_sq: ε² > 0, the distortion (CTRL's ``eps``; 0.5 there).
    axis_name: mapped axis over which the rows are sharded (inside shard_map/pmap).
  Returns:
    () float32.
  """
  Z = _check_features("Z", Z)
  _check_eps_sq(eps_sq)
  return _coding_rate(Z, eps_sq, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name", "soft"))
def _rate_reduction(Z, membership, eps_sq, axis_name=None, soft=False):
  n_total = _psum(jnp.float32(Z.shape[0]), axis_name)
  # R(Z) and every class rate R(Z_k) in one batched factorisation.
  weights = jnp.concatenate([jnp.ones((1, Z.shape[0]), jnp.float32), membership.T])
  rates = _weighted_rates(Z, weights, eps_sq, axis_name, row_side_ok=not soft)  # (1 + k,)
  counts = _psum(jnp.sum(membership, axis=0), axis_name)  # (k,)
  # R_c(Z|Π) = Σ_k (n_k / 2n) logdet(I + α_k Z_kᵀ Z_k) = Σ_k (n_k / n) R(Z_k).
  return rates[0] - jnp.sum(counts / n_total * rates[1:])


def rate_reduction(
  Z,
  labels=None,
  num_classes: Optional[int] = None,
  eps_sq=None,
  *,
  membership=None,
  axis_name: Optional[str] = None,
) -> Array:
  """MCR² rate reduction ``ΔR(Z|Π) = R(Z) − R_c(Z|Π)`` (docs/method.md#coding-rates).

  ``R_c(Z|Π) = Σ_k (n_k / 2n) logdet(I_d + α_k Z_kᵀ Z_k)``, ``α_k = d / (n_k ε²)``. With a
  soft membership ``Π: (n, k)``, ``Z_kᵀ Z_k`` becomes ``Zᵀ diag(Π[:, k]) Z`` and
  ``n_k = Σᵢ Π[i, k]`` (MCR²'s weighted form, used for clustering). Empty classes
  contribute 0.

  Args:
    Z: (n, d) features as rows.
    labels: (n,) int class of each row in ``[0, num_classes)``; or None with
      ``membership``.
    num_classes: k, a Python int (required with ``labels``).
    eps_sq: ε² > 0.
    membership: (n, k) float ≥ 0, soft class weights per row (rows typically sum to 1).
    axis_name: mapped axis over which the rows are sharded.
  Returns:
    () float32.
  """
  Z = _check_features("Z", Z)
  _check_eps_sq(eps_sq)
  n = Z.shape[0]
  if (labels is None) == (membership is None):
    raise ValueError("pass exactly one of labels (with num_classes) or membership=")
  soft = membership is not None
  if soft:
    membership = _check_membership(membership, n)
  else:
    membership = _labels_to_membership(labels, num_classes, n)
  return _rate_reduction(Z, membership, eps_sq, axis_name=axis_name, soft=soft)


def _pair_rates(Z, Zhat, eps_sq, axis_name):
  """``(R(Z ∪ Ẑ), R(Z), R(Ẑ))``, each with its own row count, in one batched Cholesky."""
  n, d = Z.shape
  m = Zhat.shape[0]
  if _use_row_side(n + m, d, axis_name):
    # Row side: all three as masked (n+m) × (n+m) Grams of the union, so one call.
    in_z = jnp.concatenate([jnp.ones(n), jnp.zeros(m)]).astype(jnp.float32)
    weights = jnp.stack([jnp.ones(n + m, jnp.float32), in_z, 1.0 - in_z])
    rates = _weighted_rates(jnp.concatenate([Z, Zhat]), weights, eps_sq, axis_name)
  else:
    # d side: the union's Gram is ZᵀZ + ẐᵀẐ, so two Gram products serve all three.
    G = _psum(Z.T @ Z, axis_name)
    Ghat = _psum(Zhat.T @ Zhat, axis_name)
    n_z = _psum(jnp.float32(n), axis_name)
    n_zhat = _psum(jnp.float32(m), axis_name)
    counts = jnp.stack([n_z + n_zhat, n_z, n_zhat])
    rates = 0.5 * _logdet_i_plus(d / (counts * eps_sq), jnp.stack([G + Ghat, G, Ghat]))
  return rates[0], rates[1], rates[2]


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _rate_distance(Z, Zhat, eps_sq, axis_name=None):
  R_union, R_z, R_zhat = _pair_rates(Z, Zhat, eps_sq, axis_name)
  return R_union - 0.5 * (R_z + R_zhat)


def rate_distance(Z, Zhat, eps_sq, *, axis_name: Optional[str] = None) -> Array:
  """Rate distance between two sets ``ΔR(Z, Ẑ) = R(Z ∪ Ẑ) − ½ (R(Z) + R(Ẑ))``
  (docs/method.md#distance-between-two-sets).

  Each ``R`` uses its own number of rows (``n + m`` for the union). This is
  CTRL-Binary's distance and the contested term of the uCTRL game.

  Args:
    Z: (n, d) features.
    Zhat: (m, d) features (``m`` may differ from ``n``).
    eps_sq: ε² > 0.
    axis_name: mapped axis over which the rows of both sets are sharded.
  Returns:
    () float32, ≥ 0.
  """
  Z = _check_features("Z", Z)
  Zhat = _check_features("Zhat", Zhat)
  _check_same_width("Z", Z, "Zhat", Zhat)
  _check_eps_sq(eps_sq)
  return _rate_distance(Z, Zhat, eps_sq, axis_name=axis_name)


@jax.jit
def _pairwise_rate_distance(U, V, eps_sq):
  d = U.shape[1]
  a = d / (2.0 * eps_sq)
  uu = jnp.sum(U * U, axis=1)
  vv = jnp.sum(V * V, axis=1)
  # |u|²|v|² − (uᵀv)² = ¼|u+v|²|u−v|² − ¼(|u|²−|v|²)²: free of the cancellation the
  # direct form suffers for u ≈ ±v, exactly where the term's gradient matters most.
  plus = jnp.sum(jnp.square(U + V), axis=1)
  minus = jnp.sum(jnp.square(U - V), axis=1)
  cross = jnp.maximum(0.25 * (plus * minus - jnp.square(uu - vv)), 0.0)
  # det[(1 + a|u|²)(1 + a|v|²) − a²(uᵀv)²] = 1 + a(|u|² + |v|²) + a²(|u|²|v|² − (uᵀv)²).
  joint = 0.5 * jnp.log1p(a * (uu + vv) + a * a * cross)
  single = 0.25 * (jnp.log1p(2.0 * a * uu) + jnp.log1p(2.0 * a * vv))
  return joint - single


def pairwise_rate_distance(U, V, eps_sq) -> Array:
  """Exact row-wise rate distance ``ΔR(uᵢ, vᵢ)`` of one-vector sets
  (docs/method.md#sample-wise-distance).

  ``ΔR(u, v) = ½ log[(1 + a|u|²)(1 + a|v|²) − a²(uᵀv)²] − ¼ [log(1 + 2a|u|²) + log(1 + 2a|v|²)]``
  with ``a = d / (2ε²)``: the 2-column log-det of the definition in closed form, O(d)
  per row. ≥ 0, and 0 iff ``u = ±v`` for unit vectors. Row-local, so it needs no
  ``axis_name`` and is exact on sharded rows as it stands.

  Args:
    U: (n, d) features.
    V: (n, d) features, paired row by row with ``U``.
    eps_sq: ε² > 0.
  Returns:
    (n,) float32.
  """
  U, V = _check_paired("U", U, "V", V)
  _check_eps_sq(eps_sq)
  return _pairwise_rate_distance(U, V, eps_sq)


@jax.jit
def _cosine_distance(U, V):
  # Norms clipped at 1e-8 (as torch's cosine_similarity does) before the square root,
  # so zero rows have finite values and gradients.
  def norm(X):
    return jnp.sqrt(jnp.maximum(jnp.sum(X * X, axis=1), 1e-16))

  return 1.0 - jnp.sum(U * V, axis=1) / (norm(U) * norm(V))


def cosine_distance(U, V) -> Array:
  """Row-wise ``1 − cos(uᵢ, vᵢ)``: the paper's surrogate for ``ΔR(uᵢ, vᵢ)`` (its footnote).

  Args:
    U: (n, d) features.
    V: (n, d) features.
  Returns:
    (n,) float32 in [0, 2].
  """
  U, V = _check_paired("U", U, "V", V)
  return _cosine_distance(U, V)


def l2_normalize(Z, eps: float = 1e-12) -> Array:
  """Rows of ``Z: (..., d)`` scaled to unit norm, in float32.

  ``Z / sqrt(max(|z|², eps))``: a zero row stays zero with a finite (zero) gradient,
  where ``Z / |Z|`` would give NaN.
  """
  Z = jnp.asarray(Z).astype(jnp.float32)
  return Z * jax.lax.rsqrt(jnp.maximum(jnp.sum(Z * Z, axis=-1, keepdims=True), eps))


def views_mean_target(Z_views) -> Array:
  """``(n, d)``: EMP-SSL's target for the views of each sample, the unit mean ``z̄ᵢ`` of
  its ``V`` view features ``Z_views: (V, n, d)`` (docs/method.md#the-game)."""
  return l2_normalize(jnp.mean(Z_views, axis=0))


def _sample_term(Z, Zs, eps_sq, sample_distance):
  """``Σᵢ dist(zᵢ, z'ᵢ)`` terms before reduction: (n,) per row, mean over views."""
  dist = (
    functools.partial(_pairwise_rate_distance, eps_sq=eps_sq)
    if sample_distance == "exact"
    else _cosine_distance
  )
  return jnp.mean(jax.vmap(lambda Zv: dist(Z, Zv))(Zs), axis=0)


def _aug_term(Z, Z_aug, eps_sq, sample_distance, aug_target):
  """(n,) augmentation term per row (docs/method.md#the-game, the augmentation term).

  ``"image"``: each view against ``zᵢ``, mean over views. ``"mean"``: EMP-SSL's target,
  the normalised mean ``z̄ᵢ`` of the views' features; the image and the views weigh
  half each: ``½ dist(zᵢ, z̄ᵢ) + ½ mean_v dist(z_vᵢ, z̄ᵢ)`` (with the image as one more of
  V + 1 members, V = 8 views left ``z`` itself free: weight 1/9).
  """
  if aug_target == "image":
    return _sample_term(Z, Z_aug, eps_sq, sample_distance)
  target = views_mean_target(Z_aug)
  return 0.5 * (
    _sample_term(target, Z[None], eps_sq, sample_distance)
    + _sample_term(target, Z_aug, eps_sq, sample_distance)
  )


@functools.partial(
  jax.jit, static_argnames=("sample_distance", "sample_reduction", "aug_target", "axis_name")
)
def _uctrl_objective(
  Z,
  Zhat,
  Z_aug,
  eps_sq,
  lambda_aug,
  lambda_self,
  sample_distance,
  sample_reduction,
  aug_target,
  axis_name,
):
  n_total = _psum(jnp.float32(Z.shape[0]), axis_name)
  # R(Z) is one of the three rates of ΔR(Z, Ẑ): one factorisation serves both terms.
  R_union, R, R_zhat = _pair_rates(Z, Zhat, eps_sq, axis_name)
  delta = R_union - 0.5 * (R + R_zhat)
  aug_rows = _aug_term(Z, Z_aug, eps_sq, sample_distance, aug_target)  # (n,)
  self_rows = _sample_term(Z, Zhat[None], eps_sq, sample_distance)  # (n,)
  aug_sum = _psum(jnp.sum(aug_rows), axis_name)
  self_sum = _psum(jnp.sum(self_rows), axis_name)
  scale = 1.0 if sample_reduction == "sum" else 1.0 / n_total
  aug, self_ = aug_sum * scale, self_sum * scale
  return {
    "R": R,
    "delta_R_z_zhat": delta,
    "aug": aug,
    "self": self_,
    "aug_per_sample": aug_sum / n_total,
    "self_per_sample": self_sum / n_total,
    # docs/method.md#the-game: the encoder maximises, the decoder minimises; only ΔR(Z, Ẑ) is
    # contested.
    "encoder_objective": R + delta - lambda_aug * aug - lambda_self * self_,
    "decoder_objective": R + delta + lambda_aug * aug + lambda_self * self_,
  }


def uctrl_objective(
  Z,
  Zhat,
  Z_aug,
  eps_sq,
  lambda_aug,
  lambda_self,
  *,
  sample_distance: str,
  sample_reduction: str,
  aug_target: str,
  axis_name: Optional[str] = None,
) -> Mapping[str, Array]:
  """Every term of the uCTRL game and both players' objectives (docs/method.md#the-game).

      encoder θ:  max  R(Z) + ΔR(Z, Ẑ) − λ₁ Σᵢ ΔR(zᵢ, z_aᵢ) − λ₂ Σᵢ ΔR(zᵢ, ẑᵢ)
      decoder η:  min  R(Z) + ΔR(Z, Ẑ) + λ₁ Σᵢ ΔR(zᵢ, z_aᵢ) + λ₂ Σᵢ ΔR(zᵢ, ẑᵢ)

  The caller controls what is held constant (stop-gradient through ``g`` in the
  encoder step); this function only evaluates.

  Args:
    Z: (n, d) features of the images, ``f(X)``.
    Zhat: (n, d) features of the reconstructions, ``f(g(Z))``.
    Z_aug: (n, d) features of one augmented view, or (V, n, d) of V views; with
      several views the sample-wise augmentation term is the mean over views.
    eps_sq: ε² > 0.
    lambda_aug: λ₁ ≥ 0, weight of the augmentation-invariance term.
    lambda_self: λ₂ ≥ 0, weight of the self-consistency term.
    sample_distance, sample_reduction, aug_target: required keywords, as
      ``config.loss`` sets them (``uctrl_jax/defaults.py`` holds the trainer's choice).
    sample_distance: "exact" (``pairwise_rate_distance``) or "cosine"
      (``cosine_distance``, the paper's footnote).
    sample_reduction: "sum" (the Σᵢ of docs/method.md#the-game over the global batch) or
      "mean" (Σᵢ / n, so λ does not scale with the batch size).
    aug_target: what the views are compared with: "image" (``dist(zᵢ, z_aᵢ)``, mean
      over views) or "mean" (EMP-SSL's target, the normalised mean ``z̄ᵢ`` of the views'
      features: ``½ dist(zᵢ, z̄ᵢ) + ½ mean_v dist(z_vᵢ, z̄ᵢ)``).
    axis_name: mapped axis over which the rows are sharded.
  Returns:
    dict of () float32: ``R``, ``delta_R_z_zhat``, ``aug``, ``self`` (the sample-wise
    terms as they enter the objectives, i.e. after ``sample_reduction``),
    ``aug_per_sample``, ``self_per_sample`` (batch means, for logs),
    ``encoder_objective`` (to maximise) and ``decoder_objective`` (to minimise).
  """
  Z, Zhat = _check_paired("Z", Z, "Zhat", Zhat)
  Z_aug = jnp.asarray(Z_aug)
  if Z_aug.ndim == 2:
    Z_aug = Z_aug[None]
  if Z_aug.ndim != 3 or Z_aug.shape[1:] != Z.shape:
    raise ValueError(
      f"Z_aug must have shape (n, d) or (V, n, d) matching Z {Z.shape}; got {Z_aug.shape}"
    )
  if not jnp.issubdtype(Z_aug.dtype, jnp.floating):
    raise ValueError(f"Z_aug must be a floating-point array; got dtype {Z_aug.dtype}")
  Z_aug = Z_aug.astype(jnp.float32)
  _check_eps_sq(eps_sq)
  for name, lam in (("lambda_aug", lambda_aug), ("lambda_self", lambda_self)):
    if _is_concrete(lam) and not np.asarray(lam) >= 0:
      raise ValueError(f"{name} must be ≥ 0; got {lam}")
  _check_choice("sample_distance", sample_distance, SAMPLE_DISTANCES)
  _check_choice("sample_reduction", sample_reduction, SAMPLE_REDUCTIONS)
  _check_choice("aug_target", aug_target, AUG_TARGETS)
  return _uctrl_objective(
    Z,
    Zhat,
    Z_aug,
    eps_sq,
    lambda_aug,
    lambda_self,
    sample_distance=sample_distance,
    sample_reduction=sample_reduction,
    aug_target=aug_target,
    axis_name=axis_name,
  )


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _ctrl_multi_objective(Z, Zhat, membership, eps_sq, axis_name=None):
  n, d = Z.shape
  dr_z = _rate_reduction(Z, membership, eps_sq, axis_name=axis_name)
  dr_zhat = _rate_reduction(Zhat, membership, eps_sq, axis_name=axis_name)
  # Σ_k ΔR(Z_k, Ẑ_k) = Σ_k R(Z_k ∪ Ẑ_k) − ½ (R(Z_k) + R(Ẑ_k)), each with its own n.
  w = membership.T  # (k, n)
  R_k = _weighted_rates(Z, w, eps_sq, axis_name)
  Rhat_k = _weighted_rates(Zhat, w, eps_sq, axis_name)
  R_union_k = _weighted_rates(
    jnp.concatenate([Z, Zhat]), jnp.concatenate([w, w], axis=1), eps_sq, axis_name
  )
  per_class = jnp.sum(R_union_k - 0.5 * (R_k + Rhat_k))
  return {
    "delta_R_z": dr_z,
    "delta_R_zhat": dr_zhat,
    "class_distance": per_class,
    # CTRL-Multi (docs/method.md#the-game, the relatives): the encoder maximises it, the decoder
    # minimises.
    "objective": dr_z + dr_zhat + per_class,
  }


def ctrl_multi_objective(
  Z, Zhat, labels, num_classes: int, eps_sq, *, axis_name: Optional[str] = None
) -> Mapping[str, Array]:
  """Supervised CTRL-Multi: ``ΔR(Z|Π) + ΔR(Ẑ|Π) + Σ_k ΔR(Z_k, Ẑ_k)`` (docs/method.md#the-game).

  Args:
    Z: (n, d) features of the images.
    Zhat: (n, d) features of their reconstructions (same labels as ``Z``).
    labels: (n,) int in ``[0, num_classes)``.
    num_classes: k.
    eps_sq: ε² > 0.
    axis_name: mapped axis over which the rows are sharded.
  Returns:
    dict of () float32: ``delta_R_z``, ``delta_R_zhat``, ``class_distance`` and
    ``objective`` (their sum).
  """
  Z, Zhat = _check_paired("Z", Z, "Zhat", Zhat)
  _check_eps_sq(eps_sq)
  membership = _labels_to_membership(labels, num_classes, Z.shape[0])
  return _ctrl_multi_objective(Z, Zhat, membership, eps_sq, axis_name=axis_name)
