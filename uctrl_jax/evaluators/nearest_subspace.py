"""Nearest-subspace classifier (CTRL's / MCR²'s ``nearsub`` evaluation).

Protocol: for each class ``c`` the top ``n_components`` right singular vectors
``U_c: (d, r)`` of its training features (uncentred, as ``TruncatedSVD`` in CTRL's
code) span its subspace; a test feature ``z`` gets the class with the smallest
residual ``|(I − U_c U_cᵀ) z|``. Directions whose singular value is numerically zero
(a class spanning fewer than ``r`` dimensions) are dropped: SVD fills them with an
arbitrary orthonormal completion, which could reach into other classes' subspaces.
Reported: test top-1 in %.
"""

from __future__ import annotations

import numpy as np

from uctrl_jax.evaluators import common

# What the registry needs (uctrl_jax/evaluators/__init__.py): features and both splits' labels.
NEEDS_DECODER = False
NEEDS_LABELS = ("train", "test")


def class_subspaces(
  z_train, y_train, num_classes: int, n_components: int, rtol: float = 1e-6
) -> np.ndarray:
  """``(C, d, r)`` orthonormal bases (zero columns where a class has fewer directions).

  Args:
    z_train: (n, d) features.
    y_train: (n,) int labels in ``[0, num_classes)``.
    n_components: r, clipped to d.
    rtol: singular values below ``rtol · s_max`` of a class count as zero.
  """
  d = z_train.shape[1]
  r = min(int(n_components), d)
  bases = np.zeros((num_classes, d, r), np.float32)
  for c in range(num_classes):
    Zc = z_train[y_train == c]
    if not len(Zc):
      continue  # an empty class has no subspace: residual |z|, never preferred
    _, s, Vt = np.linalg.svd(Zc.astype(np.float64), full_matrices=False)
    keep = min(r, len(s))
    mask = s[:keep] > rtol * max(s[0], np.finfo(np.float64).tiny)
    bases[c, :, :keep] = (Vt[:keep].T * mask).astype(np.float32)
  return bases


def residuals(Z: np.ndarray, bases: np.ndarray) -> np.ndarray:
  """``(n, C)`` squared residuals ``|z|² − |U_cᵀ z|²`` of ``Z: (n, d)``."""
  proj = np.einsum("nd,cdr->ncr", Z, bases, optimize=True)
  return np.sum(Z * Z, axis=1, keepdims=True) - np.sum(proj * proj, axis=2)


def evaluate(
  z_train, y_train, z_test, y_test, *, num_classes: int | None = None, n_components: int = 10
) -> dict[str, float]:
  """``{"top1": %}`` of the nearest-subspace classifier (module docstring)."""
  z_train, z_test = common.as_features("z_train", z_train), common.as_features("z_test", z_test)
  y_train = common.as_labels("y_train", y_train, len(z_train))
  y_test = common.as_labels("y_test", y_test, len(z_test))
  if num_classes is None:
    num_classes = int(max(y_train.max(), y_test.max())) + 1
  bases = class_subspaces(z_train, y_train, int(num_classes), n_components)
  return {"top1": common.accuracy(y_test, residuals(z_test, bases).argmin(axis=1))}


def run(context, **options) -> dict[str, float]:
  """``evaluate`` on a registry ``Context``: fit on train features, scored on test."""
  return common.classify(evaluate, context, **options)
