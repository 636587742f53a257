"""Clustering of frozen features: k-means and MCR² clustering, scored by ACC and NMI.

Protocol:
- features L2-normalised (the encoder's outputs already are; raw pixels are made
  comparable), clustered into ``k`` groups (default: the number of classes);
- k-means: k-means++ seeding and ``num_iters`` Lloyd iterations, ``num_restarts``
  restarts (vmapped), the restart with the smallest inertia kept;
- MCR² clustering: soft memberships ``Π = softmax(Z W + b)`` of a linear head trained
  with Adam to maximise ``ΔR(Z|Π) = R(Z) − R_c(Z|Π)`` (docs/method.md#coding-rates, MCR²'s soft
  form;
  ``R(Z)`` is constant in ``Π``, so this minimises the coding length of the
  partition); the head starts at the k-means partition (logits
  ``−|z − c_j|² / τ``), so MCR² refines it by subspace structure rather than searching
  from noise; clusters are ``argmax Π``. Features wider than ``mcr2_max_dim`` are first
  projected on their top principal components (the ``d × d`` log-dets of raw pixels
  would dominate the evaluation time);
- ACC: accuracy in % after the best one-to-one matching of clusters to labels
  (Hungarian algorithm); NMI: mutual information over the arithmetic mean of the
  two entropies (scikit-learn's default), in [0, 1].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import optimize

from uctrl_jax import rate_reduction as rr
from uctrl_jax.evaluators import common

# What the registry needs (uctrl_jax/evaluators/__init__.py): test features; the test
# split's labels only score the partition.
NEEDS_DECODER = False
NEEDS_LABELS = ("test",)


# ----------------------------------------------------------------------------
# Scores.
# ----------------------------------------------------------------------------


def contingency(y_true, y_pred) -> np.ndarray:
  """``(P, T)`` counts of (predicted cluster, true label) pairs over the ids present."""
  _, t = np.unique(np.asarray(y_true), return_inverse=True)
  _, p = np.unique(np.asarray(y_pred), return_inverse=True)
  table = np.zeros((p.max() + 1, t.max() + 1), np.int64)
  np.add.at(table, (p, t), 1)
  return table


def hungarian_accuracy(y_true, y_pred) -> float:
  """Accuracy in % under the best one-to-one map of cluster ids to labels."""
  table = contingency(y_true, y_pred)
  rows, cols = optimize.linear_sum_assignment(table, maximize=True)
  return float(100.0 * table[rows, cols].sum() / table.sum())


def _entropy(counts: np.ndarray) -> float:
  p = counts[counts > 0] / counts.sum()
  return float(-np.sum(p * np.log(p)))


def nmi(y_true, y_pred) -> float:
  """Normalised mutual information ``I / ((H(true) + H(pred)) / 2)``; 1 when both are one cluster."""
  table = contingency(y_true, y_pred).astype(np.float64)
  n = table.sum()
  h_pred, h_true = _entropy(table.sum(1)), _entropy(table.sum(0))
  if h_pred == 0.0 and h_true == 0.0:
    return 1.0  # identical trivial partitions (scikit-learn's convention)
  outer = np.outer(table.sum(1), table.sum(0))
  nz = table > 0
  mi = float(np.sum(table[nz] / n * np.log(table[nz] * n / outer[nz])))
  return max(0.0, mi / (0.5 * (h_true + h_pred)))


# ----------------------------------------------------------------------------
# k-means.
# ----------------------------------------------------------------------------


def _sq_dists(Z, C):
  """``(n, k)`` squared distances between rows of ``Z: (n, d)`` and ``C: (k, d)``."""
  d2 = jnp.sum(Z * Z, 1)[:, None] - 2.0 * Z @ C.T + jnp.sum(C * C, 1)[None, :]
  return jnp.maximum(d2, 0.0)


def _kmeans_once(Z, key, *, k: int, num_iters: int):
  """One k-means++-seeded Lloyd run: ``(assignments (n,), centroids (k, d), inertia ())``."""
  n = Z.shape[0]
  key, first = jax.random.split(key)
  C = jnp.zeros((k, Z.shape[1]), Z.dtype).at[0].set(Z[jax.random.randint(first, (), 0, n)])
  d2 = _sq_dists(Z, C[:1])[:, 0]

  def seed(i, carry):  # k-means++: the next centre ∝ squared distance to the nearest one
    C, d2, key = carry
    key, sub = jax.random.split(key)
    total = jnp.sum(d2)
    p = jnp.where(total > 0, d2 / jnp.where(total > 0, total, 1.0), 1.0 / n)
    c = Z[jax.random.choice(sub, n, p=p)]
    return C.at[i].set(c), jnp.minimum(d2, _sq_dists(Z, c[None])[:, 0]), key

  C, _, _ = jax.lax.fori_loop(1, k, seed, (C, d2, key))

  def lloyd(_, C):
    onehot = jax.nn.one_hot(jnp.argmin(_sq_dists(Z, C), 1), k, dtype=Z.dtype)
    counts = onehot.sum(0)[:, None]
    # An emptied cluster keeps its centre rather than becoming NaN.
    return jnp.where(counts > 0, (onehot.T @ Z) / jnp.maximum(counts, 1.0), C)

  C = jax.lax.fori_loop(0, num_iters, lloyd, C)
  d2 = _sq_dists(Z, C)
  return jnp.argmin(d2, 1), C, jnp.sum(jnp.min(d2, 1))


@functools.partial(jax.jit, static_argnames=("k", "num_iters", "num_restarts"))
def _kmeans(Z, key, *, k, num_iters, num_restarts):
  assign, C, inertia = jax.vmap(lambda key: _kmeans_once(Z, key, k=k, num_iters=num_iters))(
    jax.random.split(key, num_restarts)
  )
  best = jnp.argmin(inertia)
  return assign[best], C[best], inertia[best]


def kmeans(Z, k: int, key, *, num_iters: int = 100, num_restarts: int = 10):
  """k-means of ``Z: (n, d)``: ``(assignments (n,) int, centroids (k, d), inertia float)``."""
  Z = jnp.asarray(common.as_features("Z", Z))
  if not 1 <= k <= Z.shape[0]:
    raise ValueError(f"k must be in [1, n = {Z.shape[0]}]; got {k}")
  assign, C, inertia = _kmeans(
    Z, key, k=int(k), num_iters=int(num_iters), num_restarts=int(num_restarts)
  )
  return np.asarray(assign), np.asarray(C), float(inertia)


# ----------------------------------------------------------------------------
# MCR² clustering.
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit_mcr2_head(Z, W, b, eps_sq, lr, *, steps: int):
  tx = optax.adam(lr)

  def loss(params):
    W, b = params
    return -rr.rate_reduction(Z, eps_sq=eps_sq, membership=jax.nn.softmax(Z @ W + b))

  def step(carry, _):
    params, opt_state = carry
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), -value

  (params, _), history = jax.lax.scan(step, ((W, b), tx.init((W, b))), None, length=steps)
  return params, history


def pca_project(Z: np.ndarray, dim: int) -> np.ndarray:
  """``Z: (n, d)`` on its top ``dim`` principal components, rows L2-normalised."""
  if Z.shape[1] <= dim:
    return Z
  centred = Z - Z.mean(0)
  _, _, Vt = np.linalg.svd(centred, full_matrices=False)
  return common.l2_normalize(centred @ Vt[:dim].T)


def mcr2_cluster(
  Z, centroids, *, eps_sq: float = 0.5, steps: int = 200, lr: float = 0.01, temperature: float = 0.1
):
  """MCR² clustering of unit rows ``Z: (n, d)`` started from ``centroids: (k, d)``.

  Returns ``(assignments (n,) int, ΔR history (steps,))``; the history should rise.
  """
  Z = jnp.asarray(Z, jnp.float32)
  C = jnp.asarray(centroids, jnp.float32)
  # softmax(Z W + b) = softmax(−|z − c_j|² / τ): the k-means partition as τ → 0.
  W, b = 2.0 * C.T / temperature, -jnp.sum(C * C, 1) / temperature
  (W, b), history = _fit_mcr2_head(Z, W, b, jnp.float32(eps_sq), jnp.float32(lr), steps=int(steps))
  return np.asarray(jnp.argmax(Z @ W + b, 1)), np.asarray(history)


# ----------------------------------------------------------------------------
# The evaluator.
# ----------------------------------------------------------------------------


def evaluate(
  Z,
  y,
  *,
  num_clusters: int | None = None,
  seed: int = 0,
  num_iters: int = 100,
  num_restarts: int = 10,
  mcr2: bool = True,
  eps_sq: float = 0.5,
  mcr2_steps: int = 200,
  mcr2_lr: float = 0.01,
  mcr2_temperature: float = 0.1,
  mcr2_max_examples: int | None = 5000,
  mcr2_max_dim: int = 128,
) -> dict[str, float]:
  """k-means (and MCR²) clustering ACC (%) and NMI of ``Z: (n, d)`` against labels ``y: (n,)``.

  Returns ``kmeans_acc``, ``kmeans_nmi`` and, with ``mcr2``, ``mcr2_acc``, ``mcr2_nmi``
  and ``mcr2_delta_r`` (final ``ΔR(Z|Π)``), computed on the first
  ``mcr2_max_examples`` rows.
  """
  Z = common.l2_normalize(common.as_features("Z", Z))
  y = common.as_labels("y", y, len(Z))
  k = int(num_clusters or (y.max() + 1))
  key_kmeans, key_mcr2 = jax.random.split(jax.random.key(seed))
  assign, _, _ = kmeans(Z, k, key_kmeans, num_iters=num_iters, num_restarts=num_restarts)
  out = {"kmeans_acc": hungarian_accuracy(y, assign), "kmeans_nmi": nmi(y, assign)}
  if mcr2:
    m = len(Z) if mcr2_max_examples is None else min(len(Z), int(mcr2_max_examples))
    Zm, ym = pca_project(Z[:m], mcr2_max_dim), y[:m]
    # Seeded from k-means on the same (projected) rows, so the head starts where it refines.
    _, C, _ = kmeans(Zm, k, key_mcr2, num_iters=num_iters, num_restarts=num_restarts)
    pred, history = mcr2_cluster(
      Zm, C, eps_sq=eps_sq, steps=mcr2_steps, lr=mcr2_lr, temperature=mcr2_temperature
    )
    out.update(
      mcr2_acc=hungarian_accuracy(ym, pred), mcr2_nmi=nmi(ym, pred), mcr2_delta_r=float(history[-1])
    )
  return out


def defaults(config) -> dict:
  """Options left None that the run's config decides: the ε² the features were trained with."""
  return {"eps_sq": float(config.loss.eps_sq)}


def run(context, *, num_clusters: int | None = None, **options) -> dict[str, float]:
  """``evaluate`` on a registry ``Context``: clusters the test split (unsupervised: the
  labels only score the partition) into ``num_clusters`` (None: the number of classes)."""
  data = context.data
  return evaluate(
    context.z_test, data.y_test, num_clusters=num_clusters or data.num_classes, **options
  )
