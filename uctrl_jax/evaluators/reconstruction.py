"""Reconstruction quality of the closed loop ``x̂ = g(f(x))`` on test images.

Protocol:
- ``mse``: mean squared pixel error on [-1, 1]; ``psnr``: ``10 log10(2² / mse)`` dB
  (peak-to-peak 2; ``inf`` for a perfect reconstruction);
- ``consistency``: a weighted kNN classifier (``knn``, cosine, k = 20, T = 0.07) fit on
  real training pixels labels the reconstructions; % that get the true label of their
  input (does ``g(f(x))`` stay in its class? chance is 1/C);
- ``real_top1``: the same classifier on the real test images, the ceiling of
  ``consistency``.

Without labels (``y_train`` or ``y_test`` None) only ``mse`` and ``psnr``.
"""

from __future__ import annotations

import numpy as np

from uctrl_jax.evaluators import common
from uctrl_jax.evaluators import knn

# What the registry needs (uctrl_jax/evaluators/__init__.py): the decoder; without both
# splits' labels, MSE and PSNR only.
NEEDS_DECODER = True
NEEDS_LABELS = ()
OPTIONAL_LABELS = ("train", "test")


def mse_psnr(x, xhat) -> dict[str, float]:
  """``{"mse", "psnr"}`` of images in [-1, 1] (any equal shapes)."""
  x, xhat = np.asarray(x, np.float64), np.asarray(xhat, np.float64)
  if x.shape != xhat.shape:
    raise ValueError(f"x and xhat must have one shape; got {x.shape}, {xhat.shape}")
  mse = float(np.mean((x - xhat) ** 2))
  psnr = float("inf") if mse == 0.0 else float(10.0 * np.log10(4.0 / mse))
  return {"mse": mse, "psnr": psnr}


def evaluate(
  x_train,
  y_train,
  x_test,
  y_test,
  xhat_test,
  *,
  num_classes: int | None = None,
  k: int = 20,
  temperature: float = 0.07,
) -> dict[str, float]:
  """Metrics of the module docstring.

  Args:
    x_train, y_train: (n, H, W, C) real training images in [-1, 1], (n,) labels or None.
    x_test, y_test: (m, H, W, C) real test images, (m,) labels or None.
    xhat_test: (m, H, W, C) reconstructions ``g(f(x_test))``.
  """
  out = mse_psnr(x_test, xhat_test)
  if y_train is None or y_test is None:
    return out
  y_test = common.as_labels("y_test", y_test, len(x_test))
  # One classifier, two query sets: real test images, then their reconstructions.
  pred = knn.weighted_knn(
    x_train,
    y_train,
    np.concatenate([x_test, xhat_test]),
    num_classes=num_classes,
    k=k,
    temperature=temperature,
  )
  out["real_top1"] = common.accuracy(y_test, pred[: len(x_test)])
  out["consistency"] = common.accuracy(y_test, pred[len(x_test) :])
  return out


def run(context, **options) -> dict[str, float]:
  """``evaluate`` on a registry ``Context``: the test split's reconstructions, classified
  by pixels of the train split."""
  data = context.data
  return evaluate(
    data.x_train,
    data.y_train,
    data.x_test,
    data.y_test,
    context.xhat_test,
    num_classes=data.num_classes,
    **options,
  )
