"""`npz:PATH` sources: `.npz` files of images `x` and optional labels `y`, checked on
loading and held in memory.

A `.npz` file with arrays `x` (N, H, W[, C]) and, optionally, `y` (N,) integer
labels 0..C-1 is the split `train`; a directory of such files holds one split per
file (`train.npz`, `test.npz`, ...). `x` is uint8, or float in [0, 1] (stored as
uint8 `round(255 x)`), or integers in [0, 255]. A split without `y` is unlabelled.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from uctrl_jax.datasets.errors import DataError
from uctrl_jax.datasets.source import DatasetInfo, IndexedSource, check_label_ids, unlabelled


class NpzSource(IndexedSource):
  """In-memory arrays, one pair (x, y or None) per split (the `npz:` datasets)."""

  def __init__(self, name: str, arrays: Mapping[str, tuple[np.ndarray, Optional[np.ndarray]]]):
    self._arrays = arrays
    x0 = next(iter(arrays.values()))[0]
    num_classes = int(max((y.max() for _, y in arrays.values() if y is not None), default=-1)) + 1
    self.info = DatasetInfo(
      name=name,
      image_shape=tuple(x0.shape[1:]),
      num_classes=num_classes,
      num_examples={k: len(x) for k, (x, _) in arrays.items()},
      class_names=tuple(str(i) for i in range(num_classes)),
      unlabelled_splits=tuple(k for k, (_, y) in arrays.items() if y is None),
    )

  def _examples(self, split, positions):
    x, y = self._arrays[split]
    if len(positions) and np.array_equal(
      positions, np.arange(positions[0], positions[0] + len(positions))
    ):
      positions = slice(positions[0], positions[0] + len(positions))  # A view, no copy.
    images = x[positions]
    labels = unlabelled(len(images)) if y is None else y[positions]
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})


def load_npz(path: str) -> dict[str, tuple[np.ndarray, Optional[np.ndarray]]]:
  """Split name -> (x (N, H, W, C) uint8, y (N,) int32 or None) from `npz:PATH`."""
  if os.path.isdir(path):
    files = {
      f[: -len(".npz")]: os.path.join(path, f)
      for f in sorted(os.listdir(path))
      if f.endswith(".npz")
    }
    if not files:
      raise DataError(
        f"npz directory {path!r} holds no .npz files (expected e.g. train.npz, test.npz)."
      )
  else:
    files = {"train": path}
  arrays = {split: _read_npz_file(f) for split, f in files.items()}
  shapes = {split: x.shape[1:] for split, (x, _) in arrays.items()}
  if len(set(shapes.values())) > 1:
    raise DataError(f"npz splits in {path!r} have different image shapes {shapes}.")
  check_label_ids(
    np.unique(
      np.concatenate([y for _, y in arrays.values() if y is not None] or [np.zeros(0, np.int32)])
    ),
    f"npz {path!r}",
  )
  return arrays


def _first(bad: np.ndarray) -> int:
  """Index of the first image (axis 0) with a True anywhere in `bad`."""
  return int(np.argmax(bad.reshape(len(bad), -1).any(axis=1)))


def _read_npz_file(path: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """(x (N, H, W, C) uint8, y (N,) int32 or None) from one .npz file."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      keys = set(npz.files)
      if "x" not in keys:
        raise DataError(
          f"npz file {path!r} lacks array(s) ['x']: it needs 'x' (N, H, W[, C]) "
          f"images and optionally 'y' (N,) labels; it has {sorted(keys)}."
        )
      x = npz["x"]
      y = npz["y"] if "y" in keys else None
  except DataError:
    raise
  except Exception as e:  # np.load raises several types for non-npz files.
    raise DataError(
      f"Cannot read {path!r} as a .npz file: "
      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
    ) from e
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise DataError(
      f"npz {path!r}: x has shape {x.shape}; expected (N, H, W), "
      "(N, H, W, 1) or (N, H, W, 3) (1 or 3 channels)."
    )
  if len(x) == 0:
    raise DataError(f"npz {path!r}: x holds no images (shape {x.shape}): the split is empty.")
  if np.issubdtype(x.dtype, np.floating):
    bad = ~np.isfinite(x)
    if bad.any():
      i = _first(bad)
      raise DataError(
        f"npz {path!r}: x[{i}] holds a non-finite value "
        f"({x[i][bad[i]].flat[0]}); pixels must be finite, in [0, 1]."
      )
    bad = (x < 0) | (x > 1)
    if bad.any():
      i = _first(bad)
      raise DataError(
        f"npz {path!r}: float x must lie in [0, 1]; x[{i}] holds "
        f"{x[i][bad[i]].flat[0]} (x spans [{x.min()}, {x.max()}]); or "
        "store uint8 in [0, 255]."
      )
    logging.info("npz %s: float x in [0, 1] is stored as uint8 round(255 x)", path)
    x = np.round(x * 255).astype(np.uint8)
  elif np.issubdtype(x.dtype, np.integer) and x.dtype != np.uint8:
    bad = (x < 0) | (x > 255)
    if bad.any():
      i = _first(bad)
      raise DataError(
        f"npz {path!r}: integer x must lie in [0, 255]; x[{i}] holds {x[i][bad[i]].flat[0]}."
      )
    logging.info("npz %s: x of dtype %s (values in [0, 255]) is read as uint8", path, x.dtype)
    x = x.astype(np.uint8)
  elif x.dtype != np.uint8:
    raise DataError(
      f"npz {path!r}: x has dtype {x.dtype}; expected uint8, integers "
      "in [0, 255] or float in [0, 1]."
    )
  if y is None:
    return x, None
  if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
    raise DataError(
      f"npz {path!r}: y has shape {y.shape} and dtype {y.dtype}; "
      f"expected ({len(x)},) integer class ids 0..C-1 (map names or "
      "strings to ids first)."
    )
  if (y < 0).any():
    i = int(np.argmax(y < 0))
    raise DataError(f"npz {path!r}: labels y must be >= 0; y[{i}] = {y[i]}.")
  return x, y.astype(np.int32)
