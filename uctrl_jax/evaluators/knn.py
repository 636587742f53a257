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
  z_train,
  y_train,
  z_test,
  *,
  num_classes: int | None = None,
  k: int = 20,
  temperature: float = 0.07,
  chunk_size: int = 500,
) -> np.ndarray:
  """Predicted labels ``(n_test,)`` int64 of the weighted kNN classifier.

  Args:
    z_train: (n, d) features (or (n, H, W, C) images, flattened) of the reference set.
    y_train: (n,) int labels.
    z_test: (m, d) query features.
    num_classes: C; default ``max(y_train) + 1``.
    k: neighbours (clipped to n).
    temperature: T of the vote weights ``exp(cos / T)``.
    chunk_size: queries per jitted call; the ``(chunk, n)`` similarity matrix is the
      memory peak (500 × 60 000 float32 = 120 MB).
  """
  z_train, z_test = common.as_features("z_train", z_train), common.as_features("z_test", z_test)
  y_train = common.as_labels("y_train", y_train, len(z_train))
  if z_train.shape[1] != z_test.shape[1]:
    raise ValueError(
      f"z_train and z_test must have the same width; got {z_train.shape}, {z_test.shape}"
    )
  num_classes = int(y_train.max()) + 1 if num_classes is None else int(num_classes)
  reference = jnp.asarray(common.l2_normalize(z_train))
  labels = jnp.asarray(y_train, jnp.int32)
  k = min(int(k), len(z_train))
  votes = common.batched(
    lambda q: _votes(jnp.asarray(q), reference, labels, temperature, k=k, num_classes=num_classes),
    common.l2_normalize(z_test),
    chunk_size,
  )
  return votes.argmax(axis=1)


def evaluate(
  z_train,
  y_train,
  z_test,
  y_test,
  *,
  num_classes: int | None = None,
  k: int = 20,
  temperature: float = 0.07,
) -> dict[str, float]:
  """``{"top1": %}`` of ``weighted_knn`` on the test set."""
  y_test = common.as_labels("y_test", y_test, len(z_test))
  pred = weighted_knn(
    z_train, y_train, z_test, num_classes=num_classes, k=k, temperature=temperature
  )
  return {"top1": common.accuracy(y_test, pred)}


def run(context, **options) -> dict[str, float]:
  """``evaluate`` on a registry ``Context``: fit on train features, scored on test."""
  return common.classify(evaluate, context, **options)
