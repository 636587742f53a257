"""Unsupervised conditional generation: decode samples from each cluster's principal subspace.

Protocol (docs/method.md#evaluation-protocols): cluster the training features (k-means, or the
labels when given); for each cluster ``c`` with centred features ``Z_c − μ_c = U S Vᵀ`` draw
``z = μ_c + Σ_{j ≤ r} a_j (s_j / √n_c) v_j``, ``a ~ N(0, I)`` (a Gaussian with the
cluster's spread along its top ``r`` components), scale to unit norm where the encoder's
outputs are unit rows (a VAE's posterior means are not: there samples and clusters stay
in the features' own space) and decode. The grid has one row per cluster: the decoded
(normalised) mean ``μ_c`` first, then the samples.

Metrics: ``explained_variance`` (mean over clusters of the share of the cluster's
variance in its top ``r`` components) and, with training pixels and labels given,
``sample_consistency``: % of decoded samples that a pixel kNN classifier (fit on the
training pixels) puts in their cluster's class, the most frequent label among the
cluster's training members (samples of a cluster look like its class = conditional
generation works; a collapsed decoder drawing one thing for every cluster scores low).
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from absl import logging
import jax
import numpy as np

from uctrl_jax import image_grid
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


def cluster_samples(
  Z,
  assign,
  num_clusters: int,
  key,
  *,
  num_components: int = 8,
  num_samples: int = 10,
  unit: bool = True,
):
  """Features sampled per cluster.

  Args:
    Z: (n, d) features.
    assign: (n,) int cluster of each row in ``[0, num_clusters)``.
    key: PRNG key of the Gaussian coefficients.
    unit: scale the samples to unit rows (features on the unit sphere).
  Returns:
    ``samples (K, 1 + num_samples, d)`` float32 rows, unit ones if ``unit`` (column 0:
    the mean; an empty cluster's row is zeros) and ``explained (K,)`` variance shares
    (NaN if empty).
  """
  Z = common.as_features("Z", Z)
  d = Z.shape[1]
  coeffs = np.asarray(jax.random.normal(key, (num_clusters, num_samples, num_components)))
  samples = np.zeros((num_clusters, 1 + num_samples, d), np.float32)
  explained = np.full((num_clusters,), np.nan)
  for c in range(num_clusters):
    Zc = Z[assign == c].astype(np.float64)
    if not len(Zc):
      continue
    mean = Zc.mean(0)
    _, s, Vt = np.linalg.svd(Zc - mean, full_matrices=False)
    r = min(num_components, len(s))
    total = np.sum(s**2)
    explained[c] = np.sum(s[:r] ** 2) / total if total > 0 else 1.0
    spread = s[:r] / np.sqrt(len(Zc))  # standard deviation along each component
    draws = mean + (coeffs[c, :, :r] * spread) @ Vt[:r]
    rows = np.concatenate([mean[None], draws])
    samples[c] = common.l2_normalize(rows) if unit else rows
  return samples, explained


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
  Z = common.as_features("Z", Z)
  # The decoder reads features as the encoder writes them: unit rows or not (a VAE's μ).
  unit = bool(np.allclose(np.linalg.norm(Z, axis=1), 1.0, atol=1e-3))
  Z = common.l2_normalize(Z) if unit else Z
  key_kmeans, key_samples = jax.random.split(jax.random.key(seed))
  if labels is not None:
    assign = common.as_labels("labels", labels, len(Z))
    num_clusters = int(num_clusters or assign.max() + 1)
  else:
    if not num_clusters:
      raise ValueError("num_clusters is required without labels")
    assign, _, _ = clustering.kmeans(Z, int(num_clusters), key_kmeans)
  samples, explained = cluster_samples(
    Z,
    assign,
    int(num_clusters),
    key_samples,
    num_components=num_components,
    num_samples=num_samples,
    unit=unit,
  )
  K, S, d = samples.shape
  images = common.batched(decode, samples.reshape(K * S, d), batch_size)
  images = images.reshape((K, S) + images.shape[1:])
  metrics = {"explained_variance": float(np.nanmean(explained))}
  if x_train is not None and y_train is not None:
    y_train = common.as_labels("y_train", y_train, len(Z))
    rows = [c for c in range(K) if np.any(assign == c)]  # empty clusters drew nothing
    cluster_class = [np.bincount(y_train[assign == c]).argmax() for c in rows]
    generated = images[rows, 1:].reshape((len(rows) * (S - 1),) + images.shape[2:])
    pred = knn.weighted_knn(x_train, y_train, generated, num_classes=num_classes)
    metrics["sample_consistency"] = common.accuracy(np.repeat(cluster_class, S - 1), pred)
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
      "wrote %s", image_grid.save_png(os.path.join(context.out_dir, name + ".png"), grid)
    )
  return metrics
