"""Unsupervised conditional generation: decode samples from each cluster's principal subspace.

Protocol (docs/method.md#evaluation-protocols): cluster the training features (k-means, or the
labels when given); for each cluster ``c`` with centred features ``Z_c − μ_c = U S Vᵀ`` draw
``z = μ_c + Σ_{j ≤ r} a_j (s_j / √n_c) v_j``, ``a ~ N(0, I)`` (a Gaussian with the
cluster's spread along its top ``r`` components), scale to unit norm where the encoder's
outputs are unit rows (a VAE's posterior means are not: there samples and clusters stay
in the features' own space) and decode. The grid has one row per cluster: the decoded
(normalised) mean ``μ_c`` first, then the samples. ``sample_features`` is this
sampler for every caller: the judge's scores of conditional samples (evaluators/judge.py)
draw from it too, with the same seed, so the picture and the scores show one sampler.

Metrics: ``explained_variance`` (mean over clusters of the share of the cluster's
variance in its top ``r`` components) and, with training pixels and labels given,
``sample_consistency``: % of decoded samples that a pixel kNN classifier (fit on the
training pixels) puts in their cluster's class, the most frequent label among the
cluster's training members (samples of a cluster look like its class = conditional
generation works; a collapsed decoder drawing one thing for every cluster scores low).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from absl import logging

import jax
import numpy as np

from uctrl_jax import image_grid
from uctrl_jax import workdir_files
from uctrl_jax.evaluators import clustering
from uctrl_jax.evaluators import common
from uctrl_jax.evaluators import knn


# What the registry needs (uctrl_jax/evaluators/__init__.py): the decoder; the train
# split's labels for ``sample_consistency`` (and for the clusters, with ``use_labels``).
NEEDS_DECODER = True
OPTIONAL_LABELS = ("train",)


def needs_labels(options) -> tuple[str, ...]:
  """With ``use_labels`` the clusters are the training classes: no run without them."""
  return ("train",) if options.get("use_labels") else ()


class Samples(NamedTuple):
  """Features drawn by ``sample_features``, grouped by cluster in cluster order."""

  features: np.ndarray  # (N, d) float32 (unit rows where the training features are)
  cluster_ids: np.ndarray  # (N,) int64, non-decreasing
  assign: np.ndarray  # (n,) int64: the cluster of each training row
  means: np.ndarray  # (K, d) float32: each cluster's (normalised) mean (zeros: empty cluster)
  explained: np.ndarray  # (K,) share of each cluster's variance in its top components (NaN: empty)


def cluster_samples(Z, assign, counts, key, *, num_components: int = 8, unit: bool = True):
  """``counts[c]`` features sampled along cluster ``c``'s principal subspace, scaled to
  unit rows if ``unit`` (features on the unit sphere).

  Args:
    Z: (n, d) features.
    assign: (n,) int cluster of each row in ``[0, K)``.
    counts: (K,) int samples per cluster (an empty cluster must have 0).
    key: PRNG key of the Gaussian coefficients, ``(Σ counts, num_components)`` of them
      consumed in cluster order.
  Returns:
    ``(samples (N, d), cluster_ids (N,), means (K, d), explained (K,))``, ``N = Σ counts``;
    ``means`` and ``explained`` as in ``Samples``.
  """
  Z = common.as_features("Z", Z)
  counts = np.asarray(counts, np.int64)
  K, d = len(counts), Z.shape[1]
  coeffs = np.asarray(jax.random.normal(key, (int(counts.sum()), num_components)))
  samples = np.zeros((int(counts.sum()), d), np.float32)
  means = np.zeros((K, d), np.float32)
  explained = np.full((K,), np.nan)
  offsets = np.concatenate([[0], np.cumsum(counts)])
  r = min(num_components, d)
  for c in range(K):
    Zc = Z[assign == c].astype(np.float64)
    if not len(Zc):
      if counts[c]:
        raise ValueError(f"cluster {c} is empty but asked for {counts[c]} samples")
      continue
    mean = Zc.mean(0)
    # Principal components from the d × d covariance: its eigenvalues are the variances
    # s_j² / n_c of the SVD of Z_c − μ_c (an SVD of 60 000 × 128 rows took seconds).
    variances, V = np.linalg.eigh((Zc - mean).T @ (Zc - mean) / len(Zc))
    variances, V = np.maximum(variances[::-1], 0.0), V[:, ::-1]  # largest first
    total = np.sum(variances)
    explained[c] = np.sum(variances[:r]) / total if total > 0 else 1.0
    spread = np.sqrt(variances[:r])  # standard deviation along each component
    draws = mean + (coeffs[offsets[c] : offsets[c + 1], :r] * spread) @ V[:, :r].T
    means[c] = common.l2_normalize(mean[None])[0] if unit else mean
    samples[offsets[c] : offsets[c + 1]] = common.l2_normalize(draws) if unit else draws
  return samples, np.repeat(np.arange(K), counts), means, explained


def proportional_counts(sizes, total: int) -> np.ndarray:
  """``total`` split over clusters of ``sizes: (K,)`` in proportion (largest remainders)."""
  sizes = np.asarray(sizes, np.float64)
  exact = total * sizes / sizes.sum()
  counts = np.floor(exact).astype(np.int64)
  counts[np.argsort(counts - exact, kind="stable")[: total - counts.sum()]] += 1
  return counts


def majority_labels(assign, y, num_clusters: int) -> np.ndarray:
  """``(K,)`` the most frequent of ``y: (n,)`` among each cluster's rows (-1: empty cluster)."""
  out = np.full(num_clusters, -1, np.int64)
  for c in range(num_clusters):
    if np.any(assign == c):
      out[c] = np.bincount(y[assign == c]).argmax()
  return out


# (digest of Z, K, key) -> assignments: the grid and the judge cluster the same training
# features with the same key; k-means of 60 000 rows took 10-20 s on 2 cores.
_KMEANS_MEMO: dict[tuple, np.ndarray] = {}
_KMEANS_MEMO_SIZE = 4


def kmeans_assign(Z, num_clusters: int, key) -> np.ndarray:
  """``clustering.kmeans(Z, num_clusters, key)``'s ``(n,)`` assignments, computed once per
  process for equal arguments (a copy each call)."""
  memo_key = (common.digest(Z), num_clusters, common.digest(jax.random.key_data(key)))
  if memo_key not in _KMEANS_MEMO:
    if len(_KMEANS_MEMO) >= _KMEANS_MEMO_SIZE:
      _KMEANS_MEMO.pop(next(iter(_KMEANS_MEMO)))  # the oldest
    _KMEANS_MEMO[memo_key] = np.asarray(clustering.kmeans(Z, num_clusters, key)[0], np.int64)
  return _KMEANS_MEMO[memo_key].copy()


def sample_features(
  Z,
  num_clusters: int,
  key,
  *,
  labels=None,
  num_components: int = 8,
  num_samples: int = 10,
  proportional: bool = False,
) -> Samples:
  """The sampler of unsupervised conditional generation (module docstring), one for the
  picture and the scores: the same ``key`` gives the same clusters and samples.

  Args:
    Z: (n, d) training features. Where they are unit rows (uCTRL's, an autoencoder's)
      the clusters and samples are too; otherwise (a VAE's posterior means) they stay in
      the features' own space, where the decoder reads them.
    num_clusters: K; k-means clusters of ``Z`` (one cluster: all of ``Z``).
    key: PRNG key; split into the k-means key and the samples' key.
    labels: (n,) int; given, the clusters are the classes (a supervised control).
    num_samples: per non-empty cluster, or with ``proportional`` in all, split over the
      clusters in proportion to their sizes (samples of the features' own mixture).
  """
  Z = common.as_features("Z", Z)
  unit = bool(np.allclose(np.linalg.norm(Z, axis=1), 1.0, atol=1e-3))
  Z = common.l2_normalize(Z) if unit else Z
  key_kmeans, key_samples = jax.random.split(key)
  if labels is not None:
    assign = common.as_labels("labels", labels, len(Z))
    num_clusters = int(num_clusters or assign.max() + 1)
  elif num_clusters == 1:
    assign = np.zeros(len(Z), np.int64)
  elif num_clusters:
    assign = kmeans_assign(Z, int(num_clusters), key_kmeans)
  else:
    raise ValueError("num_clusters is required without labels")
  sizes = np.bincount(assign, minlength=num_clusters)
  if proportional:
    counts = proportional_counts(sizes, int(num_samples))
  else:
    counts = np.where(sizes > 0, int(num_samples), 0)
  samples, cluster_ids, means, explained = cluster_samples(
    Z, assign, counts, key_samples, num_components=num_components, unit=unit
  )
  return Samples(samples, cluster_ids, assign, means, explained)


def evaluate(
  Z,
  decode: Callable,
  *,
  labels=None,
  num_clusters: Optional[int] = None,
  seed: int = 0,
  num_components: int = 8,
  num_samples: int = 10,
  x_train=None,
  y_train=None,
  num_classes: Optional[int] = None,
  batch_size: int = 500,
):
  """``(grid, metrics)``: the (rows = clusters) uint8 picture and the module's metrics.

  Args:
    Z: (n, d) training features.
    decode: (B, d) -> (B, H, W, C) in [-1, 1].
    labels: (n,) int; given, clusters are the classes (supervised control); None,
      k-means with ``num_clusters`` (required then) clusters.
    x_train, y_train: the images and labels of the rows of ``Z``, for
      ``sample_consistency`` (optional).
  """
  drawn = sample_features(
    Z,
    num_clusters,
    jax.random.key(seed),
    labels=labels,
    num_components=num_components,
    num_samples=num_samples,
  )
  K, S = len(drawn.means), num_samples
  rows = np.flatnonzero(np.bincount(drawn.cluster_ids, minlength=K))  # empty ones drew nothing
  # The grid: per cluster its mean, then its samples; an empty cluster's row stays zeros.
  grid = np.zeros((K, 1 + S, drawn.means.shape[1]), np.float32)
  grid[:, 0] = drawn.means
  grid[rows, 1:] = drawn.features.reshape(len(rows), S, -1)
  images = common.batched(decode, grid.reshape(K * (1 + S), -1), batch_size)
  images = images.reshape((K, 1 + S) + images.shape[1:])
  metrics = {"explained_variance": float(np.nanmean(drawn.explained))}
  if x_train is not None and y_train is not None:
    y_train = common.as_labels("y_train", y_train, len(drawn.assign))
    cluster_class = majority_labels(drawn.assign, y_train, K)
    generated = images[rows, 1:].reshape((len(rows) * S,) + images.shape[2:])
    pred = knn.weighted_knn(x_train, y_train, generated, num_classes=num_classes)
    metrics["sample_consistency"] = common.accuracy(cluster_class[drawn.cluster_ids], pred)
  return image_grid.image_grid(list(images)), metrics


def run(
  context,
  *,
  use_labels: bool = False,
  num_clusters: Optional[int] = None,
  num_clusters_without_labels: Optional[int] = None,
  **options,
) -> dict[str, float]:
  """``evaluate`` on a registry ``Context``'s training features; writes the grid to
  ``context.out_dir`` (suffixed with ``context.step``) when it is set.

  Clusters: the training classes with ``use_labels``, else k-means into
  ``num_clusters`` (None: the number of classes, or ``num_clusters_without_labels``
  when the data have none).
  """
  data = context.data
  grid, metrics = evaluate(
    context.z_train,
    context.decode,
    labels=data.y_train if use_labels else None,
    num_clusters=num_clusters or data.num_classes or num_clusters_without_labels,
    x_train=data.x_train,
    y_train=data.y_train,
    num_classes=data.num_classes,
    batch_size=context.batch_size,
    **options,
  )
  if context.out_dir:
    name = "conditional_generation" + ("" if context.step is None else f"_step_{context.step:07d}")
    logging.info(
      "wrote %s", image_grid.save_png(workdir_files.path(context.out_dir, name + ".png"), grid)
    )
  return metrics
