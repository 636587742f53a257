"""Fréchet distance between feature sets; FID with Inception features when available.

``frechet_distance(A, B) = |μ_A − μ_B|² + tr(Σ_A + Σ_B − 2 (Σ_A Σ_B)^½)`` of the
Gaussians fitted to two sets of rows (Heusel et al. 2017). Reported:

- ``frechet_z_zhat``: between the test features ``Z = f(x)`` and the features of
  their reconstructions ``Ẑ = f(g(f(x)))`` — the closed loop's own distance, always
  available (not comparable to FID numbers of other papers);
- ``fid``: between Inception-v3 pool features of the real test images and of their
  reconstructions, only when ``inception_path`` names a TensorFlow SavedModel whose
  call maps (B, 299, 299, 3) float32 in [-1, 1] to (B, 2048) features (or a dict
  holding them). Nothing is ever downloaded; without the path FID is skipped and the
  log says so.
"""

from __future__ import annotations

from typing import Callable, Optional

from absl import logging
import numpy as np

from uctrl_jax.evaluators import common

# What the registry needs (uctrl_jax/evaluators/__init__.py): the decoder, no labels.
NEEDS_DECODER = True
NEEDS_LABELS = ()

SKIP_MESSAGE = (
  "FID skipped: config.evals.fid.inception_path is not set (no Inception weights "
  "on this machine; nothing is downloaded)"
)


def _sqrt_psd(M: np.ndarray) -> np.ndarray:
  """Square root of a symmetric positive semi-definite matrix (round-off negatives clipped)."""
  w, V = np.linalg.eigh(M)
  return (V * np.sqrt(np.maximum(w, 0.0))) @ V.T


def frechet_distance(A, B) -> float:
  """Fréchet distance of the Gaussians fitted to ``A: (n, d)`` and ``B: (m, d)`` (n, m ≥ 2).

  ``tr (Σ_A Σ_B)^½`` is computed as ``tr (Σ_A^½ Σ_B Σ_A^½)^½``, the same number (the two
  matrices are similar) from symmetric eigendecompositions: exact for singular covariances
  (fewer rows than dimensions) too, where ``sqrtm`` of the product needs an offset and
  leaves an imaginary part.
  """
  A, B = (
    common.as_features("A", A).astype(np.float64),
    common.as_features("B", B).astype(np.float64),
  )
  if A.shape[1] != B.shape[1] or len(A) < 2 or len(B) < 2:
    raise ValueError(f"need two sets of ≥ 2 rows of one width; got {A.shape}, {B.shape}")
  mu_a, mu_b = A.mean(0), B.mean(0)
  cov_a, cov_b = np.cov(A, rowvar=False), np.cov(B, rowvar=False)
  root_a = _sqrt_psd(cov_a)
  middle = root_a @ cov_b @ root_a
  trace_covmean = np.sum(np.sqrt(np.maximum(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0)))
  value = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_covmean
  return float(max(value, 0.0))


def load_inception(path: str) -> Callable[[np.ndarray], np.ndarray]:
  """``features(images (B, H, W, C) in [-1, 1]) -> (B, D)`` from the SavedModel at ``path``."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (only when asked for)

  model = tf.saved_model.load(path)

  def features(images: np.ndarray) -> np.ndarray:
    x = tf.convert_to_tensor(np.asarray(images, np.float32))
    if x.shape[-1] == 1:
      x = tf.image.grayscale_to_rgb(x)
    x = tf.image.resize(x, (299, 299), method="bilinear")
    out = model(x)
    if isinstance(out, dict):
      out = out.get("pool_3", next(iter(out.values())))
    return np.asarray(out).reshape(len(images), -1)

  return features


def evaluate(
  z_test,
  zhat_test,
  *,
  x_test=None,
  xhat_test=None,
  inception_path: Optional[str] = None,
  batch_size: int = 100,
) -> dict[str, float]:
  """Metrics of the module docstring; ``fid`` needs ``x_test``, ``xhat_test`` and
  ``inception_path``."""
  out = {"frechet_z_zhat": frechet_distance(z_test, zhat_test)}
  if not inception_path:
    logging.info("%s", SKIP_MESSAGE)
    return out
  features = load_inception(inception_path)
  real = common.batched(features, x_test, batch_size)
  fake = common.batched(features, xhat_test, batch_size)
  out["fid"] = frechet_distance(real, fake)
  return out


def run(context, **options) -> dict[str, float]:
  """``evaluate`` on a registry ``Context``: test features against their reconstructions'."""
  return evaluate(
    context.z_test,
    context.zhat_test,
    x_test=context.data.x_test,
    xhat_test=context.xhat_test,
    batch_size=context.batch_size,
    **options,
  )
