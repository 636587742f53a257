"""Weighted k-nearest-neighbour classifier on frozen features (solo-learn's protocol).

Protocol (solo-learn ``WeightedKNNClassifier``, docs/method.md#evaluation-protocols): train and test
features are L2-normalised; a test sample's ``k = 20`` most cosine-similar training samples vote
for their labels with weight ``exp(cos / T)``, ``T = 0.07``; the class with the largest
total weight wins. Reported: test top-1 in %.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from uctrl_jax.evaluators import common

# What the registry needs (uctrl_jax/evaluators/__init__.py): features and both splits' labels.
NEEDS_DECODER = False
NEEDS_LABELS = ("train", "test")


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _votes(queries, reference, reference_labels, temperature, *, k: int, num_classes: int):
  """Class votes ``(q, C)`` of unit ``queries: (q, d)`` against unit ``reference: (n, d)``."""
  sims, idx = jax.lax.top_k(queries @ reference.T, k)  # (q, k) each
  weights = jnp.exp(sims / temperature)
  onehot = jax.nn.one_hot(reference_labels[idx], num_classes, dtype=jnp.float32)  # (q, k, C)
  return jnp.einsum("qk,qkc->qc", weights, onehot)


def weighted_knn(
  train_z,
  train_y,
  test_z,
  *,
  num_classes: int | None = None,
  k: int = 20,
  temperature: float = 0.07,
  chunk_size: int = 500,
) -> np.ndarray:
  """Predicted labels ``(n_test,)`` int64 of the weighted kNN classifier.

  Args:
    train_z: (n, d) features (or (n, H, W, C) images, flattened) of the reference set.
    train_y: (n,) int labels.
    test_z: (m, d) query features.
    num_classes: C; default ``max(train_y) + 1``.
    k: neighbours (clipped to n).
    temperature: T of the vote weights ``exp(cos / T)``.
    chunk_size: queries per jitted call; the ``(chunk, n)`` similarity matrix is the
      memory peak (500 × 60 000 float32 = 120 MB).
  """
  train_z, test_z = common.as_features("train_z", train_z), common.as_features("test_z", test_z)
  train_y = common.as_labels("train_y", train_y, len(train_z))
  if train_z.shape[1] != test_z.shape[1]:
    raise ValueError(
      f"train_z and test_z must have the same width; got {train_z.shape}, {test_z.shape}"
    )
  num_classes = int(train_y.max()) + 1 if num_classes is None else int(num_classes)
  reference = jnp.asarray(common.l2_normalize(train_z))
  labels = jnp.asarray(train_y, jnp.int32)
  k = min(int(k), len(train_z))
  votes = common.batched(
    lambda q: _votes(jnp.asarray(q), reference, labels, temperature, k=k, num_classes=num_classes),
    common.l2_normalize(test_z),
    chunk_size,
  )
  return votes.argmax(axis=1)


def evaluate(
  train_z,
  train_y,
  test_z,
  test_y,
  *,
  num_classes: int | None = None,
  k: int = 20,
  temperature: float = 0.07,
) -> dict[str, float]:
  """``{"top1": %}`` of ``weighted_knn`` on the test set."""
  test_y = common.as_labels("test_y", test_y, len(test_z))
  pred = weighted_knn(
    train_z, train_y, test_z, num_classes=num_classes, k=k, temperature=temperature
  )
  return {"top1": common.accuracy(test_y, pred)}


def run(context, **options) -> dict[str, float]:
  """``evaluate`` on a registry ``Context``: fit on train features, scored on test."""
  return common.classify(evaluate, context, **options)
