"""Structure score: how block-diagonal ``|Z Zᵀ|`` is when samples are sorted by label.

The number behind the paper's heatmaps (docs/method.md#evaluation-protocols): on the test split, the
mean ``|cos|`` of feature pairs of the same class divided by the mean ``|cos|`` of pairs of
different classes. Orthogonal class subspaces give between-class ``|cos|`` 0 (score ∞); features
that ignore the classes give 1. Pairs ``(i, i)`` are left out; labels only group the
pairs (the features are learned without them).
"""

from __future__ import annotations

import numpy as np

from uctrl_jax.evaluators import common

# What the registry needs (uctrl_jax/evaluators/__init__.py): test features and labels.
NEEDS_DECODER = False
NEEDS_LABELS = ("test",)


def abs_cos_within_between(
  Z, labels, *, num_classes: int | None = None, chunk_size: int = 1000
) -> tuple[float, float]:
  """Mean ``|cos|`` over same-class pairs ``i ≠ j`` and over different-class pairs.

  Args:
    Z: (n, d) features (or images, flattened).
    labels: (n,) int.
    num_classes: C; default ``max(labels) + 1``.
    chunk_size: rows per block of the ``(chunk, n)`` similarity matrix (memory bound).
  Returns:
    ``(within, between)``; NaN for a set of pairs that is empty.
  """
  Z = common.l2_normalize(common.as_features("Z", Z))
  y = common.as_labels("labels", labels, len(Z))
  C = int(y.max()) + 1 if num_classes is None else int(num_classes)
  onehot = np.eye(C, dtype=np.float64)[y]  # (n, C)
  within_sum = between_sum = 0.0
  for start in range(0, len(Z), chunk_size):
    rows = slice(start, start + chunk_size)
    S = np.abs(Z[rows] @ Z.T).astype(np.float64)  # (c, n)
    # Σ_j |cos(i, j)| split by whether y_j = y_i: per-class row sums, then pick own class.
    per_class = S @ onehot  # (c, C)
    own = per_class[np.arange(len(S)), y[rows]]
    # Less the pairs (i, i): |cos(i, i)| = |zᵢ|², 1 for a unit row, 0 for a zero row.
    within_sum += own.sum() - np.sum(Z[rows] ** 2)
    between_sum += per_class.sum() - own.sum()
  counts = np.bincount(y, minlength=C).astype(np.float64)
  n_within = float(np.sum(counts * (counts - 1)))
  n_between = float(len(Z) ** 2 - np.sum(counts**2))
  within = within_sum / n_within if n_within else float("nan")
  between = between_sum / n_between if n_between else float("nan")
  return float(within), float(between)


def evaluate(Z, labels, *, num_classes: int | None = None) -> dict[str, float]:
  """``{"within_abs_cos", "between_abs_cos", "score"}``; score = within / between."""
  within, between = abs_cos_within_between(Z, labels, num_classes=num_classes)
  score = within / between if between > 0 else float("inf")
  return {"within_abs_cos": within, "between_abs_cos": between, "score": score}


def run(context, **options) -> dict[str, float]:
  """``evaluate`` on a registry ``Context``: the test split's features and labels."""
  data = context.data
  return evaluate(context.z_test, data.y_test, num_classes=data.num_classes, **options)
