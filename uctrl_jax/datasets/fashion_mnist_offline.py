"""Offline Fashion-MNIST: tfds `fashion_mnist` prepared from the IDX files of the Debian
package `dataset-fashion-mnist` (docs/method.md#data-without-network), no network.

The Debian files are re-compressed, so their checksums differ from tfds's: the builder
here reads them directly instead of through tfds's download manager.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

from uctrl_jax.datasets.errors import DataError

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# File names shared by the Debian package and the upstream release.
_FASHION_MNIST_FILES = {
  "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def has_fashion_mnist_files(source_dir: str) -> bool:
  """Whether `source_dir` holds the four Fashion-MNIST IDX `.gz` files."""
  return all(
    os.path.isfile(os.path.join(source_dir, f))
    for pair in _FASHION_MNIST_FILES.values()
    for f in pair
  )


def _read_idx(path: str) -> np.ndarray:
  """An IDX array (uint8 data: images (N, H, W), labels (N,)) from a .gz file."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  zero, dtype_code, ndim = data[0:2], data[2], data[3]
  if zero != b"\0\0" or dtype_code != 0x08:
    raise DataError(f"{path!r} is not an IDX file of uint8 data.")
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if array.size != np.prod(shape):
    raise DataError(f"{path!r} is truncated: header says {shape}.")
  return array.reshape(shape)


class _LocalFashionMNIST(tfds.image_classification.FashionMNIST, skip_registration=True):
  """tfds's FashionMNIST (same name, version, features, example keys) built
  from local IDX files instead of downloaded ones, so the stock
  `tfds.builder("fashion_mnist", data_dir=...)` reads the result."""

  name = "fashion_mnist"

  def __init__(self, *, source_dir: str, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return [
      tfds.core.SplitGenerator(
        name=split,
        gen_kwargs=dict(
          images=os.path.join(self._source_dir, images),
          labels=os.path.join(self._source_dir, labels),
        ),
      )
      for split, (images, labels) in _FASHION_MNIST_FILES.items()
    ]

  def _generate_examples(self, images, labels):  # pylint: disable=arguments-differ
    images, labels = _read_idx(images), _read_idx(labels)
    if len(images) != len(labels):
      raise DataError(f"{len(images)} images but {len(labels)} labels.")
    # Index keys, as upstream: the prepared order matches a networked build.
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image[..., None], "label": int(label)}


def prepare_fashion_mnist(
  data_dir: str | None = None, *, source_dir: str = DEBIAN_FASHION_MNIST_DIR
) -> None:
  """Prepares tfds `fashion_mnist` in `data_dir` from local IDX files, offline.

  Idempotent: a prepared dataset is left alone. tfds writes into a temporary
  directory and renames it when complete, so an interrupted run leaves nothing
  that a later `tfds.builder(...).is_prepared()` accepts. Writes TFRecords
  (tf.data cannot read array_record).

  Args:
    data_dir: tfds data directory; None is tfds's default.
    source_dir: folder with the four Fashion-MNIST IDX `.gz` files (the Debian
      package `dataset-fashion-mnist` installs them in the default).
  """
  if not has_fashion_mnist_files(source_dir):
    raise DataError(
      f"No Fashion-MNIST IDX files in {source_dir!r} (expected "
      f"{[f for pair in _FASHION_MNIST_FILES.values() for f in pair]}); "
      "`apt-get install dataset-fashion-mnist` installs them."
    )
  builder = _LocalFashionMNIST(source_dir=source_dir, data_dir=data_dir)
  if builder.is_prepared():
    return
  try:
    builder.download_and_prepare(
      file_format="tfrecord",
      # try_download_gcs=False: the GCS probe would hang on an offline machine.
      download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
  except Exception:
    # Another process may have prepared it concurrently; its rename won.
    if not tfds.builder("fashion_mnist", data_dir=data_dir).is_prepared():
      raise
