"""Helpers shared by the evaluators: batched calls, normalisation, input checks.

Evaluators work on host NumPy arrays (features are small: n × d float32) and jit
only their heavy inner loops, so they run the same under the trainer and alone.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np


def as_features(name: str, Z) -> np.ndarray:
  """``Z`` as float32 rows ``(n, d)``; images ``(n, H, W, C)`` are flattened."""
  Z = np.asarray(Z)
  if Z.ndim < 2 or Z.shape[0] < 1:
    raise ValueError(f"{name} must have shape (n, d) or (n, H, W, C) with n ≥ 1; got {Z.shape}")
  return Z.reshape(len(Z), -1).astype(np.float32)


def as_labels(name: str, y, n: int) -> np.ndarray:
  """``y`` as int64 ``(n,)``, checked non-negative."""
  y = np.asarray(y)
  if y.shape != (n,):
    raise ValueError(f"{name} must have shape ({n},) to match its features; got {y.shape}")
  if not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
    raise ValueError(f"{name} must be non-negative integers; got dtype {y.dtype}")
  return y.astype(np.int64)


def l2_normalize(Z: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Rows of ``Z: (..., d)`` scaled to unit norm (zero rows stay zero): the NumPy twin of
  ``rate_reduction.l2_normalize``."""
  norms = np.linalg.norm(Z, axis=-1, keepdims=True)
  return Z / np.maximum(norms, eps)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  """Top-1 accuracy in %."""
  return 100.0 * float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def digest(*arrays) -> str:
  """A hex digest of ``arrays``' values, dtypes and shapes (equal arrays, equal digests)."""
  h = hashlib.blake2b(digest_size=16)
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
  return h.hexdigest()


def batched(fn: Callable, x: np.ndarray, batch_size: int, exact: bool = False) -> np.ndarray:
  """``fn`` over ``x: (n, ...)`` in batches of exactly ``batch_size`` rows, as NumPy.

  The last batch is padded by repeating its last row and the padding dropped
  afterwards, so a jitted ``fn`` compiles for one shape only (evaluating every
  ``eval_every`` steps must not recompile). A smaller ``n`` is one batch of ``n`` rows,
  unless ``exact``: then it is padded to ``batch_size`` too (one shape for every ``n``:
  ``Loaded.encode_images``).
  """
  x = np.asarray(x)
  n = len(x)
  if n == 0:
    raise ValueError("batched: empty input")
  batch_size = int(batch_size) if exact else min(int(batch_size), n)
  out = []
  for start in range(0, n, batch_size):
    chunk = x[start : start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    out.append(np.asarray(fn(chunk))[: batch_size - pad])
  return np.concatenate(out)


def classify(evaluate: Callable, context, **options) -> dict[str, float]:
  """``evaluate(z_train, y_train, z_test, y_test, num_classes=C, **options)`` of a
  classifier on a registry ``Context``: fit on the train split's features and labels,
  scored on the test split's."""
  data = context.data
  return evaluate(
    context.z_train,
    data.y_train,
    context.z_test,
    data.y_test,
    num_classes=data.num_classes,
    **options,
  )
